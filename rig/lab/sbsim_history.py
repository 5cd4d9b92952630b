"""Generated git histories of sbsim for ``rig bisect`` on the lab: one commit brings the intermittent host-NMI hang.

Why: ``rig bisect``'s claim -- a commit is called good only after a soak long enough for the asked
confidence against the bad ref's measured rate -- needs a failure that is actually random to be
tested on. The history is sbsim's own tree with one module default changed per "interesting"
commit, as a commit of a real Shadow-box tree would change the code:

- the first commit (the good ref) turns on host residency (``host_residency_pct``: each CPU spends
  that share of its time in an imitated host section, like VM exits handled in VMX root);
- a decoy commit changes only the timing (``host_window_us``: longer but fewer host sections, the
  same share): it must be judged good;
- the culprit sets ``hang_on_host_nmi=1``: an NMI that lands in the host never returns;
- the others touch a NOTES file only.

The shipped sbsim.c is never edited: every commit is a copy with its defaults rewritten, and a
declaration that is not found raises (so a change to sbsim.c cannot silently make a history
without its bug).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rig.lab.sbsim import sbsim_source_dir

_ENV = {
    "GIT_AUTHOR_NAME": "rig lab history",
    "GIT_AUTHOR_EMAIL": "rig@example.invalid",
    "GIT_COMMITTER_NAME": "rig lab history",
    "GIT_COMMITTER_EMAIL": "rig@example.invalid",
}


def with_defaults(source: str, **defaults: int | str) -> str:
    """sbsim.c's text with the named module parameters' defaults replaced (int/bool, or charp for str)."""
    for name, value in defaults.items():
        if isinstance(value, str):
            pattern, repl = rf'^static char \*{name} = "[^"]*";', f'static char *{name} = "{value}";'
        else:
            pattern, repl = rf"^static (int|bool) {name}( = -?\d+)?;", rf"static \g<1> {name} = {int(value)};"
        source, n = re.subn(pattern, repl, source, flags=re.M)
        if n != 1:
            raise ValueError(f"sbsim.c has no default declaration of {name!r} any more: update rig.lab.sbsim_history")
    return source


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          env={**os.environ, **_ENV}, check=True, timeout=60)  # fmt: skip
    return proc.stdout.strip()


@dataclass(frozen=True)
class History:
    repo: Path
    commits: list[str]  # oldest first; commits[0] is the good ref, commits[-1] the bad ref
    culprit: str
    decoy: str

    @property
    def good(self) -> str:
        return self.commits[0]

    @property
    def bad(self) -> str:
        return self.commits[-1]


def intermittent_history(
    repo: Path, *, n: int = 8, culprit: int = 5, decoy: int = 2, residency_pct: str = "0.5", window_us: int = 200
) -> History:
    """Write ``n`` commits of sbsim to a new repository ``repo``; ``culprit`` and ``decoy`` are indexes.

    The decoy must come before the culprit (after it every commit is bad anyway), both after the
    good ref. Returns the commits and which is which.
    """
    if not 0 < decoy < culprit < n:
        raise ValueError(f"need 0 < decoy ({decoy}) < culprit ({culprit}) < n ({n})")
    if repo.exists():
        raise ValueError(f"{repo} exists already: give a new folder")
    shutil.copytree(sbsim_source_dir(), repo, ignore=shutil.ignore_patterns("*.o", "*.ko", ".*.cmd", "*.mod*"))
    shipped = (sbsim_source_dir() / "sbsim.c").read_text()
    params: dict[str, int | str] = {"host_residency_pct": residency_pct, "host_window_us": window_us}
    _git(repo, "init", "-q", "-b", "main")
    commits: list[str] = []
    notes = ["lab stand-in for Shadow-box"]

    def commit(message: str) -> None:
        (repo / "sbsim.c").write_text(with_defaults(shipped, **params))
        (repo / "NOTES").write_text("\n".join(notes) + "\n")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", message)
        commits.append(_git(repo, "rev-parse", "HEAD"))

    for i in range(n):
        if i == 0:
            commit(f"host sections: {residency_pct} % of each CPU's time in VMX root")
        elif i == decoy:
            params["host_window_us"] = 2 * window_us
            commit("VM exits: handle in longer, fewer host sections (same share)")
        elif i == culprit:
            params["hang_on_host_nmi"] = 1
            commit("host IDT: send NMIs to Linux's handler")
        else:
            notes.append(f"note {i}")
            commit(f"notes: {i}")
    return History(repo, commits, commits[culprit], commits[decoy])
