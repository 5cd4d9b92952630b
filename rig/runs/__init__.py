"""Runs over many builds or commits: regression runs, bisection, the demo, git helpers and
time-to-failure statistics."""
