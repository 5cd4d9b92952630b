"""Git for the runs over builds: refs resolved and trees checked out aside, the user's tree only read.

Why its own module: ``rig regress`` (a clone per commit) and ``rig bisect`` (``git bisect`` in a
clone) both need them, and neither should import the other's command to get them.
``git clone --shared`` borrows the user's objects, so a clone is cheap and never writes to the repo.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from rig.errors import ConfigError


def _git(repo: Path, *args: str, timeout: float = 120) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise ConfigError(f"git {' '.join(args)} in {repo} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def resolve_ref(repo: Path, ref: str) -> str:
    """The full commit id of ``ref`` in ``repo``; a bad ref or a folder that is no git tree is a ConfigError."""
    if not (repo / ".git").exists() and not _is_git_dir(repo):
        raise ConfigError(f"--source-tree {repo} is not a git checkout (no .git): give the Shadow-box clone")
    try:
        return _git(repo, "rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}").strip()
    except ConfigError:
        raise ConfigError(f"git ref {ref!r} not found in {repo} (try 'git -C {repo} log --oneline')") from None


def _is_git_dir(repo: Path) -> bool:
    proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "--git-dir"], capture_output=True, text=True)
    return proc.returncode == 0


def clone_shared(repo: Path, dest: Path) -> Path:
    """A clone of ``repo`` at ``dest`` that borrows its objects (``--shared``): cheap, and never writes to repo."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["git", "clone", "--quiet", "--shared", "--no-checkout", str(repo), str(dest)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise ConfigError(f"git clone of {repo} into {dest} failed: {proc.stderr.strip()[-500:]}")
    return dest


def checkout_commit(repo: Path, commit: str, cache: Path) -> Path:
    """The tree of ``commit`` in ``<cache>/<commit>/``, made once and reused (checked, not trusted)."""
    dest = cache / commit
    if dest.is_dir():
        try:
            head = _git(dest, "rev-parse", "HEAD").strip()
            clean = not _git(dest, "status", "--porcelain").strip()
            if head == commit and clean:
                return dest
        except ConfigError:
            pass
    clone_shared(repo, dest)
    _git(dest, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit)
    return dest
