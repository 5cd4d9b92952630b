"""Intel AMT (vPro) power over WS-Management: SOAP over HTTP digest, port 16992 (16993 with TLS).

Messages (Intel AMT SDK, DMTF DSP1027 power state management profile):

* change: ``CIM_PowerManagementService.RequestPowerStateChange`` with ``PowerState`` 2 (on),
  8 (off, soft), 5 (power cycle, off-soft) or 10 (master bus reset: a warm reset, RAM kept), the
  managed element being ``CIM_ComputerSystem`` "ManagedSystem"; ``ReturnValue`` 0 = accepted.
* state: an (optimized) WS-Enumeration of ``CIM_AssociatedPowerManagementService``, whose
  ``PowerState`` is 2 when on and 6/8/12/13 when off (3/4/7: sleeping, reported unknown).

Intel's guide: a power off or cycle is refused while a redirection session (SOL, IDE-R, KVM) is
open, and a second change should wait about 10 s. Not exercised against real AMT here: there is no
open-source AMT to test with, so tests/test_power_amt.py uses a stand-in that answers these messages.
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from xml.etree import ElementTree

from pydantic import SecretStr

from rig.errors import LabFault
from rig.power.base import DeadlineExceeded, PowerState, run_bounded

NS_ADDR = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
NS_WSMAN = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
NS_ENUM = "http://schemas.xmlsoap.org/ws/2004/09/enumeration"
CIM = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2"
PMS = f"{CIM}/CIM_PowerManagementService"
APMS = f"{CIM}/CIM_AssociatedPowerManagementService"
ANONYMOUS = f"{NS_ADDR}/role/anonymous"

#: RequestPowerStateChange values used by the rig.
AMT_ON, AMT_CYCLE, AMT_OFF, AMT_RESET = 2, 5, 8, 10
_AMT_OFF_STATES = frozenset({6, 8, 12, 13})


def _envelope(to: str, action: str, resource: str, body: str, selectors: str = "") -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:wsa="{NS_ADDR}" '
        f'xmlns:wsman="{NS_WSMAN}" xmlns:wsen="{NS_ENUM}" xmlns:p="{PMS}">'
        "<s:Header>"
        f'<wsa:Action s:mustUnderstand="true">{action}</wsa:Action>'
        f'<wsa:To s:mustUnderstand="true">{to}</wsa:To>'
        f'<wsman:ResourceURI s:mustUnderstand="true">{resource}</wsman:ResourceURI>'
        f'<wsa:MessageID s:mustUnderstand="true">uuid:{uuid.uuid4()}</wsa:MessageID>'
        f"<wsa:ReplyTo><wsa:Address>{ANONYMOUS}</wsa:Address></wsa:ReplyTo>"
        f"{selectors}<wsman:OperationTimeout>PT60S</wsman:OperationTimeout>"
        f"</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    )


def power_change_message(to: str, state: int) -> str:
    """The SOAP request of ``RequestPowerStateChange(state)``."""
    selectors = (
        "<wsman:SelectorSet>"
        '<wsman:Selector Name="CreationClassName">CIM_PowerManagementService</wsman:Selector>'
        '<wsman:Selector Name="Name">Intel(r) AMT Power Management Service</wsman:Selector>'
        '<wsman:Selector Name="SystemCreationClassName">CIM_ComputerSystem</wsman:Selector>'
        '<wsman:Selector Name="SystemName">Intel(r) AMT</wsman:Selector>'
        "</wsman:SelectorSet>"
    )
    body = (
        f"<p:RequestPowerStateChange_INPUT><p:PowerState>{state}</p:PowerState>"
        f"<p:ManagedElement><wsa:Address>{ANONYMOUS}</wsa:Address><wsa:ReferenceParameters>"
        f"<wsman:ResourceURI>{CIM}/CIM_ComputerSystem</wsman:ResourceURI><wsman:SelectorSet>"
        '<wsman:Selector Name="CreationClassName">CIM_ComputerSystem</wsman:Selector>'
        '<wsman:Selector Name="Name">ManagedSystem</wsman:Selector>'
        "</wsman:SelectorSet></wsa:ReferenceParameters></p:ManagedElement>"
        "</p:RequestPowerStateChange_INPUT>"
    )
    return _envelope(to, f"{PMS}/RequestPowerStateChange", PMS, body, selectors)


def power_state_message(to: str) -> str:
    """An optimized Enumerate of CIM_AssociatedPowerManagementService (items in the first answer)."""
    body = "<wsen:Enumerate><wsman:OptimizeEnumeration/><wsman:MaxElements>10</wsman:MaxElements></wsen:Enumerate>"
    return _envelope(to, f"{NS_ENUM}/Enumerate", APMS, body)


def pull_message(to: str, context: str) -> str:
    body = f"<wsen:Pull><wsen:EnumerationContext>{context}</wsen:EnumerationContext></wsen:Pull>"
    return _envelope(to, f"{NS_ENUM}/Pull", APMS, body)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find_text(xml: str, name: str) -> list[str]:
    """Texts of every element whose local name is ``name`` (namespace prefixes vary by firmware)."""
    root = ElementTree.fromstring(xml)
    return [(el.text or "").strip() for el in root.iter() if _local(el.tag) == name]


class AmtPowerControl:
    """Power of a vPro laptop through its AMT. ``reset`` is AMT's master bus reset (RAM kept)."""

    warm_reset = True

    def __init__(
        self,
        device: str,
        host: str,
        user: str,
        password: SecretStr,
        *,
        port: int | None = None,
        tls: bool = False,
        ca_file: str | None = None,
        timeout: float = 15.0,
    ) -> None:
        self.device = device
        self.host = host
        self.tls = tls
        self.port = port or (16993 if tls else 16992)
        self.user = user
        self._password = password
        self.ca_file = ca_file
        self.timeout = timeout

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/wsman"

    @property
    def label(self) -> str:
        return f"AMT at {self.host}:{self.port}"

    def describe(self) -> str:
        return f"amt: {self.label} as {self.user!r}"

    def _fault(self, what: str, detail: str, check: str) -> LabFault:
        text = f"device {self.device}: {self.label}: {what} failed: {detail}; check {check}"
        secret = self._password.get_secret_value()
        if secret:
            text = text.replace(secret, "***")
        return LabFault(text, component="amt")

    def _post(self, what: str, message: str) -> str:
        import requests
        from requests.auth import HTTPDigestAuth

        def fn() -> Any:
            return requests.post(
                self.url, data=message.encode(), timeout=(self.timeout, self.timeout),
                auth=HTTPDigestAuth(self.user, self._password.get_secret_value()),
                headers={"Content-Type": "application/soap+xml;charset=UTF-8"},
                verify=self.ca_file or True,
            )

        try:
            resp = run_bounded(fn, self.timeout, f"amt-{self.device}")
        except DeadlineExceeded:
            raise self._fault(what, f"no answer within {self.timeout:g} s",
                              "that the laptop has AC or battery power and its AMT is enabled in MEBx") from None
        except requests.RequestException as exc:
            raise self._fault(what, f"{type(exc).__name__}: {exc}",
                              "host, port and tls in [power], and that AMT is provisioned") from None
        if resp.status_code == 401:
            raise self._fault(what, "login refused (HTTP 401)", f"user {self.user!r} and password_env/password_file")
        if resp.status_code != 200:
            fault = " ".join(_find_text(resp.text, "Text")) if "Envelope" in resp.text else ""
            raise self._fault(what, f"HTTP {resp.status_code} {fault}".strip(),
                              "that no redirection session (SOL, IDE-R, KVM) is open, and wait 10 s between changes")
        return str(resp.text)

    def _change(self, what: str, state: int) -> None:
        xml = self._post(what, power_change_message(self.url, state))
        values = _find_text(xml, "ReturnValue")
        if values != ["0"]:
            raise self._fault(what, f"RequestPowerStateChange({state}) returned {values or 'nothing'}",
                              "that no redirection session (SOL, IDE-R, KVM) is open, and wait 10 s between changes")

    def status(self) -> PowerState:
        xml = self._post("reading the power state", power_state_message(self.url))
        states = _find_text(xml, "PowerState")
        if not states:
            contexts = _find_text(xml, "EnumerationContext")
            if contexts:
                states = _find_text(self._post("reading the power state", pull_message(self.url, contexts[0])),
                                    "PowerState")
        if not states or not re.fullmatch(r"\d+", states[0]):
            raise self._fault("reading the power state", f"no PowerState in the answer ({states})",
                              "the AMT firmware version (CIM_AssociatedPowerManagementService)")
        value = int(states[0])
        if value == 2:
            return PowerState.ON
        if value in _AMT_OFF_STATES:
            return PowerState.OFF
        return PowerState.UNKNOWN

    def on(self) -> None:
        self._change("power on", AMT_ON)

    def off(self) -> None:
        self._change("power off", AMT_OFF)

    def cycle(self) -> None:
        """AMT's own power cycle; from 'off' a power on (AMT refuses to cycle a machine that is off)."""
        if self.status() is PowerState.OFF:
            self._change("power on", AMT_ON)
        else:
            self._change("power cycle", AMT_CYCLE)

    def reset(self) -> None:
        """Master bus reset: a warm reset; from 'off' a power on."""
        if self.status() is PowerState.OFF:
            self._change("power on", AMT_ON)
        else:
            self._change("reset", AMT_RESET)
