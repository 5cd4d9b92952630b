"""IPMI 2.0 (lanplus) client for a laptop's BMC, on pyghmi: power state, power control, diag NMI.

Why a wrapper around ``pyghmi.ipmi.command.Command`` rather than using it directly -- each point
below was observed with pyghmi 1.6 on this project's machines:

* **Bounded calls.** pyghmi retries on its own schedule: a login to a dead BMC gives up after
  about 5 s, but a BMC that dies mid-session can keep a call busy for ~40 s. Every call here runs
  in a short-lived worker thread and is abandoned after ``timeout`` seconds with a
  :class:`~rig.errors.LabFault` ("did not answer within Ns").
* **No session-cache poisoning.** pyghmi caches sessions keyed by (bmc, userid, password, port,
  kg), but stores ``str`` credentials encoded as ``bytes`` and later looks the key up with the
  ``bytes`` form: with ``str`` credentials the key is never removed, and the *next* ``Command`` with
  the same credentials is handed a dead half-initialised session and blocks for about a minute.
  Passing the credentials as ``bytes`` makes the keys match, so a failed login (wrong password) is
  forgotten and later logins start clean; a good session is shared by clients with the same
  credentials to the same BMC and re-established here if another client logged it out.
* **Independence.** Sessions are keyed by the BMC's (address, port): two clients to two BMCs in
  one process use separate sessions; they share only pyghmi's single I/O thread, which never
  blocks on one BMC. A client to a dead BMC does not delay a client to a live one.
* **Who is at fault.** An unreachable BMC or a rejected login is a LabFault, never a device
  failure; a BMC that refuses chassis control 4 ("pulse diagnostic interrupt", the NMI button) is
  :class:`~rig.errors.Unavailable` ("ipmi"), so NMI suites skip it with the reason.
* **Secrets.** The password is a ``SecretStr`` until the moment it is handed to pyghmi and is
  scrubbed from any text pyghmi returns before it reaches a message or a log.

Cipher suites: pyghmi's client proposes suite 17 (SHA-256) and falls back to suite 3 (SHA-1) when
the BMC refuses with an RMCP+ status, as real BMCs and ``ipmi_sim`` do. Nothing is forced here;
the lab's virtual BMC (:mod:`rig.lab.vbmc`) refuses properly instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import SecretStr
from pyghmi.exceptions import PyghmiException
from pyghmi.ipmi import command as ipmi_command

from rig.deadline import DeadlineExceeded, run_bounded
from rig.errors import DeviceError, LabFault, Unavailable

log = logging.getLogger(__name__)

#: Default deadline of one BMC call (login included), seconds.
DEFAULT_TIMEOUT = 10.0
#: How long ``set_power(..., wait=True)`` waits for the chassis to reach the state, seconds.
DEFAULT_WAIT_TIMEOUT = 60.0
#: Pause between power-state polls while waiting, seconds.
POLL_INTERVAL = 1.0

PowerAction = Literal["on", "off", "cycle", "reset", "softoff"]

#: IPMI "Chassis Control" (NetFn chassis 0x00, command 0x02) data byte per action.
CHASSIS_CONTROL: dict[str, int] = {"off": 0, "on": 1, "cycle": 2, "reset": 3, "diag": 4, "softoff": 5}

_NETFN_CHASSIS = 0x00
_CMD_GET_CHASSIS_STATUS = 0x01
_CMD_CHASSIS_CONTROL = 0x02

#: pyghmi error texts that mean "the BMC rejected who we are" (RAKP / privilege failures).
_LOGIN_REJECTED = (
    "incorrect password",
    "unauthorized name",
    "invalid username",
    "unauthorized role",
    "invalid role",
    "rakp",
    "privelege",  # sic, pyghmi's spelling
    "privilege",
)
#: pyghmi error texts that mean "nobody answered".
_NO_ANSWER = ("timeout", "session no longer connected", "none", "")

_T = TypeVar("_T")


class BmcClient:
    """One BMC reached over IPMI 2.0 lanplus. Connects lazily; see the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        password: SecretStr,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        name: str = "",
    ) -> None:
        self.host = host
        self.port = int(port)
        self.user = user
        self._password = password
        self.timeout = float(timeout)
        self.name = name
        self._cmd: ipmi_command.Command | None = None
        self._lock = threading.RLock()
        #: Seconds the last bounded call took (what "did not answer" messages state).
        self._waited = 0.0

    # -- naming and scrubbing ---------------------------------------------------------------

    @property
    def label(self) -> str:
        """'BMC <name> at host:port' -- how every message names this BMC."""
        who = f"BMC {self.name}" if self.name else "BMC"
        return f"{who} at {self.host}:{self.port}"

    def _scrub(self, text: object) -> str:
        out = "" if text is None else str(text)
        if self._password.get_secret_value():  # no local holds the secret (see _session)
            out = out.replace(self._password.get_secret_value(), "***")
        return out

    def _unreachable(self) -> LabFault:
        """'did not answer', with the time really waited (pyghmi may give up before our deadline)."""
        waited = self._waited
        if waited >= self.timeout - 0.05:
            when = f"within {self.timeout:g}s"
        else:
            when = f"(pyghmi gave up after {waited:.1f} s; deadline {self.timeout:g}s)"
        return LabFault(f"{self.label} did not answer {when}: is it powered and on the network?", component="bmc")

    # -- plumbing ---------------------------------------------------------------------------

    def _bounded(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` under the BMC deadline (pyghmi may retry for longer than ``timeout``)."""
        t0 = time.monotonic()
        try:
            return run_bounded(fn, self.timeout, f"bmc-{self.host}:{self.port}")
        except DeadlineExceeded:
            # The worker keeps pyghmi busy until pyghmi gives up; its session is not reused.
            self._waited = time.monotonic() - t0
            self._cmd = None
            raise self._unreachable() from None
        finally:
            self._waited = time.monotonic() - t0

    def _login_error(self, exc: PyghmiException) -> LabFault:
        detail = self._scrub(exc)
        low = detail.strip().lower()
        if low in _NO_ANSWER or "timeout" in low or "no longer connected" in low:
            return self._unreachable()
        if any(key in low for key in _LOGIN_REJECTED):
            return LabFault(
                f"{self.label} rejected the login for user {self.user!r}: check "
                f"password_env/password_file ({detail})",
                component="bmc",
            )
        return LabFault(f"{self.label}: IPMI login failed: {detail}", component="bmc")

    def _session(self) -> ipmi_command.Command:
        """A logged-in pyghmi Command, re-established when pyghmi marked the old one broken."""
        cmd = self._cmd
        if cmd is not None:
            sess = cmd.ipmi_session
            if not getattr(sess, "broken", False) and bool(getattr(sess, "logged", False)):
                return cmd
            self._cmd = None
        # bytes, not str: see the module docstring (pyghmi's session-cache keys). The password is
        # revealed only inside the worker's call, never held in a local of this frame: a traceback
        # shown with its locals (pytest -l, JUnit set-up errors) must not print it.
        userid = self.user.encode("utf-8")
        try:
            cmd = self._bounded(
                lambda: ipmi_command.Command(
                    bmc=self.host, userid=userid, password=self._password.get_secret_value().encode("utf-8"),
                    port=self.port,
                )
            )  # fmt: skip
        except PyghmiException as exc:
            raise self._login_error(exc) from None
        except LabFault:
            raise  # our own deadline (_bounded): "did not answer within ..."
        except OSError as exc:  # name resolution, unusable address
            raise LabFault(f"{self.label}: cannot send to the BMC: {exc.strerror or exc}", component="bmc") from None
        except Exception as exc:
            # pyghmi chokes on BMC replies it does not expect (e.g. struct.error when a BMC accepts
            # a cipher suite it then does not speak): the BMC's fault, not the device's.
            raise LabFault(
                f"{self.label}: IPMI login failed inside pyghmi ({type(exc).__name__}: {self._scrub(exc)}); "
                "the BMC answered something pyghmi cannot parse (try ipmitool -I lanplus -C 3)",
                component="bmc",
            ) from None
        self._cmd = cmd
        return cmd

    def _raw(self, netfn: int, cmd: int, data: tuple[int, ...] = ()) -> dict[str, Any]:
        """One IPMI request/response, bounded; returns pyghmi's response dict (with 'code')."""
        with self._lock:
            session = self._session()
            try:
                rsp = self._bounded(lambda: session.raw_command(netfn=netfn, command=cmd, data=data))
            except PyghmiException as exc:
                self._cmd = None
                raise self._login_error(exc) from None
            except LabFault:
                raise
            except Exception as exc:  # a reply pyghmi cannot parse
                self._cmd = None
                raise LabFault(
                    f"{self.label}: IPMI request failed inside pyghmi ({type(exc).__name__}: {self._scrub(exc)})",
                    component="bmc",
                ) from None
            if not isinstance(rsp, dict):
                self._cmd = None
                raise self._unreachable()
            if rsp.get("code") == 0xFFFF or rsp.get("error") == "timeout":
                self._cmd = None
                raise self._unreachable()
            return rsp

    # -- public API -------------------------------------------------------------------------

    def power_state(self) -> str:
        """'on' or 'off', from Get Chassis Status (bit 0 of the current power state byte)."""
        rsp = self._raw(_NETFN_CHASSIS, _CMD_GET_CHASSIS_STATUS)
        code = int(rsp.get("code", 0))
        if code or not rsp.get("data"):
            raise LabFault(
                f"{self.label}: Get Chassis Status failed (completion code 0x{code:02x}: "
                f"{self._scrub(rsp.get('error', 'no data'))})",
                component="bmc",
            )
        return "on" if rsp["data"][0] & 1 else "off"

    def _control(self, action: str) -> None:
        rsp = self._raw(_NETFN_CHASSIS, _CMD_CHASSIS_CONTROL, (CHASSIS_CONTROL[action],))
        code = int(rsp.get("code", 0))
        if code == 0:
            log.info("%s: chassis control %s accepted", self.label, action)
            return
        why = f"completion code 0x{code:02x}: {self._scrub(rsp.get('error', 'refused'))}"
        if action == "diag":
            raise Unavailable("ipmi", f"{self.label} refuses diag ({why})")
        raise LabFault(f"{self.label} refused chassis power {action} ({why})", component="bmc")

    def set_power(
        self,
        state: PowerAction,
        wait: bool = False,
        *,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
    ) -> None:
        """Send one chassis control; with ``wait``, poll until on/off/softoff took effect.

        'cycle' and 'reset' have no end state to wait for (the chassis is 'on' before and after).
        """
        if state not in ("on", "off", "cycle", "reset", "softoff"):
            raise ValueError(f"unknown power action {state!r}; use on, off, cycle, reset or softoff")
        self._control(state)
        if not wait or state in ("cycle", "reset"):
            return
        target = "on" if state == "on" else "off"
        deadline = time.monotonic() + wait_timeout
        while True:
            if self.power_state() == target:
                return
            if time.monotonic() >= deadline:
                msg = f"{self.label}: chassis did not reach power {target} within {wait_timeout:g}s"
                if state == "softoff":
                    # A soft off is a request to the OS; an OS that ignores it is the device's doing.
                    raise DeviceError(msg + " after a soft-off request (the OS ignored the power button?)")
                raise LabFault(msg, component="bmc")
            time.sleep(POLL_INTERVAL)

    def diag(self) -> None:
        """Pulse the diagnostic interrupt (chassis control 4): the BMC raises an NMI on the host.

        Raises Unavailable("ipmi", "... refuses diag (completion code 0x..: ...)") when the BMC
        says no (many do: 0xCC "Invalid data field in request").
        """
        self._control("diag")

    def close(self) -> None:
        """Log out (bounded, best effort). The client can be used again: it logs in anew."""
        with self._lock:
            cmd, self._cmd = self._cmd, None
            if cmd is None:
                return
            sess = cmd.ipmi_session
            if getattr(sess, "broken", False):
                return
            try:
                self._bounded(sess.logout)
            except Exception as exc:  # logging out of a dead BMC is not worth a failure
                log.debug("%s: logout: %s", self.label, self._scrub(exc))

    def __enter__(self) -> BmcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BmcClient({self.host!r}, {self.port}, user={self.user!r}, name={self.name!r})"
