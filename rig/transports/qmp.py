"""A small synchronous client for QEMU's QMP (QEMU Machine Protocol) over a unix socket.

Why it exists: the lab's virtual laptops are QEMU guests, and the rig needs a handful of QMP
commands (run state, stop/cont, reset, inject an NMI) from synchronous code -- power control, NMI
sources, the virtual BMC. It is built on ``qemu.qmp``'s asyncio :class:`~qemu.qmp.QMPClient`,
driven from a private event loop, so it never touches (or needs) a caller's event loop and two
clients in one process are independent.

Why connections are short-lived by default: QEMU's QMP socket serves ONE client at a time; a
second client is accepted by the kernel but never greeted until the first one leaves. The rig
(power control, NMI source) and the lab's virtual BMC share one socket, so outside a ``with``
block every call opens a connection, runs, and closes it. Inside ``with QmpClient(...) as q:`` the
connection is kept for the block (cheaper for bursts of commands, but it locks others out).

Every call has a deadline (``timeout``, default 5 s). A missing or refused socket, a QEMU that
never greets (usually: another client holds the socket) or never answers is a
:class:`rig.errors.LabFault`, never a device failure. A command QEMU rejects is a
:class:`QmpCommandError`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from qemu.qmp import ConnectError, ExecuteError, QMPClient, QMPError

from rig.errors import LabFault, RigError

log = logging.getLogger(__name__)

#: Default deadline of one QMP connect or command, in seconds.
DEFAULT_TIMEOUT = 5.0

_T = TypeVar("_T")


class QmpCommandError(RigError):
    """QEMU received a QMP command and refused it (its ``error.desc`` is in the message)."""

    def __init__(self, socket_path: Path, command: str, desc: str) -> None:
        super().__init__(f"QMP at {socket_path}: QEMU refused {command!r}: {desc}")
        self.command = command
        self.desc = desc


class QmpClient:
    """Synchronous QMP client for one QEMU's unix socket; see the module docstring for why."""

    def __init__(self, socket_path: Path, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = float(timeout)
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._qmp: QMPClient | None = None

    # -- connection -------------------------------------------------------------------------

    def _lab_down(self, why: str) -> LabFault:
        return LabFault(
            f"QMP socket {self.socket_path}: {why}; is the lab up? (rig lab status)", component="qmp"
        )

    def _run(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        assert self._loop is not None
        return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))

    @property
    def connected(self) -> bool:
        return self._qmp is not None

    def connect(self) -> None:
        """Open the connection and negotiate capabilities (no-op if already open)."""
        with self._lock:
            if self._qmp is not None:
                return
            if not self.socket_path.exists():
                raise self._lab_down("does not exist")
            self._loop = asyncio.new_event_loop()
            qmp = QMPClient(f"qmp:{self.socket_path.name}")
            # qemu.qmp's own negotiation reads the first message after qmp_capabilities as its reply.
            # QEMU puts the monitor into command mode inside that command and answers after it, so an
            # event of that moment (the RESET of a system_reset another client just asked for) can
            # come first, and the connect failed ("Negotiation failed"). Sent as an ordinary command,
            # the reply is matched by its id and the event goes to the event queue.
            qmp.await_greeting, qmp.negotiate = True, False
            try:
                self._run(self._connect_and_negotiate(qmp), self.timeout)
            except TimeoutError:
                self._drop(qmp)
                raise self._lab_down(
                    f"QEMU did not greet within {self.timeout:g}s (another client may hold the "
                    "socket: QMP serves one client at a time)"
                ) from None
            except ConnectError as exc:
                self._drop(qmp)
                cause = exc.exc
                why = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
                raise self._lab_down(f"cannot connect ({why})") from None
            except (OSError, QMPError) as exc:
                self._drop(qmp)
                raise self._lab_down(f"cannot connect ({exc})") from None
            self._qmp = qmp

    async def _connect_and_negotiate(self, qmp: QMPClient) -> None:
        await qmp.connect(str(self.socket_path))
        await qmp.execute("qmp_capabilities")

    def _drop(self, qmp: QMPClient | None) -> None:
        """Disconnect (bounded) and close the private loop; never raises."""
        loop = self._loop
        self._qmp = None
        self._loop = None
        if loop is None:
            return
        try:
            if qmp is not None:
                loop.run_until_complete(asyncio.wait_for(qmp.disconnect(), self.timeout))
        except Exception as exc:  # a dying peer: nothing useful to do but log it
            log.debug("QMP %s: disconnect: %s", self.socket_path, exc)
        finally:
            loop.close()

    def close(self) -> None:
        """Close the connection (safe to call twice)."""
        with self._lock:
            self._drop(self._qmp)

    def __enter__(self) -> QmpClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- commands ---------------------------------------------------------------------------

    def command(self, name: str, **args: Any) -> Any:
        """Run one QMP command and return its ``return`` value (within ``timeout``)."""
        with self._lock:
            one_shot = self._qmp is None
            self.connect()
            assert self._qmp is not None
            try:
                return self._run(self._qmp.execute(name, args or None), self.timeout)
            except TimeoutError:
                # The connection is in an unknown state: drop it so the next call starts clean.
                self._drop(self._qmp)
                one_shot = False
                raise self._lab_down(f"QEMU did not answer {name!r} within {self.timeout:g}s") from None
            except ExecuteError as exc:
                raise QmpCommandError(self.socket_path, name, str(exc)) from None
            except (OSError, EOFError, QMPError) as exc:
                self._drop(self._qmp)
                one_shot = False
                raise self._lab_down(f"connection lost during {name!r} ({exc or type(exc).__name__})") from None
            finally:
                if one_shot:
                    self._drop(self._qmp)

    def status(self) -> str:
        """The VM run state from ``query-status``: 'running', 'paused', 'shutdown', 'prelaunch', ..."""
        ret = self.command("query-status")
        return str(ret["status"])

    def inject_nmi(self) -> None:
        """Raise an NMI in the guest (delivered on LINT1; see lab-notes on ``apic_extnmi``)."""
        self.command("inject-nmi")

    def stop(self) -> None:
        """Pause every vCPU (the lab's model of 'power off')."""
        self.command("stop")

    def cont(self) -> None:
        """Resume the vCPUs."""
        self.command("cont")

    def system_reset(self) -> None:
        """Hard reset, like the reset button."""
        self.command("system_reset")

    def system_powerdown(self) -> None:
        """ACPI power-button press: the guest OS decides what to do."""
        self.command("system_powerdown")

    def __repr__(self) -> str:
        return f"QmpClient({str(self.socket_path)!r}, timeout={self.timeout:g})"
