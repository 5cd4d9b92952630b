"""The pytest plugin: one test run drives every selected laptop, each device in one xdist worker.

Registered through the ``pytest11`` entry point, so any checkout that installs the rig gets:

- options ``--rig-devices``, ``--rig-device``, ``--rig-tag``, ``--rig-report-dir``,
  ``--rig-soak-minutes``, ``--rig-shadowbox-source`` (one tree for every device), ``--rig-build``
  (the build's label, kept in report.json, summary.json and JUnit properties), and ini keys
  ``rig_devices``, ``rig_report_dir``, ``rig_soak_minutes``;
- fixtures ``device`` (parametrized over the selected devices; test ids carry the device name),
  ``dut`` (connected, console captured, hang monitor running; the test fails on a crash or hang with
  the console excerpt), ``shadowbox`` (deployed and verified), ``nmi_sources`` (what the device offers),
  ``rig_run`` (the run's report writer);
- markers ``rig_requires(capability, ...)`` (skip with the device's reason) and ``soak``;
- with ``-n N`` the distribution mode becomes ``loadgroup`` and every device is its own xdist group,
  so no device is ever driven by two workers while devices run side by side.

Why the verdict is judged in ``pytest_runtest_makereport``: the monitor watches the device for the
whole call; a test body that passed on a machine that hung meanwhile must still fail, and it must
fail as the test (with the console excerpt), not as a teardown error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from rig.errors import LabFault, RigError, Unavailable
from rig.inventory import Device, load_inventory
from rig.vocab import VerdictKind

log = logging.getLogger(__name__)

DUTS_KEY = pytest.StashKey[dict[str, Any]]()
RUN_KEY = pytest.StashKey[Any]()
#: device name -> the refusal message, for devices another run holds (asked once per run, see ``dut``).
BUSY_KEY = pytest.StashKey[dict[str, str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("rig", "shadowbox-rig device matrix")
    g.addoption(
        "--rig-devices",
        action="append",
        default=None,
        metavar="PATH",
        help="inventory folder or file (repeatable; default: ini rig_devices or devices/)",
    )
    g.addoption("--rig-device", action="append", default=[], metavar="NAME", help="only this device (repeatable)")
    g.addoption("--rig-tag", action="append", default=[], metavar="TAG", help="only devices with this tag")
    g.addoption("--rig-report-dir", default=None, metavar="DIR", help="where run reports go (default reports/)")
    g.addoption("--rig-soak-minutes", type=float, default=None, help="length of soak tests (default 20)")
    g.addoption(
        "--rig-shadowbox-source",
        default=None,
        metavar="PATH",
        help="deploy this Shadow-box tree on every selected device (overrides [shadowbox] source)",
    )
    g.addoption("--rig-build", default=None, metavar="LABEL", help="name of the build under test, kept in reports")
    parser.addini("rig_devices", "inventory folders/files", type="paths", default=[])
    parser.addini("rig_report_dir", "report folder", default="reports")
    parser.addini("rig_soak_minutes", "soak length in minutes", default="20")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "rig_requires(*capabilities): skip devices that lack a capability "
        "(ipmi, sysrq, perf, qmp, vmx, console, power, lab)",
    )
    config.addinivalue_line("markers", "soak: a long run under load (length: --rig-soak-minutes)")
    # One device, one worker: make xdist group tests by device. The controller schedules by group
    # ("loadgroup"); each worker must also know, because it is the worker that tags node ids with
    # their group -- and a worker parses the command line before any plugin can change it.
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", "no") in ("no", "load"):
        config.option.dist = "loadgroup"
    winput = getattr(config, "workerinput", None)
    if winput is not None and winput.get("rig_loadgroup"):
        config.option.loadgroup = True
    config.stash[DUTS_KEY] = {}


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:  # xdist hook, on the controller, per worker
    node.workerinput["rig_run_id"] = _run_id(node.config)
    node.workerinput["rig_loadgroup"] = node.config.getoption("dist") == "loadgroup"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Schedule by device: every test of one device goes to one worker, devices side by side.

    xdist's own ``loadgroup`` tags node ids with ``@group`` on the workers; with pytest 9 that tag
    no longer reaches the node id (``Node.nodeid`` is not derived from ``_nodeid`` any more), so the
    rig groups by the device name in the test id itself, which it knows from the inventory.
    """
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    names = sorted((d.name for d in selected_devices(config)), key=len, reverse=True)

    class DeviceScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            if "@" in nodeid:
                return nodeid.rsplit("@", 1)[1]
            if nodeid.endswith("]"):
                parts = nodeid.rsplit("[", 1)[1][:-1]
                for name in names:
                    if (
                        parts == name
                        or parts.startswith(name + "-")
                        or parts.endswith("-" + name)
                        or (f"-{name}-" in parts)
                    ):
                        return "device:" + name
            return str(super()._split_scope(nodeid))

    return DeviceScheduling(config, log)


def _run_id(config: pytest.Config) -> str:
    winput = getattr(config, "workerinput", None)
    if winput and "rig_run_id" in winput:
        return str(winput["rig_run_id"])
    if not hasattr(config, "_rig_run_id"):
        config._rig_run_id = os.environ.get("RIG_RUN_ID") or (  # type: ignore[attr-defined]
            time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        )
    return str(config._rig_run_id)  # type: ignore[attr-defined]


def soak_minutes_of(config: pytest.Config) -> float:
    v = config.getoption("--rig-soak-minutes")
    return float(v if v is not None else config.getini("rig_soak_minutes"))


def report_dir(config: pytest.Config) -> Path:
    v = config.getoption("--rig-report-dir") or config.getini("rig_report_dir")
    p = Path(v)
    return p if p.is_absolute() else Path(config.rootpath) / p


def selected_devices(config: pytest.Config) -> list[Device]:
    cached = getattr(config, "_rig_devices", None)
    if cached is not None:
        return list(cached)
    paths = config.getoption("--rig-devices") or config.getini("rig_devices") or [Path(config.rootpath) / "devices"]
    try:
        devices = load_inventory(paths, names=config.getoption("--rig-device"), tags=config.getoption("--rig-tag"))
    except RigError as exc:
        raise pytest.UsageError(str(exc)) from None
    source = config.getoption("--rig-shadowbox-source")
    if source:
        # One build for the whole run (rig regress / bisect): every device deploys the same tree.
        tree = Path(config.invocation_params.dir, source).resolve()
        if not tree.is_dir():
            raise pytest.UsageError(f"--rig-shadowbox-source {source}: {tree} is not a folder")
        devices = [d.model_copy(update={"shadowbox": d.shadowbox.model_copy(update={"source": tree})}) for d in devices]
    config._rig_devices = devices  # type: ignore[attr-defined]
    return devices


#: Time a soak test may take beyond its soak: deploy, recovery (a power cycle and boot), verdicts.
SOAK_TIMEOUT_MARGIN_S = 900.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give each ``soak`` test a pytest-timeout of its soak length plus a margin.

    Why: a project's ``timeout`` ini (ours is 600 s, to catch a stuck rig test) would kill a
    20-minute soak halfway and call it a failure of the device. A test's own ``timeout`` marker wins.
    """
    if not config.pluginmanager.hasplugin("timeout"):
        return
    limit = soak_minutes_of(config) * 60 + SOAK_TIMEOUT_MARGIN_S
    for item in items:
        if item.get_closest_marker("soak") is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(limit))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "device" not in metafunc.fixturenames:
        return
    devices = selected_devices(metafunc.config)
    params = [pytest.param(d, id=d.name, marks=pytest.mark.xdist_group(d.name)) for d in devices]
    if not params:
        params = [
            pytest.param(
                None,
                id="no-devices",
                marks=pytest.mark.skip(
                    reason="no devices selected: run 'rig lab up' or point --rig-devices at an inventory"
                ),
            )
        ]
    metafunc.parametrize("device", params, scope="session")


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def rig_run(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The run's report writer (``reports/<run-id>/``), shared by every test of this process."""
    from rig.report import RunReport

    config = request.config
    run = RunReport(report_dir(config), _run_id(config), build=config.getoption("--rig-build"))
    config.stash[RUN_KEY] = run
    yield run
    run.close()


@pytest.fixture(scope="session")
def _dut_pool(request: pytest.FixtureRequest, rig_run: Any) -> Iterator[dict[str, Any]]:
    pool: dict[str, Any] = request.config.stash[DUTS_KEY]
    yield pool
    for dut in pool.values():
        try:
            dut.close()
        except Exception as exc:  # noqa: BLE001 - closing is best effort at the end of a run
            log.warning("closing %s: %s", dut.name, exc)
    pool.clear()


def _capabilities(dut: Any) -> dict[str, str | None]:
    """capability -> None if offered, else the reason it is not."""
    caps: dict[str, str | None] = {}
    for name in ("ipmi", "sysrq", "perf", "qmp"):
        if name not in dut.device.nmi_sources:
            caps[name] = f"not in nmi_sources of {dut.device.source_file}"
            continue
        try:
            dut.nmi_source(name).check()
            caps[name] = None
        except Unavailable as exc:
            caps[name] = exc.reason
    caps["console"] = None if dut.console is not None else "no [console] in the inventory"
    caps["power"] = None if dut.device.power.kind != "manual" else "manual power: no remote power control"
    caps["lab"] = None if "lab" in dut.device.tags else "not a virtual-lab device"
    res = dut.ssh.run("grep -qw vmx /proc/cpuinfo && echo yes || echo no", timeout=10)
    caps["vmx"] = None if res.out.strip() == "yes" else "the CPU shows no 'vmx' flag (no VT-x)"
    return caps


@pytest.fixture
def dut(request: pytest.FixtureRequest, device: Device, _dut_pool: dict[str, Any], rig_run: Any) -> Iterator[Any]:
    """The device, connected and watched. Recovered first if an earlier test left it crashed or hung.

    A device another run holds (rig.dut.DeviceBusy) fails every test of this run on it, at once and
    with the holder named, without retrying the lock per test: otherwise the tests after the other
    run ended would use the device, and one run's results would be split between two devices' states.
    """
    from rig.dut import DeviceBusy, Dut

    if device is None:
        pytest.skip("no devices selected")
    busy = request.config.stash.setdefault(BUSY_KEY, {})
    if device.name in busy:
        pytest.fail(busy[device.name], pytrace=False)
    d: Dut | None = _dut_pool.get(device.name)
    try:
        if d is None:
            d = Dut(device, rig_run.dir / device.name)
            try:
                d.open()
            except DeviceBusy as exc:
                # Nothing is written for a device this run does not hold: its folder (if two runs
                # share a run id) and its report.json belong to the holder.
                busy[device.name] = f"DEVICE BUSY: {exc}; this run does not use {device.name}"
                pytest.fail(busy[device.name], pytrace=False)
            _dut_pool[device.name] = d
            dev_report = rig_run.device(device)
            dev_report.set_identity(d)
            d.caps = _capabilities(d)
        elif d.needs_recovery:
            took = d.recover()
            rig_run.device(device).event("recovery", f"power cycle and ready in {took:.1f} s", seconds=took)
            d.needs_recovery = False
        else:
            d.monitor.stop()
            d.monitor.resume()
            d.monitor.start()
    except LabFault as exc:
        rig_run.device(device).event("lab-fault", str(exc))
        request.node._rig_setup = (device, str(exc))  # recorded as a lab-fault row (pytest_runtest_makereport)
        pytest.fail(f"LAB FAULT on {device.name} (not a device failure): {exc}", pytrace=False)
    d.accepted_verdict = None
    request.node._rig_dut = d
    _check_requires(request, d)
    request.node._rig_started = time.time()
    request.node._rig_irq_before = None
    request.node._rig_callbacks_before = d.callback_totals()
    with contextlib.suppress(RigError):
        request.node._rig_irq_before = d.interrupts()
    yield d


def _check_requires(request: pytest.FixtureRequest, d: Any) -> None:
    for mark in request.node.iter_markers("rig_requires"):
        for cap in mark.args:
            reason = d.caps.get(cap, f"unknown capability {cap!r}")
            if reason is not None:
                pytest.skip(f"{d.name} lacks {cap}: {reason}")


@pytest.fixture
def soak_minutes(request: pytest.FixtureRequest) -> float:
    """Length of soak tests: --rig-soak-minutes, ini rig_soak_minutes, default 20."""
    return soak_minutes_of(request.config)


@pytest.fixture
def rig_report(dut: Any, rig_run: Any) -> Any:
    """This device's report page, to record evidence (NMI deliveries, callbacks, timeline events)."""
    return rig_run.device(dut.device)


@pytest.fixture
def nmi_sources(dut: Any) -> dict[str, Any]:
    """The NMI sources this device offers: name -> ready source (unavailable ones are left out)."""
    return {k: v for k, v in dut.nmi_sources().items() if not isinstance(v, Unavailable)}


@pytest.fixture
def shadowbox(request: pytest.FixtureRequest, dut: Any, rig_run: Any) -> Any:
    """Shadow-box deployed on the device and verified started (a fresh boot is used if it was loaded)."""
    dev_report = rig_run.device(dut.device)
    try:
        result = dut.deploy_shadowbox()
    except LabFault as exc:
        dev_report.event("lab-fault", str(exc))
        request.node._rig_setup = (dut.device, str(exc))
        pytest.fail(f"LAB FAULT on {dut.name} (not a device failure): {exc}", pytrace=False)
    except RigError as exc:
        dev_report.event("deploy-failed", str(exc))
        raise
    dev_report.set_deploy(result)
    return result


# ---------------------------------------------------------------------------------------------
# verdicts


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    d = getattr(item, "_rig_dut", None)
    if report.when == "setup" and report.failed:
        _record_setup_error(item, d, report, call)
        return
    if d is None:
        return
    if report.when == "setup" and report.skipped:
        _record(item, d.device, report, d.verdict(), after=None)  # e.g. rig_requires: shown with its reason
        return
    if report.when != "call":
        return
    # The monitor's, settled (a hang followed by a panic is the panic) and with a switched-off
    # device told apart (rig.dut.Dut.settled_verdict).
    verdict = d.settled_verdict()
    lab_error = call.excinfo if call.excinfo is not None and call.excinfo.errisinstance(LabFault) else None
    if lab_error is not None and verdict.kind not in (VerdictKind.CRASH, VerdictKind.POWERED_OFF):
        from rig.monitor import Verdict

        verdict = Verdict(VerdictKind.LAB_FAULT, None, str(lab_error.value))
    accepted = d.accepted_verdict is not None and d.accepted_verdict.kind is verdict.kind
    if accepted:
        pass  # the test provoked this verdict on purpose and checked it
    elif verdict.kind is VerdictKind.LAB_FAULT:
        # Whatever the test body said: the lab failed, not the laptop. Say so first.
        report.outcome = "failed"
        report.longrepr = f"LAB FAULT on {d.name} (not a device failure): {verdict.reason}"
    elif verdict.kind is VerdictKind.POWERED_OFF:
        # Someone or something switched the device off: not its failure, but it must be powered on.
        d.needs_recovery = True
        report.outcome = "failed"
        report.longrepr = (
            f"POWERED OFF: {d.name} was switched off during the test (not a device failure): {verdict.reason}"
        )
    elif not verdict.ok:
        d.needs_recovery = True
        excerpt = _wait_excerpt(d, verdict)
        report.outcome = "failed"
        report.longrepr = f"{d.name}: verdict {verdict.text}: {verdict.reason}\n--- console (last lines) ---\n{excerpt}"
    # On the item, not the report: junitxml writes properties from the teardown report, which
    # copies them from the item (and xdist carries them over from the worker).
    item.user_properties.append(("rig_device", d.name))
    item.user_properties.append(("rig_verdict", verdict.text))
    build = item.config.getoption("--rig-build")
    if build:
        item.user_properties.append(("rig_build", build))
    kernel = d.kernel_release
    if kernel:
        item.user_properties.append(("rig_kernel", kernel))
    if d.deployment is not None:
        item.user_properties.append(("rig_shadowbox", d.deployment[1].commit or d.deployment[1].recipe))
    after = None
    if verdict.ok:
        with contextlib.suppress(RigError):
            after = d.interrupts()
    before_cb = getattr(item, "_rig_callbacks_before", None)
    callbacks = None
    if before_cb is not None and d.console is not None:
        now_cb = d.callback_totals()
        callbacks = {cpu: n - before_cb.get(cpu, 0) for cpu, n in now_cb.items() if n > before_cb.get(cpu, 0)}
    _record(item, d.device, report, verdict, after, callbacks=callbacks)


def _record_setup_error(item: pytest.Item, d: Any, report: pytest.TestReport, call: pytest.CallInfo[None]) -> None:
    """A test whose set-up failed (a deploy that failed, a lab fault while connecting) gets its row too.

    Why: the row is where a lab engineer looks. Without it a build that Shadow-box refused to start
    on ("VMX not support") showed a device report with no test in it. The outcome is ``failed`` and
    the failure text says it was the set-up; a lab fault is a ``lab-fault`` verdict, never the
    device's failure. A device this run does not hold (DEVICE BUSY) gets nothing: its report
    belongs to the holder.
    """
    from rig.monitor import Verdict

    lab = getattr(item, "_rig_setup", None)
    if lab is not None:
        device, reason = lab
        verdict = Verdict(VerdictKind.LAB_FAULT, None, reason)
    elif d is not None:
        device, verdict = d.device, d.verdict()
    else:
        return  # failed before the device was held (busy, bad inventory): no device report to add to
    # The exception's own words (DeployFailed names the step and the console markers), not the
    # fixture's traceback: that is what a lab engineer reads in the report.
    why = call.excinfo.exconly() if call.excinfo is not None else str(report.longrepr)
    _record(item, device, report, verdict, after=None, failure=f"error in set-up: {why}")


def _record(
    item: pytest.Item,
    device: Device,
    report: pytest.TestReport,
    verdict: Any,
    after: Any,
    failure: str | None = None,
    callbacks: dict[int, int] | None = None,
) -> None:
    """One test's line in the device's report.json (outcome, verdict, NMI counts before/after)."""
    run = item.config.stash.get(RUN_KEY, None)
    if run is None:
        return
    callspec = getattr(item, "callspec", None)
    params = [str(v) for k, v in (callspec.params.items() if callspec else []) if k != "device"]
    label = getattr(item, "originalname", item.name) + (f"[{'-'.join(params)}]" if params else "")
    longrepr = ""
    if failure is not None:
        longrepr = failure
    elif report.failed:
        longrepr = str(report.longrepr)
    elif report.skipped and isinstance(report.longrepr, tuple):
        longrepr = str(report.longrepr[2])  # the skip reason
    run.device(device).test_result(
        nodeid=item.nodeid,
        name=label,
        outcome=report.outcome,
        duration=report.duration,
        verdict=verdict,
        irq_before=getattr(item, "_rig_irq_before", None),
        irq_after=after,
        host_callbacks=callbacks,
        longrepr=longrepr,
    )


def _wait_excerpt(d: Any, verdict: Any, lines: int = 60) -> str:
    """Keep reading for the crash tail (the whole oops), then return the last console lines."""
    if d.console is None:
        return "(no console)"
    if verdict.kind is VerdictKind.CRASH:
        end = verdict.at + d.device.monitor.crash_tail_seconds
        while time.time() < end:
            time.sleep(0.2)
    return "\n".join(line.text for line in d.console.tail(lines))


# ---------------------------------------------------------------------------------------------
# end of run: the matrix summary, once, on the controller


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from rig.report import write_summary

    config = session.config
    run_dir = report_dir(config) / _run_id(config)
    if not _is_worker(config) and run_dir.is_dir() and any(run_dir.glob("*/report.json")):
        write_summary(run_dir)
        from rig.report_html import render_run

        try:
            render_run(run_dir)
        except Exception as exc:  # noqa: BLE001 - pages are derived; never fail a run on them
            log.warning("HTML report for %s not written: %s (run 'rig report html %s')", run_dir, exc, run_dir)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    import json

    run_dir = report_dir(config) / _run_id(config)
    summary_path = run_dir / "summary.json"
    if _is_worker(config) or not summary_path.exists():
        return
    summary = json.loads(summary_path.read_text())
    tr = terminalreporter
    tr.section("rig: device verdicts")
    for dev in summary["devices"]:
        verdicts = [c["verdict"] for c in dev["tests"].values()]
        bad = [f"{name}: {c['verdict']}" for name, c in dev["tests"].items() if c["outcome"] == "failed"]
        state = "PASS" if not bad else "FAIL"
        if not verdicts:
            state, bad = "NONE", ["no test ran on it"]  # not "PASS": nothing was shown to work
        tr.write_line(f"{dev['device']:<20} {state}  {len(verdicts)} tests  " + ("; ".join(bad) if bad else "all ok"))
    tr.write_line(f"reports: {run_dir}/index.html")
