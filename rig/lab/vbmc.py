"""The lab's virtual BMC: IPMI 2.0 (lanplus) on a loopback UDP port, driving a QEMU guest over QMP.

Why: a lab laptop must be reachable the way a real one is -- ``ipmitool`` and the rig's
:class:`rig.transports.bmc.BmcClient` talk IPMI to it -- so the rig's IPMI power and NMI ('diag') code paths
run in the lab too. Power actions map onto QMP exactly as :class:`rig.power.QmpPowerControl` does
(the guest runs with ``-no-shutdown``: off = ``stop``, on = ``system_reset`` + ``cont``), and
chassis control 4 ("pulse diagnostic interrupt") sends QMP ``inject-nmi``: a real NMI in the guest.

Built on ``pyghmi.ipmi.bmc.Bmc`` with two small protocol fixes, both in :class:`_StrictSession`:

* **Cipher-suite refusal.** pyghmi's server answers every RMCP+ Open Session Request with "SHA-1
  auth, SHA1-96 integrity, AES" whatever the client proposed. pyghmi's client proposes suite 17
  (SHA-256), believes the answer, and dies on the SHA-1 RAKP2 (``struct.error``). A real BMC
  refuses what it cannot do with RMCP+ status 0x11 ("no cipher suite match with proposed security
  algorithms"); clients (pyghmi, ipmitool) then retry with suite 3. The session refuses any
  proposal other than (auth 1, integrity 1, confidentiality 1) that way.
* **Unknown user name.** pyghmi's server silently drops a RAKP1 naming an unknown user, so the
  client times out and reports "BMC unreachable". A real BMC answers RAKP2 with status 0x0D
  ("unauthorized name"), which the client reports as a login failure. We do the same.

The server also answers a *retransmitted* chassis control (same client, same IPMI sequence
number, within a few seconds) from a cache instead of running it again, so a slow QMP never turns
one "cycle" into two. If QMP is unreachable the request gets completion code 0xFF and a log line;
the BMC keeps serving.

Run: ``python -m rig.lab.vbmc --name lab1 --address 127.0.0.1 --port 6230 --user admin
--password-file pw --qmp-socket qmp.sock`` (``--port 0`` picks a free port). It prints
``vbmc <name> listening on <addr>:<port> ...`` to stderr when ready, then one line per request;
the password is never logged. SIGTERM or SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.private.constants as ipmi_constants
import pyghmi.ipmi.private.serversession as serversession
import pyghmi.ipmi.private.session as ipmisession
from pydantic import SecretStr

from rig.errors import RigError
from rig.power import PowerState, QmpPowerControl
from rig.transports.qmp import QmpClient

log = logging.getLogger("rig.lab.vbmc")

#: Completion code for "the BMC could not do it" (here: QMP unreachable or refused).
CC_UNSPECIFIED = 0xFF
#: RMCP+ status: no cipher suite match with proposed security algorithms.
RMCP_NO_CIPHER_MATCH = 0x11
#: RMCP+ status: unauthorized name.
RMCP_UNAUTHORIZED_NAME = 0x0D
#: The only (auth, integrity, confidentiality) algorithms pyghmi's server implements: suite 3.
SUITE_3 = (1, 1, 1)
#: A chassis control retransmitted within this many seconds is answered from the cache.
RETRANSMIT_WINDOW = 5.0
#: QMP deadline inside the BMC. IPMI clients retransmit after about a second (answered from the cache
#: above once the first request is done) and the rig's BMC client waits 10 s (rig.transports.bmc), so
#: the BMC may take longer than one retransmission; 3 s ran out once on a 2-core machine at load 8
#: (QEMU pauses every vCPU for system_reset) and the rig rightly called the refusal a lab fault.
DEFAULT_QMP_TIMEOUT = 6.0

_CONTROL_NAMES = {0: "off", 1: "on", 2: "cycle", 3: "reset", 4: "diag", 5: "softoff"}
_REQUEST_NAMES = {
    (6, 0x01): "get device id",
    (6, 0x02): "cold reset",
    (6, 0x37): "get system guid",
    (6, 0x48): "activate payload",
    (6, 0x49): "deactivate payload",
    (0, 0x08): "set boot options",
    (0, 0x09): "get boot options",
    (0x2C, 0x00): "group extension probe (netfn 0x2c cmd 0x00; answered 0xc1)",
    (0x2C, 0x3E): "group extension probe (netfn 0x2c cmd 0x3e; answered 0xc1)",
}


def _peer(session: Any) -> str:
    addr = getattr(session, "sockaddr", None)
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{str(addr[0]).removeprefix('::ffff:')}:{addr[1]}"
    return "?"


class _StrictSession(serversession.ServerSession):
    """pyghmi's server session, refusing what it cannot do the way a real BMC does (see module doc)."""

    def create_open_session_response(self, request: bytearray) -> bytearray:
        # RMCP+ Open Session Request (IPMI 2.0 table 13-16): tag, role, 2 reserved, console
        # session id [4:8], then three 8-byte algorithm payloads whose algorithm byte is at +4.
        proposed = (request[12], request[20], request[28]) if len(request) >= 32 else None
        if proposed != SUITE_3:
            self.clientsessionid = request[4:8]
            log.info(
                "open session from %s: refused algorithms auth/integrity/conf=%s (status 0x%02x, "
                "only cipher suite 3 is offered)",
                _peer(self), proposed, RMCP_NO_CIPHER_MATCH,
            )
            # Open Session Response on error: tag, status, reserved, reserved, console session id.
            return bytearray([request[0], RMCP_NO_CIPHER_MATCH, 0, 0]) + request[4:8]
        return super().create_open_session_response(request)  # type: ignore[no-any-return]

    def _got_rakp1(self, data: bytearray) -> None:
        namelen = data[27] if len(data) > 27 else 0
        name = bytes(data[28 : 28 + namelen]).decode("utf-8", "replace")
        if namelen and self.authdata.get(name) is None:
            log.info("login from %s: unknown user %r (RAKP2 status 0x%02x)", _peer(self), name,
                     RMCP_UNAUTHORIZED_NAME)
            reply = bytearray([data[0], RMCP_UNAUTHORIZED_NAME, 0, 0]) + self.clientsessionid
            self.send_payload(reply, ipmi_constants.payload_types["rakp2"], retry=False)
            return
        super()._got_rakp1(data)


class VirtualBmc(pyghmi_bmc.Bmc):  # type: ignore[misc]
    """A pyghmi BMC whose chassis is a QEMU guest behind a QMP socket."""

    def __init__(
        self,
        *,
        name: str,
        address: str,
        port: int,
        user: str,
        password: SecretStr,
        qmp_socket: Path,
        qmp_timeout: float = DEFAULT_QMP_TIMEOUT,
    ) -> None:
        super().__init__({user: password.get_secret_value()}, port=port, address=address)
        # With port 0 the kernel picked one; pyghmi routes session packets by this number.
        self.port = self.serversocket.getsockname()[1]
        self.address = address
        self.name = name
        self.qmp_socket = Path(qmp_socket)
        self.power = QmpPowerControl(QmpClient(self.qmp_socket, timeout=qmp_timeout))
        self._recent: dict[tuple[Any, ...], tuple[float, int]] = {}

    # -- session creation: use the strict session ----------------------------------------------

    def sessionless_data(self, data: bytes, sockaddr: Any) -> None:
        raw = bytearray(data)
        if (len(raw) >= 22 and raw[0] == 6 and raw[2:4] == b"\xff\x07" and raw[4] == 6
                and raw[5] & 0x3F == ipmi_constants.payload_types["rmcpplusopenreq"]):
            _StrictSession(self.authdata, self.kg, sockaddr, self.serversocket, raw[16:], self.uuid, bmc=self)
            return
        super().sessionless_data(data, sockaddr)

    # -- QMP-backed actions: return a completion code, never raise -----------------------------

    def _do(self, what: str, action: Callable[[], None]) -> int:
        try:
            action()
        except RigError as exc:  # LabFault (QMP down) or QmpCommandError (QEMU said no)
            log.warning("%s failed: %s -> completion code 0x%02x", what, exc, CC_UNSPECIFIED)
            return CC_UNSPECIFIED
        return 0

    def power_off(self) -> int:
        return self._do("power off (QMP stop)", self.power.off)

    def power_on(self) -> int:
        return self._do("power on (QMP system_reset+cont)", self.power.on)

    def power_cycle(self) -> int:
        return self._do("power cycle (QMP stop, system_reset, cont)", self.power.cycle)

    def power_reset(self) -> int:
        return self._do("power reset (QMP system_reset)", self.power.reset)

    def power_shutdown(self) -> int:
        return self._do("soft off (QMP system_powerdown)", self.power.qmp.system_powerdown)

    def pulse_diag(self) -> int:
        rc = self._do("diag (QMP inject-nmi)", self.power.qmp.inject_nmi)
        if rc == 0:
            log.info("diag: QMP inject-nmi sent to %s", self.qmp_socket)
        return rc

    # -- request handlers, each logging one line ------------------------------------------------

    def get_chassis_status(self, session: Any) -> None:
        try:
            state = self.power.status()
        except RigError as exc:
            log.warning("get chassis status from %s: QMP: %s -> 0x%02x", _peer(session), exc, CC_UNSPECIFIED)
            session.send_ipmi_response(code=CC_UNSPECIFIED)
            return
        if state is PowerState.UNKNOWN:
            log.warning("get chassis status from %s: QMP state not on/off -> 0x%02x", _peer(session),
                        CC_UNSPECIFIED)
            session.send_ipmi_response(code=CC_UNSPECIFIED)
            return
        log.info("get chassis status from %s: power %s", _peer(session), state.value)
        session.send_ipmi_response(data=[1 if state is PowerState.ON else 0, 0, 0])

    def control_chassis(self, request: dict[str, Any], session: Any) -> None:
        data = request.get("data") or [None]
        directive = data[0]
        what = _CONTROL_NAMES.get(directive, f"0x{directive:02x}" if isinstance(directive, int) else "?")
        now = time.monotonic()
        self._recent = {k: v for k, v in self._recent.items() if now - v[0] < RETRANSMIT_WINDOW}
        key = (getattr(session, "sockaddr", None), getattr(session, "sessionid", None),
               getattr(session, "seqlun", None), directive)
        if key in self._recent:
            rc = self._recent[key][1]
            log.info("chassis control %s from %s: retransmission, answered 0x%02x again", what,
                     _peer(session), rc)
            session.send_ipmi_response(code=rc)
            return
        handlers: dict[int, Callable[[], int]] = {
            0: self.power_off, 1: self.power_on, 2: self.power_cycle,
            3: self.power_reset, 4: self.pulse_diag, 5: self.power_shutdown,
        }
        handler = handlers.get(directive) if isinstance(directive, int) else None
        rc = handler() if handler is not None else 0xCC  # 0xCC: invalid data field in request
        self._recent[key] = (now, rc)
        log.info("chassis control %s from %s: completion code 0x%02x", what, _peer(session), rc)
        session.send_ipmi_response(code=rc)

    def handle_raw_request(self, request: dict[str, Any], session: Any) -> None:
        key = (int(request.get("netfn", -1)), int(request.get("command", -1)))
        if key not in ((0, 1), (0, 2)):  # those two log their own line, with the result
            name = _REQUEST_NAMES.get(key, f"netfn 0x{key[0]:02x} cmd 0x{key[1]:02x}")
            log.info("%s from %s", name, _peer(session))
        super().handle_raw_request(request, session)

    def serve(self, should_stop: Callable[[], bool], poll: float = 0.5) -> None:
        """Serve until ``should_stop()`` is true (checked at least every ``poll`` seconds)."""
        while not should_stop():
            ipmisession.Session.wait_for_rsp(poll)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.serversocket.close()


def _read_password(path: Path) -> SecretStr:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise SystemExit(f"vbmc: cannot read --password-file {path}: {exc.strerror}") from None
    if not value:
        raise SystemExit(f"vbmc: --password-file {path} is empty; write the BMC password into it")
    return SecretStr(value)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rig.lab.vbmc", description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True, help="device name, for the log")
    ap.add_argument("--address", default="127.0.0.1", help="address to bind (keep it loopback)")
    ap.add_argument("--port", type=int, required=True, help="UDP port (0 = pick a free one)")
    ap.add_argument("--user", default="admin")
    ap.add_argument("--password-file", type=Path, required=True, help="file holding only the password")
    ap.add_argument("--qmp-socket", type=Path, required=True, help="the guest's QMP unix socket")
    ap.add_argument("--qmp-timeout", type=float, default=DEFAULT_QMP_TIMEOUT)
    args = ap.parse_args(argv)

    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO,
        format=f"%(asctime)s vbmc[{args.name}] %(levelname)s %(message)s",
    )
    logging.getLogger("qemu").setLevel(logging.ERROR)
    password = _read_password(args.password_file)
    try:
        bmc = VirtualBmc(
            name=args.name, address=args.address, port=args.port, user=args.user,
            password=password, qmp_socket=args.qmp_socket, qmp_timeout=args.qmp_timeout,
        )
    except OSError as exc:
        log.error("cannot bind UDP %s:%s: %s", args.address, args.port, exc.strerror or exc)
        return 2

    stop: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("vbmc %s listening on %s:%d (user %r, qmp %s)", args.name, args.address, bmc.port,
             args.user, args.qmp_socket)
    try:
        bmc.serve(lambda: bool(stop))
    finally:
        bmc.close()
    log.info("vbmc %s stopped (signal %s)", args.name, stop[0] if stop else "-")
    return 0


if __name__ == "__main__":
    sys.exit(main())
