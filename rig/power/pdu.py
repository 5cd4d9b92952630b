"""Network PDUs and smart plugs through labgrid's power back ends (``labgrid.driver.power.<model>``).

Why labgrid's modules: labs already describe their PDUs for labgrid, and its ~30 back ends (APC and
Sentry over SNMP, Gude, NETIO, Raritan, Shelly, TP-Link, simple REST, ...) are the field's
collection. Each module offers ``power_set(host, port, index, value)`` and ``power_get(host, port,
index) -> bool``; the rig calls them directly, without a labgrid target or coordinator.

What the rig adds around them:

* a deadline per call (:func:`rig.power.base.run_bounded`): labgrid has no timeouts, so a PDU that
  accepts and never answers would block forever;
* one error type: labgrid's back ends raise ``AssertionError`` (a bad outlet or port),
  ``CalledProcessError`` (net-snmp tools), ``ExecutionError``, ``requests`` errors...; every one
  becomes a :class:`~rig.errors.LabFault` naming the device, the PDU model and host and the outlet,
  and saying what to check -- never a verdict against the laptop;
* host and port the way labgrid's ``NetworkPowerDriver`` passes them: a module with a fixed ``PORT``
  (gude, netio) gets that port; an SNMP module (apc, sentry: they shell out to ``snmpset``/``snmpget
  -v1 -c private <host>``) gets ``host:port`` as net-snmp's agent address when a port is given;
  http(s) URL hosts get the credentials (from ``password_env``/``password_file``) inserted.
"""

from __future__ import annotations

import importlib
import subprocess
import time
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from rig.errors import LabFault
from rig.power.base import DeadlineExceeded, PowerState, run_bounded

#: net-snmp's words for "nobody answered" and "no such outlet" (v1 agents drop a wrong community).
_SNMP_TIMEOUT = ("timeout", "no response")
_SNMP_NO_SUCH = ("no such", "nosuchname", "there is no such variable")


class PduPowerControl:
    """One outlet of a network PDU. ``reset`` is a cycle: a PDU can only cut the power."""

    warm_reset = False

    def __init__(
        self,
        device: str,
        model: str,
        host: str,
        outlet: int | str,
        *,
        port: int | None = None,
        user: str | None = None,
        password: SecretStr | None = None,
        timeout: float = 10.0,
        cycle_pause: float = 5.0,
    ) -> None:
        self.device = device
        self.model = model
        self.host = host
        self.port = port
        self.outlet = outlet
        self.user = user
        self._password = password
        self.timeout = timeout
        self.cycle_pause = cycle_pause
        self._module: ModuleType | None = None

    # -- naming ------------------------------------------------------------------------------

    @property
    def label(self) -> str:
        """'PDU apc at 10.0.0.9:161 outlet 4' -- how every message names this outlet (no secret)."""
        where = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"PDU {self.model} at {where} outlet {self.outlet}"

    def describe(self) -> str:
        return f"pdu: {self.label}, through labgrid's {self.model} back end"

    def _fault(self, what: str, detail: str, check: str) -> LabFault:
        text = f"device {self.device}: {self.label}: {what} failed: {detail}; check {check}"
        if self._password is not None and self._password.get_secret_value():
            text = text.replace(self._password.get_secret_value(), "***")
        return LabFault(text, component="pdu")

    # -- labgrid -----------------------------------------------------------------------------

    def backend(self) -> ModuleType:
        """labgrid's module for ``model`` (imported on first use: labgrid is slow to import)."""
        if self._module is None:
            try:
                self._module = importlib.import_module(f"labgrid.driver.power.{self.model}")
            except ImportError as exc:
                raise LabFault(
                    f"device {self.device}: {self.label}: labgrid's {self.model!r} back end cannot be loaded "
                    f"({exc}); it may need an extra package (e.g. pip install 'labgrid[snmp]' or python-kasa)",
                    component="pdu",
                ) from None
        return self._module

    def _host_port(self, module: ModuleType) -> tuple[str, int | None]:
        fixed = getattr(module, "PORT", None)
        if fixed is not None:
            return self.host, self.port or int(fixed)
        parts = urlsplit(self.host)
        if parts.scheme in ("http", "https") and parts.hostname:
            netloc = parts.netloc
            if self.user is not None and self._password is not None:
                netloc = f"{self.user}:{self._password.get_secret_value()}@{netloc.rsplit('@', 1)[-1]}"
            return urlunsplit(parts._replace(netloc=netloc)), None
        if self.port is not None:
            return f"{self.host}:{self.port}", None
        return self.host, None

    def _call(self, what: str, action: str, value: bool | None = None) -> object:
        module = self.backend()
        host, port = self._host_port(module)
        if value is None:
            def fn() -> object:
                return module.power_get(host, port, self.outlet)
        else:
            def fn() -> object:
                return module.power_set(host, port, self.outlet, value)
        try:
            return run_bounded(fn, self.timeout, f"pdu-{self.device}-{action}")
        except DeadlineExceeded:
            raise self._fault(
                what, f"no answer within {self.timeout:g} s (timeout in [power])",
                "that the PDU is powered and reachable at that address and port, and that nothing "
                "else holds its management interface",
            ) from None
        except AssertionError:
            raise self._fault(
                what, f"labgrid's {self.model} back end refused outlet {self.outlet!r} or port {self.port!r}",
                "outlet and port in [power] against the PDU's numbering (apc takes outlets 1..8 and no port "
                "of its own: give the SNMP port as port)",
            ) from None
        except subprocess.CalledProcessError as exc:
            out = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else str(exc.output or "")
            raise self._snmp_fault(what, " ".join(out.split()) or f"exit status {exc.returncode}") from None
        except Exception as exc:  # noqa: BLE001 - labgrid's back ends raise many unrelated types
            cause = exc.__cause__
            if isinstance(cause, subprocess.CalledProcessError):
                out = cause.output.decode(errors="replace") if isinstance(cause.output, bytes) else ""
                raise self._snmp_fault(what, " ".join(out.split()) or str(exc)) from None
            raise self._fault(
                what, f"{type(exc).__name__}: {exc}",
                "host, port, outlet and credentials in [power], and that the PDU answers",
            ) from None

    def _snmp_fault(self, what: str, detail: str) -> LabFault:
        low = detail.lower()
        if any(w in low for w in _SNMP_TIMEOUT):
            return self._fault(
                what, detail, "the PDU's address and SNMP port, and its community: labgrid's SNMP back ends "
                "use 'private', and an agent drops a request with a wrong community without answering",
            )
        if any(w in low for w in _SNMP_NO_SUCH):
            return self._fault(what, detail, f"the outlet number: this PDU has no outlet {self.outlet!r}")
        return self._fault(what, detail, "host, port and outlet in [power] (net-snmp's snmpset/snmpget said so)")

    # -- PowerControl ------------------------------------------------------------------------

    def status(self) -> PowerState:
        value = self._call("reading the outlet", "get")
        if value is True:
            return PowerState.ON
        if value is False:
            return PowerState.OFF
        return PowerState.UNKNOWN

    def on(self) -> None:
        self._call("switching the outlet on", "on", True)

    def off(self) -> None:
        self._call("switching the outlet off", "off", False)

    def cycle(self) -> None:
        """Off, ``cycle_pause`` seconds (a laptop's power supply must drain), on."""
        self.off()
        time.sleep(self.cycle_pause)
        self.on()

    def reset(self) -> None:
        """A PDU has no reset line: a reset is a cycle (RAM is lost; see ``warm_reset``)."""
        self.cycle()

    def set_contact(self, closed: bool) -> None:
        """Drive the outlet as a relay contact (rig.power.relay: a relay board behind a labgrid back end)."""
        self._call("closing the relay" if closed else "opening the relay", "contact", closed)
