"""One bounded call: run a blocking library call in a thread and give up on it at a deadline.

Why the rig's own: the libraries behind its transports and back ends (pyghmi retrying a silent
BMC, labgrid's PDU modules, a user's relay script, an AMT web server) have no timeouts or
unbounded ones; a peer that accepts and never answers would block recovery -- and with it the
night's run -- forever. The thread is abandoned at the deadline, never joined, so it cannot hold
the process at exit; its late result is dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")


class DeadlineExceeded(Exception):
    """A bounded call did not return in time (the caller turns it into a LabFault naming the peer)."""


def run_bounded(fn: Callable[[], _T], timeout: float, name: str) -> _T:
    """Run ``fn()`` in a daemon thread named ``name`` and return its result, or raise :class:`DeadlineExceeded`.

    Exceptions of ``fn`` are re-raised in the caller's thread as they are.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    worker = threading.Thread(target=run, name=name, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise DeadlineExceeded(f"{name}: no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
