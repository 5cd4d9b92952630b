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
import re
import secrets
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from rig.device.lifecycle import DeviceState
from rig.errors import LabFault, RigError, Unavailable
from rig.inventory import Device, load_inventory
from rig.vocab import NMI_SOURCE_NAMES, VerdictKind

if TYPE_CHECKING:  # typed fixtures without importing the rig's device stack when pytest loads the plugin
    from rig.device.dut import Dut
    from rig.device.monitor import Verdict
    from rig.device.nmi import InterruptCounts, NmiSource
    from rig.device.shadowbox import DeployFailed, DeployResult
    from rig.reports.board import BoardFeed, TerminalBoard
    from rig.reports.report import DeviceReport, RunReport

log = logging.getLogger(__name__)

DUTS_KEY = pytest.StashKey[dict[str, "Dut"]]()
RUN_KEY = pytest.StashKey["RunReport"]()
#: device name -> the refusal message, for devices another run holds (asked once per run, see ``dut``).
BUSY_KEY = pytest.StashKey[dict[str, str]]()
#: This run's id (the controller's; a worker reads it from workerinput) and its selected devices.
RUN_ID_KEY = pytest.StashKey[str]()
DEVICES_KEY = pytest.StashKey[list[Device]]()
#: This process's board feed (rig.reports.board.BoardFeed) and, on the controller, the live board drawn.
BOARD_KEY = pytest.StashKey["BoardFeed"]()
LIVE_KEY: pytest.StashKey[TerminalBoard] = pytest.StashKey()
#: The board's own stream to the terminal (a duplicate of pytest's descriptor, see _terminal).
LIVE_TERM_KEY: pytest.StashKey[Any] = pytest.StashKey()


@dataclass
class TestState:
    """What the ``dut`` fixture leaves on a test item for ``pytest_runtest_makereport`` to judge with."""

    dut: Dut | None = None
    #: (device, reason) of a lab fault while setting up: recorded as a lab-fault row.
    setup_fault: tuple[Device, str] | None = None
    #: /proc/interrupts before the test (per-CPU NMI deltas in the report).
    irq_before: InterruptCounts | None = None
    #: Shadow-box host callbacks per CPU counted before the test (Dut.callback_totals).
    callbacks_before: dict[int, int] | None = None
    #: The deploy failure (rig.device.shadowbox.DeployFailed) that failed this test's set-up.
    deploy_failed: DeployFailed | None = None


TEST_KEY = pytest.StashKey[TestState]()


def _state(item: pytest.Item) -> TestState:
    return item.stash.setdefault(TEST_KEY, TestState())


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
    g.addoption(
        "--rig-build-cache", default=None, metavar="DIR",
        help="keep controller builds by tree content here, across runs (default: the run's own builds/ folder, "
        "so a tree deployed on several devices with one kernel, or again by a later test, is built once; "
        "'none': build at every deploy)",
    )
    g.addoption(
        "--rig-force-deploy",
        action="store_true",
        default=False,
        help="go past a failed deploy preflight (recorded in the report as forced)",
    )
    g.addoption(
        "--rig-no-live", action="store_true", default=False,
        help="no live device board on the terminal (rig.reports.board)",
    )
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


#: A run id names a folder under the report dir (RIG_RUN_ID; rig regress uses its build labels).
RUN_ID_RE = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,99}$")


def _run_id(config: pytest.Config) -> str:
    winput = getattr(config, "workerinput", None)
    if winput and "rig_run_id" in winput:
        return str(winput["rig_run_id"])
    given = os.environ.get("RIG_RUN_ID")
    if given and not RUN_ID_RE.match(given):
        # It names a folder under the report dir: '../x' or '/abs' would write outside it.
        raise pytest.UsageError(
            f"RIG_RUN_ID={given[:80]!r} is not a run id: use letters, digits, '.', '_', '+' or '-' "
            "(at most 100, not starting with '.'), e.g. nightly-2026-12-01"
        )
    return config.stash.setdefault(
        RUN_ID_KEY, given or (time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2))
    )


def soak_minutes_of(config: pytest.Config) -> float:
    v = config.getoption("--rig-soak-minutes")
    return float(v if v is not None else config.getini("rig_soak_minutes"))


def _from_root(config: pytest.Config, value: str | Path) -> Path:
    """A path option as given, relative ones under the pytest root (as pytest's own path options)."""
    p = Path(value)
    return p if p.is_absolute() else Path(config.rootpath) / p


def report_dir(config: pytest.Config) -> Path:
    return _from_root(config, config.getoption("--rig-report-dir") or config.getini("rig_report_dir"))


def build_cache(config: pytest.Config, run: RunReport) -> Path | None:
    """Where this run keeps controller builds (rig.device.shadowbox: keyed by the staged tree's bytes,
    recipe and headers), or None for ``--rig-build-cache none``.

    Why on by default, inside the run's folder: twenty laptops on one kernel deploying one tree would
    otherwise build it twenty times on the controller, and every test that deploys again (new module
    parameters, after a recovery) once more; a cache that lives and dies with the run cannot serve a
    stale build to a later run. A shared folder (``--rig-build-cache DIR``) keeps builds across runs.
    """
    v = config.getoption("--rig-build-cache")
    if v is not None and str(v).lower() == "none":
        return None
    if v is None:
        return run.dir / "builds"
    return _from_root(config, v)


def selected_devices(config: pytest.Config) -> list[Device]:
    cached = config.stash.get(DEVICES_KEY, None)
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
    _run_id(config)  # a bad RIG_RUN_ID is a usage error here, before any device is touched
    config.stash[DEVICES_KEY] = list(devices)
    return list(devices)


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
def rig_run(request: pytest.FixtureRequest) -> Iterator[RunReport]:
    """The run's report writer (``reports/<run-id>/``), shared by every test of this process."""
    from rig.reports.report import RunReport

    config = request.config
    run = RunReport(report_dir(config), _run_id(config), build=config.getoption("--rig-build"))
    config.stash[RUN_KEY] = run
    yield run
    run.close()


@pytest.fixture(scope="session")
def _dut_pool(request: pytest.FixtureRequest, rig_run: RunReport) -> Iterator[dict[str, Dut]]:
    pool: dict[str, Dut] = request.config.stash[DUTS_KEY]
    from rig.reports.board import Sampler

    sampler = Sampler(_board(request.config), lambda: list(pool.values())).start()
    yield pool
    sampler.stop()
    for dut in pool.values():
        _board(request.config).state(dut.name, "done")
        try:
            dut.close()
        except Exception as exc:  # noqa: BLE001 - closing is best effort at the end of a run
            log.warning("closing %s: %s", dut.name, exc)
    pool.clear()


def _capabilities(dut: Dut) -> dict[str, str | None]:
    """capability -> None if offered, else the reason it is not."""
    caps: dict[str, str | None] = {}
    for name in NMI_SOURCE_NAMES:
        if name not in dut.device.nmi_sources:
            caps[name] = f"not in nmi_sources of {dut.device.source_file}"
            continue
        try:
            dut.nmi_source(name).check()
            caps[name] = None
        except Unavailable as exc:
            caps[name] = exc.reason
    caps["console"] = None if dut.device.console is not None else "no [console] in the inventory"
    caps["power"] = None if dut.device.power.kind != "manual" else "manual power: no remote power control"
    caps["lab"] = None if "lab" in dut.device.tags else "not a virtual-lab device"
    caps["vmx"] = None if dut.facts().vmx else "the CPU shows no 'vmx' flag (no VT-x)"
    return caps


@pytest.fixture
def dut(
    request: pytest.FixtureRequest, device: Device, _dut_pool: dict[str, Dut], rig_run: RunReport
) -> Iterator[Dut]:
    """The device, connected and watched. Recovered first if an earlier test left it crashed or hung.

    A device another run holds (rig.device.dut.DeviceBusy) fails every test of this run on it, at once and
    with the holder named, without retrying the lock per test: otherwise the tests after the other
    run ended would use the device, and one run's results would be split between two devices' states.
    """
    from rig.device.dut import DeviceBusy, Dut

    if device is None:
        pytest.skip("no devices selected")
    busy = request.config.stash.setdefault(BUSY_KEY, {})
    if device.name in busy:
        pytest.fail(busy[device.name], pytrace=False)
    d: Dut | None = _dut_pool.get(device.name)
    try:
        if d is not None:
            _check_place(d)
        if d is None:
            d = Dut(device, rig_run.dir / device.name, run_id=rig_run.run_id)
            d.build_cache = build_cache(request.config, rig_run)
            _board(request.config).state(device.name, "connecting")
            try:
                d.open()
            except DeviceBusy as exc:
                # Nothing is written for a device this run does not hold: its folder (if two runs
                # share a run id) and its report.json belong to the holder.
                busy[device.name] = f"DEVICE BUSY: {exc}; this run does not use {device.name}"
                _board(request.config).state(device.name, "busy", detail=str(exc))
                pytest.fail(busy[device.name], pytrace=False)
            _dut_pool[device.name] = d
            dev_report = rig_run.device(d.device)  # after open: a from_place console/outlet filled in
            d.on_event = dev_report.event  # the Dut's own steps (a reboot before a deploy) reach the timeline
            dev_report.set_identity(d)
            _report_last_words(d, dev_report)
            d.caps = _capabilities(d)
        elif d.lifecycle.state is DeviceState.FAILED:  # an earlier test left it crashed, hung or switched off
            _recover(request.config, d, device, rig_run)
        else:
            d.lifecycle.transition(DeviceState.WATCHED)  # a fresh watch: no verdict inherited
    except LabFault as exc:
        rig_run.device(device).event("lab-fault", str(exc))
        _board(request.config).state(device.name, "lab-fault", detail=str(exc))
        _state(request.node).setup_fault = (device, str(exc))  # a lab-fault row (pytest_runtest_makereport)
        pytest.fail(f"LAB FAULT on {device.name} (not a device failure): {exc}", pytrace=False)
    d.accepted_verdict = None
    d.judged_after_recovery = None
    d.verdict_note = ""
    state = _state(request.node)
    state.dut = d
    _check_requires(request, d)
    state.callbacks_before = d.callback_totals()
    with contextlib.suppress(RigError):
        state.irq_before = d.interrupts()
    stall = None
    if request.node.get_closest_marker("soak") is not None and device.monitor.panic_on_stall:
        from rig.device.stall import StallPanic

        stall = StallPanic(d.ssh, d.name, sudo=device.ssh.sudo, reboot_seconds=device.monitor.panic_reboot_seconds)
        rig_run.device(device).event("stall-panic", stall.apply())
        if "kernel/panic" in stall.saved and device.monitor.panic_reboot_seconds:
            d.expect_self_reboot(device.monitor.panic_reboot_seconds)
    yield d
    if stall is None:
        return
    if d.lifecycle.state is not DeviceState.FAILED:  # a hung or crashed device is rebooted: that resets them
        stall.restore()
    elif "kernel/panic" in stall.saved and d.verdict().kind is VerdictKind.CRASH:
        # The kernel reboots itself after this panic, warm: bring the device back now, while RAM still
        # holds the panic's pstore record (the next test may be far off, or there may be none: the record
        # would then be read only by the next run, or lost to a power cut).
        try:
            _recover(request.config, d, device, rig_run)
        except RigError as exc:  # the next test recovers it again, or reports the lab fault
            rig_run.device(device).event("recovery-failed", str(exc))
    d.expect_self_reboot(None)


def _recover(config: pytest.Config, d: Dut, device: Device, rig_run: RunReport) -> None:
    """Bring a crashed or hung device back (Dut.recover: self-reboot, warm reset or power cut), into the timeline."""
    _board(config).state(device.name, "recovering")
    d.lifecycle.transition(DeviceState.WATCHED)  # a recovery: self-reboot, warm reset or power cut, then watched
    how = d.last_recovery or {}
    took = how.get("seconds") or 0.0
    rig_run.device(device).event(
        "recovery", f"{how.get('why', 'power cycle')}: ready in {took:.1f} s", seconds=took,
        method=how.get("method"), power=how.get("power"),
    )
    _report_last_words(d, rig_run.device(device))


def _report_last_words(d: Dut, dev_report: DeviceReport) -> None:
    """The pstore harvests the Dut made since the last call (run start, recoveries) into report.json."""
    for h in d.take_pstore_harvests():
        dev_report.last_words(h)


def _check_place(d: Dut) -> None:
    """Before a test on a shared device: still this run's place, or acquired again (rig.transports.coordinator).

    A place lost and now held by another controller is a lab fault for this run, not DEVICE BUSY:
    this run did hold the device, and the tests it ran on it stand.
    """
    from rig.device.dut import DeviceBusy

    if d.place is not None:
        try:
            d.place.ensure()
        except DeviceBusy as exc:
            raise LabFault(f"the labgrid place was lost during the run and is taken: {exc}") from None


def _check_requires(request: pytest.FixtureRequest, d: Dut) -> None:
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
def rig_report(dut: Dut, rig_run: RunReport) -> DeviceReport:
    """This device's report page, to record evidence (NMI deliveries, callbacks, timeline events)."""
    return rig_run.device(dut.device)


@pytest.fixture
def nmi_sources(dut: Dut) -> dict[str, NmiSource]:
    """The NMI sources this device offers: name -> ready source (unavailable ones are left out)."""
    return {k: v for k, v in dut.nmi_sources().items() if not isinstance(v, Unavailable)}


@pytest.fixture
def shadowbox(request: pytest.FixtureRequest, dut: Dut, rig_run: RunReport) -> DeployResult:
    """Shadow-box deployed on the device and verified started (a fresh boot is used if it was loaded).

    A deploy that fails by name (rig.device.shadowbox.DeployFailed) fails the set-up without a traceback,
    with what happened and what to do; the device's report gets the failure as data. Later tests
    that need the same build are skipped with that reason: the device is not rebooted to fail again.
    """
    from rig.device.shadowbox import DeployFailed

    dev_report = rig_run.device(dut.device)
    _board(request.config).state(dut.name, "deploying")
    earlier = dut.deploy_failures.get(dut.deploy_key())
    if earlier is not None:
        pytest.skip(f"Shadow-box deploy failed earlier on {dut.name}: {earlier.summary()}")
    force = bool(request.config.getoption("--rig-force-deploy"))
    failed: DeployFailed | None = None
    try:
        result = dut.deploy_shadowbox(force=force)
    except LabFault as exc:
        dev_report.event("lab-fault", str(exc))
        _state(request.node).setup_fault = (dut.device, str(exc))
        pytest.fail(f"LAB FAULT on {dut.name} (not a device failure): {exc}", pytrace=False)
    except DeployFailed as exc:
        failed = exc
    except RigError as exc:
        dev_report.event("deploy-failed", str(exc))
        raise
    forced = failed.forced if failed is not None else result.forced
    if forced:
        checks = failed.checks if failed is not None else result.checks
        bad = ", ".join(c.name for c in checks if c.ok is False)
        dev_report.event("deploy-forced", f"went past failed preflight checks ({bad}): --rig-force-deploy")
    if failed is not None:  # outside the except block: the terminal shows this text, not a chained exception
        dev_report.set_deploy_failure(failed)
        _state(request.node).deploy_failed = failed
        pytest.fail(deploy_failure_text(dut.name, failed), pytrace=False)
    dev_report.set_deploy(result)
    _report_last_words(dut, dev_report)  # a deploy may have rebooted the device first
    return result


def deploy_failure_text(device: str, exc: DeployFailed, lines: int = 12) -> str:
    """What a failed deploy says in the terminal: what happened, what to do, the tool's/kernel's own last lines."""
    text = f"DEPLOY FAILED on {device}: {exc.summary()}"
    if exc.forced:
        text += "\n(forced past a failed preflight: --rig-force-deploy)"
    tail = exc.output_tail(lines)
    if tail:
        text += "\n--- build output (last lines) ---\n" + "\n".join(tail)
    if exc.kernel_lines:
        text += "\n--- kernel lines since insmod (last lines) ---\n" + "\n".join(exc.kernel_lines[-lines:])
    return text


# ---------------------------------------------------------------------------------------------
# the live board (rig.reports.board): every process feeds <run>/board.jsonl, the controller draws it


def _board(config: pytest.Config) -> BoardFeed:
    """This process's feed of the run's board file (created on first use)."""
    feed = config.stash.get(BOARD_KEY, None)
    if feed is None:
        from rig.reports.board import BOARD_FILE, BoardFeed

        feed = config.stash[BOARD_KEY] = BoardFeed(report_dir(config) / _run_id(config) / BOARD_FILE)
    return feed


def pytest_runtest_call(item: pytest.Item) -> None:
    """The board's "testing X" / "soaking 7/20 min" (a device-parametrized test is about to run)."""
    callspec = getattr(item, "callspec", None)
    device = callspec.params.get("device") if callspec is not None else None
    if not isinstance(device, Device):
        return
    if item.get_closest_marker("soak") is not None:
        _board(item.config).state(
            device.name, "soaking", test=item.name, soak_seconds=soak_minutes_of(item.config) * 60
        )
    else:
        _board(item.config).state(device.name, "testing", test=getattr(item, "originalname", item.name))


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """On the controller, on a terminal: draw the board above pytest's own lines until the end."""
    config = session.config
    if _is_worker(config) or config.getoption("--rig-no-live"):
        return
    from rig.reports.board import BOARD_FILE, LiveLines, TerminalBoard, wanted

    tr = config.pluginmanager.get_plugin("terminalreporter")
    tw = getattr(tr, "_tw", None)
    original = getattr(tw, "_file", None)  # pytest's TerminalWriter keeps its stream here
    if original is None or not wanted(original, disabled=False):
        return
    from rich.console import Console

    def attach(live: Any) -> None:
        tw._file = LiveLines(live.console, original)  # type: ignore[union-attr]

    def detach() -> None:
        lines = tw._file  # type: ignore[union-attr]
        if isinstance(lines, LiveLines):
            lines.flush_partial()
        tw._file = original  # type: ignore[union-attr]

    path = report_dir(config) / _run_id(config) / BOARD_FILE
    console = Console(file=_terminal(config, original))
    board = TerminalBoard(path, console, f"rig: run {_run_id(config)}", attach, detach)
    config.stash[LIVE_KEY] = board.start()


def _terminal(config: pytest.Config, stream: Any) -> Any:
    """A stream to the terminal that stays one while tests run.

    Why: pytest's fd capture points descriptor 1 at a temporary file for the whole of each test, so
    a board drawn through pytest's own stream froze during a test -- a 20-minute soak included -- and
    its frames went into the test's captured output. A duplicate of the terminal's descriptor, taken
    here (capture is suspended between tests), reaches the terminal throughout. A stream without a
    descriptor (wrapped by another plugin) is used as it is.
    """
    try:
        fd = os.dup(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return stream
    term = open(fd, "w", encoding=getattr(stream, "encoding", None) or "utf-8", errors="replace")  # noqa: SIM115
    config.stash[LIVE_TERM_KEY] = term
    return term


def _stop_live(config: pytest.Config) -> None:
    board = config.stash.get(LIVE_KEY, None)
    if board is not None:
        del config.stash[LIVE_KEY]
        board.stop()
    term = config.stash.get(LIVE_TERM_KEY, None)
    if term is not None:
        del config.stash[LIVE_TERM_KEY]
        with contextlib.suppress(OSError):
            term.close()


def pytest_unconfigure(config: pytest.Config) -> None:
    _stop_live(config)  # a run that ended before sessionfinish (usage error, ^C in collection)


# ---------------------------------------------------------------------------------------------
# verdicts


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _judge(item, call, report)
    return report


def _judge(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
    """The device's verdict decides the test's outcome; the row goes into the device's report."""
    d = _state(item).dut
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
    # device told apart (rig.device.dut.Dut.settled_verdict).
    verdict = d.settled_verdict()
    if d.verdict_note and d.verdict_note not in verdict.reason:
        verdict = replace(verdict, reason="; ".join(filter(None, [verdict.reason, d.verdict_note])))
    lab_error = call.excinfo if call.excinfo is not None and call.excinfo.errisinstance(LabFault) else None
    if lab_error is not None and verdict.kind not in (VerdictKind.CRASH, VerdictKind.POWERED_OFF):
        from rig.device.monitor import Verdict

        verdict = Verdict(VerdictKind.LAB_FAULT, None, str(lab_error.value))
    place_lost = d.place.lost() if d.place is not None else None
    if place_lost is not None and verdict.kind is not VerdictKind.CRASH:
        from rig.device.monitor import Verdict

        verdict = Verdict(VerdictKind.LAB_FAULT, None, place_lost)  # the coordinator's fault, not the laptop's
    accepted = d.accepted_verdict is not None and d.accepted_verdict.kind is verdict.kind
    if accepted:
        pass  # the test provoked this verdict on purpose and checked it
    elif verdict.kind is VerdictKind.LAB_FAULT:
        # Whatever the test body said: the lab failed, not the laptop. Say so first.
        report.outcome = "failed"
        report.longrepr = f"LAB FAULT on {d.name} (not a device failure): {verdict.reason}"
    elif verdict.kind is VerdictKind.POWERED_OFF:
        # Someone or something switched the device off: not its failure, but it must be powered on.
        d.lifecycle.fail(verdict.text)
        report.outcome = "failed"
        report.longrepr = (
            f"POWERED OFF: {d.name} was switched off during the test (not a device failure): {verdict.reason}"
        )
    elif not verdict.ok:
        d.lifecycle.fail(verdict.text)
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
    before_cb = _state(item).callbacks_before
    callbacks = None
    if before_cb is not None and d.device.console is not None:
        now_cb = d.callback_totals()
        callbacks = {cpu: n - before_cb.get(cpu, 0) for cpu, n in now_cb.items() if n > before_cb.get(cpu, 0)}
    _record(item, d.device, report, verdict, after, callbacks=callbacks)


def _record_setup_error(
    item: pytest.Item, d: Dut | None, report: pytest.TestReport, call: pytest.CallInfo[None]
) -> None:
    """A test whose set-up failed (a deploy that failed, a lab fault while connecting) gets its row too.

    Why: the row is where a lab engineer looks. Without it a build that Shadow-box refused to start
    on ("VMX not support") showed a device report with no test in it. The outcome is ``failed`` and
    the failure text says it was the set-up; a lab fault is a ``lab-fault`` verdict, never the
    device's failure. A device this run does not hold (DEVICE BUSY) gets nothing: its report
    belongs to the holder.
    """
    from rig.device.monitor import Verdict

    lab = _state(item).setup_fault
    failed = _state(item).deploy_failed
    if lab is not None:
        device, reason = lab
        verdict = Verdict(VerdictKind.LAB_FAULT, None, reason)
    elif failed is not None and d is not None:
        device, verdict = d.device, Verdict(VerdictKind.DEPLOY_FAILED, failed.reason, failed.summary())
        item.user_properties.extend(
            [("rig_device", d.name), ("rig_verdict", verdict.text), ("rig_deploy", failed.summary())]
        )
        _record(item, device, report, verdict, after=None, failure=f"error in set-up: {str(report.longrepr)}")
        return
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
    verdict: Verdict,
    after: InterruptCounts | None,
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
    d = _state(item).dut
    if d is not None:
        stats = d.console_stats()
        if stats is not None:
            run.device(device).console_stats(stats)
        run.device(device).liveness(d.monitor.margin())
    _board(item.config).verdict(device.name, label, report.outcome, getattr(verdict, "text", str(verdict)))
    run.device(device).test_result(
        nodeid=item.nodeid,
        name=label,
        outcome=report.outcome,
        duration=report.duration,
        verdict=verdict,
        irq_before=_state(item).irq_before,
        irq_after=after,
        host_callbacks=callbacks,
        longrepr=longrepr,
    )
    if d is not None:
        # Recoveries the test made itself (a redeploy reboots, Dut.verdict_after_last_words), after
        # its row: a look at pstore made during the test is about this test, never the one before.
        _report_last_words(d, run.device(device))


def _wait_excerpt(d: Dut, verdict: Verdict, lines: int = 60) -> str:
    """Keep reading for the crash tail (the whole oops), then return the last console lines."""
    if d.device.console is None:
        return "(no console)"
    if verdict.kind is VerdictKind.CRASH:
        end = verdict.at + d.device.monitor.crash_tail_seconds
        while time.time() < end:
            time.sleep(0.2)
    return "\n".join(d.console_lines(lines))


# ---------------------------------------------------------------------------------------------
# end of run: the matrix summary, once, on the controller


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from rig.reports.report import write_summary

    config = session.config
    _stop_live(config)  # before pytest's summary lines
    run_dir = report_dir(config) / _run_id(config)
    if not _is_worker(config) and run_dir.is_dir() and any(run_dir.glob("*/report.json")):
        write_summary(run_dir)
        from rig.reports.html import render_run

        try:
            render_run(run_dir)
        except Exception as exc:  # noqa: BLE001 - pages are derived; never fail a run on them
            log.warning("HTML report for %s not written: %s (run 'rig report html %s')", run_dir, exc, run_dir)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    from rig.reports.results import load_run

    run_dir = report_dir(config) / _run_id(config)
    if _is_worker(config) or not (run_dir / "summary.json").exists():
        return
    summary = load_run(run_dir).summary
    if summary is None:
        return  # an unreadable summary.json: load_run names it on the HTML page
    tr = terminalreporter
    tr.section("rig: device verdicts")
    for dev in summary["devices"]:
        verdicts = [c["verdict"] for c in dev["tests"].values()]
        bad = [f"{name}: {c['verdict']}" for name, c in dev["tests"].items() if c["outcome"] == "failed"]
        state = "PASS" if not bad else "FAIL"
        if not verdicts:
            state, bad = "NONE", ["no test ran on it"]  # not "PASS": nothing was shown to work
        tr.write_line(f"{dev['device']:<20} {state}  {len(verdicts)} tests  " + ("; ".join(bad) if bad else "all ok"))
        dep = dev.get("deploy") or {}
        if dep.get("ok") is False:
            tr.write_line(f"{'':<20} deploy-failed({dep.get('reason')}): {dep.get('detail')}")
            if dep.get("hint"):
                tr.write_line(f"{'':<20} do: {dep['hint']}")
            for line in dep.get("last_lines", []):
                tr.write_line(f"{'':<20} | {line}")
    tr.write_line(f"reports: {run_dir}/index.html")
