"""The machine-wide device lock (rig.device.dut.DeviceLock): real flock on real files, no device needed."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rig.device.dut import DeviceBusy, DeviceLock
from rig.errors import ConfigError
from rig.inventory import load_device

DEVICE = """
name = "{name}"
[ssh]
host = "192.0.2.7"
port = 2222
key_file = "id"
known_hosts = "known_hosts"
"""


def device(tmp_path: Path, name: str = "lap-1"):  # type: ignore[no-untyped-def]
    p = tmp_path / f"{name}.toml"
    p.write_text(DEVICE.format(name=name))
    return load_device(p)


@contextlib.contextmanager
def slow_holder(path: Path, line: str, after: float = 0.3) -> Iterator[None]:
    """A real flock on ``path`` whose holder (re)writes its "pid N since" ``line`` only ``after`` seconds,
    as a slow winner of the race would; whatever the file held before stays there until then."""
    fh = open(path, "a+")  # noqa: SIM115 - closed below
    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def write_line() -> None:
        time.sleep(after)
        fh.seek(0)
        fh.truncate()
        fh.write(line)
        fh.flush()

    writer = threading.Thread(target=write_line)
    writer.start()
    try:
        yield
    finally:
        writer.join()
        fh.close()


def test_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    first, second = DeviceLock(device(tmp_path), tmp_path / "locks"), DeviceLock(device(tmp_path), tmp_path / "locks")
    first.acquire()
    try:
        with pytest.raises(DeviceBusy, match=rf"lap-1 \(root@192.0.2.7:2222\) is in use by pid {os.getpid()} since"):
            second.acquire()
    finally:
        first.release()
    second.acquire()  # released: free again
    second.release()


def test_a_run_that_loses_by_a_hair_still_names_the_holder(tmp_path: Path) -> None:
    """CI caught it: the holder writes "pid N since ..." just after it got the flock; a loser that
    read the file in between said "another process". Here the holder is a real flock on the lock
    file whose line arrives 0.3 s later, as a slow holder's would."""
    lock = DeviceLock(device(tmp_path), tmp_path / "locks")
    lock.path.write_text("")
    with (
        slow_holder(lock.path, f"pid {os.getpid()} since 2026-11-26 02:00:00\n"),
        pytest.raises(DeviceBusy, match=f"in use by pid {os.getpid()} since 2026-11-26 02:00:00"),
    ):
        lock.acquire()


def test_a_released_lock_leaves_no_line_for_the_next_loser_to_misread(tmp_path: Path) -> None:
    """CI caught it: run X held the device and released it; runs A and B then raced, A won, and B
    read X's line (A had not written its own yet) and named X. Release now empties the file."""
    lock = DeviceLock(device(tmp_path), tmp_path / "locks")
    lock.acquire()
    assert lock.path.read_text().startswith(f"pid {os.getpid()} since")
    lock.release()
    assert lock.path.read_text() == ""


def test_a_killed_holders_line_is_not_taken_for_the_current_holder(tmp_path: Path) -> None:
    """A SIGKILLed holder cannot empty the file. The loser must not name that dead pid while the
    winner is still writing its own line."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that no longer exists
    lock = DeviceLock(device(tmp_path), tmp_path / "locks")
    lock.path.write_text(f"pid {child.pid} since 2026-11-25 23:00:00\n")
    with (
        slow_holder(lock.path, f"pid {os.getpid()} since 2026-11-26 04:00:00\n"),
        pytest.raises(DeviceBusy, match=f"in use by pid {os.getpid()} since 2026-11-26 04:00:00"),
    ):
        lock.acquire()


def test_a_dead_holders_line_is_shown_as_gone_when_nothing_better_arrives(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    lock = DeviceLock(device(tmp_path), tmp_path / "locks")
    lock.path.write_text(f"pid {child.pid} since 2026-11-25 23:00:00\n")
    fh = open(lock.path)  # noqa: SIM115 - the stand-in holder, closed below
    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        gone = r"\(that process has gone; another holds it now\)"
        with pytest.raises(DeviceBusy, match=rf"pid {child.pid} since .* {gone}"):
            lock.acquire()
    finally:
        fh.close()


# -- issue 17 item 5: per-user folder 0700, owner checked, no symlink followed, 0600 ------------


def test_lock_default_folder_is_this_users_and_0700_and_lock_files_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RIG_LOCK_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir(mode=0o700)
    lock = DeviceLock(device(tmp_path))
    assert lock.path.parent == tmp_path / "run" / "shadowbox-rig" / "locks"
    for d in (lock.path.parent, lock.path.parent.parent):
        st = d.stat()
        assert st.st_uid == os.getuid() and (st.st_mode & 0o777) == 0o700, (d, oct(st.st_mode))
    lock.acquire()
    try:
        assert (lock.path.stat().st_mode & 0o777) == 0o600
    finally:
        lock.release()
    # without XDG_RUNTIME_DIR: a folder of this user's under the temp dir, never the old shared one
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert DeviceLock(device(tmp_path)).path.parent == tmp_path / "tmp" / f"shadowbox-rig-{os.getuid()}" / "locks"


def test_lock_planted_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    lock = DeviceLock(device(tmp_path), tmp_path / "locks")
    lock.path.symlink_to(victim)
    with pytest.raises(ConfigError, match="a symlink is refused"):
        lock.acquire()
    assert victim.read_text() == "precious\n"  # a66d3c1 opened through the link and emptied it


def test_lock_folder_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to make a folder owned by another user")
    other = tmp_path / "others-locks"
    other.mkdir(mode=0o777)
    os.chown(other, 65534, 65534)  # nobody
    with pytest.raises(ConfigError, match="belongs to uid 65534, not to this user"):
        DeviceLock(device(tmp_path), other)
