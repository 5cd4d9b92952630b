"""The rig's own acceptance test on lab devices: each sbsim failure switch gives the right verdict.

sbsim is the lab's Shadow-box stand-in (rig/lab/sbsim). Each test provokes one failure on purpose,
checks the verdict the monitor reached, accepts it (so the plugin does not fail the test for it),
and leaves the device to be recovered by power cycle before the next test.

Order: the oops and the #GP come first because they use the build test_deploy.py already loaded
(the inventory's own parameters), so they need no reboot before their deploy; each crash's recovery
then gives the hang and the panic (builds with other parameters) the clean boot they need anyway.
With the hang first, the device was power-cycled once more per run only to change the parameters.
"""

from __future__ import annotations

import time

import pytest

from rig.device.shadowbox import DeployFailed
from rig.vocab import VerdictKind

pytestmark = pytest.mark.rig_requires("lab")


def _bound(dut) -> float:
    return dut.device.monitor.hang_bound


def test_oops_is_an_oops(dut):
    dut.deploy_shadowbox()
    dut.ssh.run("echo oops > /sys/module/sbsim/parameters/trigger", timeout=10)
    verdict = dut.wait_verdict(timeout=30)  # settled: a crash printed late still replaces a silence verdict
    assert verdict is not None and verdict.text == "crash(oops)", verdict
    dut.accept_verdict()


def test_gpf_is_a_gpf(dut):
    """A #GP on a non-canonical address (sbsim dereferences 0xdead000000000100, LIST_POISON1):
    the kernel's "general protection fault" report is its own crash class, not an oops."""
    dut.deploy_shadowbox()
    dut.ssh.run("echo gpf > /sys/module/sbsim/parameters/trigger", timeout=10)
    verdict = dut.wait_verdict(timeout=30)
    assert verdict is not None and verdict.text == "crash(gpf)", verdict
    dut.accept_verdict()


def test_hang_after_nmis_is_a_hang(dut, nmi_sources):
    """The seed bug: the NMI handler never returns; the machine goes silent with no log."""
    dut.deploy_shadowbox(module_params={"hang_after_nmi": 3})
    src = nmi_sources.get("qmp") or nmi_sources.get("ipmi")
    if src is None:
        pytest.skip("needs an external NMI source (qmp or ipmi)")
    src.raise_(3, interval=0.2)
    verdict = dut.monitor.wait(timeout=_bound(dut) + 15)
    assert verdict is not None, "no verdict: the monitor missed the hang"
    assert verdict.kind is VerdictKind.HANG, verdict.reason
    assert verdict.since_heartbeat is not None and verdict.since_heartbeat <= _bound(dut) + 1
    after = dut.verdict_after_last_words()  # the recovery now; a crash kept in pstore would make it one
    assert after.kind is VerdictKind.HANG, after.reason
    dut.accept_verdict()


def test_panic_after_nmi_is_a_panic(dut, nmi_sources):
    """A panic is a panic even when its text is late or never comes, as reports and bisect record it.

    A panicking kernel flushes its consoles only after it tried to stop the other CPUs: on a loaded
    2-core lab machine the text once came 5 s after the last heartbeat, after the silence had been
    declared a hang (so the verdict is the settled one, Dut.wait_verdict). Over netconsole, in one CI
    run, it did not come within the settle window at all; pstore keeps it, and
    Dut.verdict_after_last_words reads it after the recovery a hang needs anyway."""
    dut.deploy_shadowbox(module_params={"panic_after_nmi": 2})
    src = nmi_sources.get("qmp") or nmi_sources.get("ipmi")
    if src is None:
        pytest.skip("needs an external NMI source (qmp or ipmi)")
    src.raise_(2, interval=0.2)
    assert dut.wait_verdict(timeout=30) is not None, "no verdict: the monitor missed the panic"
    verdict = dut.verdict_after_last_words()
    assert verdict.text == "crash(panic)", verdict
    dut.accept_verdict()


def test_refusal_to_start_is_named(dut):
    with pytest.raises(DeployFailed) as exc:
        dut.deploy_shadowbox(module_params={"fail_start": 1})
    assert exc.value.reason == "no-vmx", str(exc.value)
    time.sleep(1)
    assert dut.verdict().ok  # a refusal is not a crash: the device is still fine
