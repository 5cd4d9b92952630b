"""rig.power.amt against a stand-in, NOT against real Intel AMT (not exercised against real AMT here:
there is no open-source AMT to test with). The stand-in is a small HTTP server that checks HTTP
digest authentication the way RFC 7616 says and answers the WS-Management messages Intel documents
for power: ``CIM_PowerManagementService.RequestPowerStateChange`` and an enumeration of
``CIM_AssociatedPowerManagementService``. What this proves: the rig's messages carry the documented
actions, resource URIs and power-state numbers, digest login works and a refusal is a lab fault.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import SecretStr

from rig.errors import LabFault
from rig.power import AmtPowerControl, PowerState, offers_warm_reset
from rig.power.amt import APMS, NS_ENUM, PMS
from tests.consolepeers import STARVED_SLACK_S

USER, PASSWORD, REALM, NONCE = "admin", "Amt-Pa55!", "Digest:4A3B0000000000000000000000000000", "n0nce"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - HTTP digest (RFC 7616 MD5), as AMT uses


class StandIn:
    def __init__(self) -> None:
        self.state = 2
        self.requests: list[int] = []
        self.refuse_with: int | None = None


def _handler(amt: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _authorized(self) -> bool:
            h = self.headers.get("Authorization", "")
            if not h.startswith("Digest "):
                return False
            f = dict(re.findall(r'(\w+)="?([^",]*)"?', h[7:]))
            ha1 = _md5(f"{f.get('username')}:{REALM}:{PASSWORD}")
            ha2 = _md5(f"POST:{f.get('uri')}")
            want = _md5(f"{ha1}:{f.get('nonce')}:{f.get('nc')}:{f.get('cnonce')}:{f.get('qop')}:{ha2}")
            return f.get("username") == USER and f.get("response") == want

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            if not self._authorized():
                self.send_response(401)
                self.send_header("WWW-Authenticate", f'Digest realm="{REALM}", nonce="{NONCE}", qop="auth"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            resource = f"<wsman:ResourceURI s:mustUnderstand=\"true\">{PMS}"
            if f"{PMS}/RequestPowerStateChange" in body and resource in body:
                value = int(re.search(r"<p:PowerState>(\d+)</p:PowerState>", body).group(1))  # type: ignore[union-attr]
                amt.requests.append(value)
                rv = amt.refuse_with if amt.refuse_with is not None else 0
                if rv == 0:
                    amt.state = {2: 2, 8: 8, 5: 2, 10: 2}[value]
                xml = (f'<a:Envelope xmlns:a="http://www.w3.org/2003/05/soap-envelope" xmlns:g="{PMS}">'
                       f"<a:Body><g:RequestPowerStateChange_OUTPUT><g:ReturnValue>{rv}</g:ReturnValue>"
                       "</g:RequestPowerStateChange_OUTPUT></a:Body></a:Envelope>")
            elif f"{NS_ENUM}/Enumerate" in body and APMS in body:
                xml = (f'<a:Envelope xmlns:a="http://www.w3.org/2003/05/soap-envelope" xmlns:g="{NS_ENUM}" '
                       f'xmlns:h="{APMS}"><a:Body><g:EnumerateResponse><g:EnumerationContext>ctx</g:EnumerationContext>'
                       f"<w:Items xmlns:w=\"http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd\">"
                       f"<h:CIM_AssociatedPowerManagementService><h:PowerState>{amt.state}</h:PowerState>"
                       "</h:CIM_AssociatedPowerManagementService></w:Items></g:EnumerateResponse></a:Body></a:Envelope>")
            else:
                self.send_response(400)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = xml.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/soap+xml;charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture
def amt() -> Iterator[tuple[StandIn, int]]:
    stand_in = StandIn()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stand_in))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield stand_in, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_power_state_changes_use_the_documented_numbers(amt: tuple[StandIn, int]) -> None:
    stand_in, port = amt
    p = AmtPowerControl("vpro-1", "127.0.0.1", USER, SecretStr(PASSWORD), port=port, timeout=5)
    assert offers_warm_reset(p)  # master bus reset keeps RAM
    assert p.status() is PowerState.ON
    p.off()
    assert stand_in.requests == [8] and p.status() is PowerState.OFF
    p.cycle()  # off: AMT refuses to cycle a machine that is off, so the rig powers it on
    p.reset()
    p.cycle()
    p.on()
    assert stand_in.requests == [8, 2, 10, 5, 2]


def test_wrong_password_is_a_lab_fault_without_the_password(amt: tuple[StandIn, int]) -> None:
    _, port = amt
    p = AmtPowerControl("vpro-1", "127.0.0.1", USER, SecretStr("wrong-Pa55"), port=port, timeout=5)
    with pytest.raises(LabFault, match=r"device vpro-1: AMT at 127.0.0.1:\d+: .*401.*password_env") as ei:
        p.status()
    assert "wrong-Pa55" not in str(ei.value) and PASSWORD not in str(ei.value)


def test_refused_change_is_a_lab_fault_naming_redirection(amt: tuple[StandIn, int]) -> None:
    stand_in, port = amt
    stand_in.refuse_with = 2
    p = AmtPowerControl("vpro-1", "127.0.0.1", USER, SecretStr(PASSWORD), port=port, timeout=5)
    with pytest.raises(LabFault, match=r"RequestPowerStateChange\(8\) returned \['2'\].*redirection session"):
        p.off()


def test_amt_that_never_answers_is_a_lab_fault_at_the_deadline() -> None:
    import socket
    import time

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        p = AmtPowerControl("vpro-1", "127.0.0.1", USER, SecretStr(PASSWORD), port=srv.getsockname()[1], timeout=1.5)
        t0 = time.monotonic()
        with pytest.raises(LabFault, match="vpro-1"):
            p.status()
        assert time.monotonic() - t0 < 1.5 + STARVED_SLACK_S
