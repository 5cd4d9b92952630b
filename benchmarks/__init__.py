"""Benchmarks of shadowbox-rig. Run all with ``python -m benchmarks`` (``make bench``)."""
