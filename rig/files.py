"""Files the rig rewrites (reports, the lab's state and inventory files, images): one atomic write.

Why one owner: a reader (the HTML renderer, a second rig run, ``rig lab status``) or a crash in the
middle must never see half a file, and every such file gets the same mode rules; four hand-made
"write a .tmp, rename" copies had four different answers (fixed temp names that raced, 0600 files).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    """This process's umask, read without changing it (``os.umask`` would, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` so a reader (or a crash) never sees half a file; one owner for every file the rig rewrites.

    A unique temp file next to ``path`` (two renders at once never share one), given the mode any
    file of this process gets (0666 minus the umask, like console.log: ``mkstemp``'s 0600 made
    report.json unreadable to the team while its console log was not), removed if anything fails.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
