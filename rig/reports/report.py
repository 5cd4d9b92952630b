"""Run reports, written as the run goes.

Layout: ``reports/<run-id>/run.json``, ``reports/<run-id>/<device>/report.json`` (schema below) next
to that device's ``console.raw`` / ``console.log``, and ``reports/<run-id>/summary.json`` (devices by
tests, each cell a verdict) written when the run ends.

Why incremental: a run killed at 3 a.m. must leave a readable report. Every change rewrites the
device's ``report.json`` atomically (temp file + rename) with ``"status": "incomplete"``; only a
clean end marks it ``"complete"``.

Secrets never reach a report: the device section is built from an allow-list of inventory fields.

report.json, schema version 1::

    {"schema": "shadowbox-rig/device-report", "version": 1, "status": "incomplete|complete",
     "run_id": str, "rig_version": str, "build": str|null (``--rig-build``, e.g. a git ref),
     "device": {"name", "tags", "description", "ssh": "user@host:port", "console": url|null, "power": kind,
                "power_backend": str (the back end in its own words, e.g. "pdu: PDU apc at H:P outlet 1, ...")},
     "identity": {"kernel", "cmdline", "cpu_model", "microcode", "cpus"},
     "deploy": {"ok": true, "forced", "recipe", "checks", "result_code", "markers", "kernel_lines", "notes", ...}
             | {"ok": false, "reason", "detail", "hint", "forced", "checks", "failed_checks",
                "build_output_tail" (last 40 lines), "kernel_lines" (since the first insmod)} | null,
     "tests": [{"nodeid", "name", "outcome", "duration", "verdict": {...}, "nmi": {...}|null, "failure": str,
                "host_nmi": {...}|null (see host_attribution)}],
     "nmi_deliveries": [{"test", "source", "raised", "row", "cpus", "per_cpu", "missing_cpus", "ok", ...}],
     "shadowbox_callbacks": {"<cpu>": count},
     "console_transport": {"transport": "serial"|"netconsole", ...counts; netconsole: "records", "lost",
                           "gaps": [{"after", "before", "lost", "text"}], ...} | null,
     "liveness": {"heartbeat_interval", "heartbeats", "longest_heartbeat_gap", "hang_needs_silence",
                  "slowest_probe_answer", "silence_probe_deadline"} | null   (the margin to a false hang),
     "last_words": [{"when", "at", "backend", "error", "summary", "records": [{"files", "type", "backend",
                     "reason", "time", "crash", "events", "text"}]}]   (pstore, see rig.device.pstore),
     "timeline": [{"t": unix time, "kind": str, "text": str, ...}]}

Added keys (``console_transport``, ``last_words``, ``liveness``) are optional for readers: version stays 1.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from rig import __version__
from rig.device.pstore import crash_after_hang, hang_amended, nothing_after_hang, speaks_of_hang
from rig.errors import ConfigError
from rig.files import write_atomic
from rig.inventory import Device

SCHEMA_VERSION = 1
#: A heartbeat gap or probe answer at this share of what a hang needs is a near miss (report timeline).
NEAR_MISS = 0.75


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON so a reader (or a crash) never sees half a file."""
    write_atomic(path, json.dumps(data, indent=1, default=str))


def public_device_fields(dev: Device) -> dict[str, Any]:
    """The inventory fields a report may show: an allow-list, so no secret reference leaks."""
    return {
        "name": dev.name,
        "tags": list(dev.tags),
        "description": dev.description,
        "ssh": f"{dev.ssh.user}@{dev.ssh.host}:{dev.ssh.port}",
        "console": dev.console.where if dev.console else None,
        "power": dev.power.kind,
        "nmi_sources": list(dev.nmi_sources),
        "shadowbox_recipe": dev.shadowbox.recipe,
    }


#: A test that delivered fewer NMIs than this is not a soak: no host NMI there is expected, not a warning.
HOST_CLAIM_MIN_NMIS = 100


def host_attribution(
    delivered: dict[int, int] | None, callbacks: dict[int, int] | None
) -> dict[str, Any] | None:
    """Per CPU: NMIs delivered (``/proc/interrupts`` delta), Shadow-box host callbacks, the share that hit the host.

    Why: the original bug lived in the host (an NMI arriving while a CPU ran in VMX root). A soak
    whose NMIs all reached Linux never exercised that path, so its pass proves little; the report
    says so (``warning``, from HOST_CLAIM_MIN_NMIS NMIs on: a delivery check of a few NMIs is not
    expected to hit a host that runs a few % of the time). ``delivered`` is None when the device
    could not be read after the test (a hang): the callbacks are still shown, the share is not.
    None when the console was not watched.
    """
    if callbacks is None:
        return None
    cpus = sorted(set(delivered or {}) | set(callbacks))
    per_cpu = []
    for cpu in cpus:
        n = None if delivered is None else delivered.get(cpu, 0)
        cb = callbacks.get(cpu, 0)
        share = None if not n else round(min(1.0, cb / n), 4)
        per_cpu.append({"cpu": cpu, "delivered": n, "host_callbacks": cb, "host_share": share})
    total_delivered = None if delivered is None else sum(delivered.values())
    total_cb = sum(callbacks.values())
    out: dict[str, Any] = {
        "per_cpu": per_cpu,
        "delivered": total_delivered,
        "host_callbacks": total_cb,
        "host_share": None if not total_delivered else round(min(1.0, total_cb / total_delivered), 4),
        "warning": None,
    }
    if total_delivered is not None and total_delivered >= HOST_CLAIM_MIN_NMIS and total_cb == 0:
        out["warning"] = (
            f"none of the {total_delivered} NMIs delivered hit the host (no Shadow-box callback line): "
            "the host-side NMI path was never exercised, so a pass proves little (is the debug build's "
            "callback logging on?)"
        )
    return out


class DeviceReport:
    """One device's page of the run; every method persists immediately."""

    def __init__(self, run: RunReport, device: Device) -> None:
        self.run = run
        self.dir = run.dir / device.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {
            "schema": "shadowbox-rig/device-report",
            "version": SCHEMA_VERSION,
            "status": "incomplete",
            "run_id": run.run_id,
            "rig_version": __version__,
            "build": run.build,
            "device": public_device_fields(device),
            "identity": {},
            "deploy": None,
            "tests": [],
            "nmi_deliveries": [],
            "shadowbox_callbacks": {},
            "console_transport": None,
            "liveness": None,
            "last_words": [],
            "timeline": [],
        }
        self._gaps_reported = 0
        self._near_misses: set[str] = set()
        self.flush()

    @property
    def path(self) -> Path:
        return self.dir / "report.json"

    def flush(self) -> None:
        write_json_atomic(self.path, self.data)

    def event(self, kind: str, text: str, **extra: Any) -> None:
        self.data["timeline"].append({"t": time.time(), "kind": kind, "text": text, **extra})
        self.flush()

    def set_identity(self, dut: Any) -> None:
        """Kernel, command line, CPU model and microcode: the facts the Dut read after its boot (rig.device.facts);
        how it is powered."""
        # The back end in its own words (PDU model, address, outlet; a BMC's address): never a secret.
        self.data["device"]["power_backend"] = dut.power.describe()
        try:
            facts = dut.facts()
        except Exception as exc:  # noqa: BLE001 - identity is nice to have; the run goes on
            self.event("identity-failed", str(exc))
            return
        self.data["identity"] = facts.identity()
        self.event("connected", f"kernel {facts.kernel}")

    def nmi_delivery(self, test: str, delivery: Any) -> None:
        """One source's raise-and-count, with per-CPU deltas (the report's NMI evidence)."""
        self.data["nmi_deliveries"].append({"test": test, **delivery.to_json()})
        self.event("nmi", delivery.summary())

    def shadowbox_callbacks(self, per_cpu: dict[int, int]) -> None:
        """Shadow-box's host-side ``VM [n] INT NMI callback`` lines, counted per CPU (cumulative)."""
        total = self.data["shadowbox_callbacks"]
        for cpu, n in per_cpu.items():
            total[str(cpu)] = total.get(str(cpu), 0) + n
        self.flush()

    def console_stats(self, stats: dict[str, Any]) -> None:
        """What the console transport delivered; every netconsole sequence gap once on the timeline.

        Why: a report must never claim to hold the whole log when records were lost on the way.
        """
        self.data["console_transport"] = stats
        gaps = stats.get("gaps") or []
        total = int(stats.get("gaps_total") or 0)
        new = total - self._gaps_reported
        if new > 0:
            for g in gaps[-new:] if new <= len(gaps) else gaps:
                self.data["timeline"].append({"t": g["at"], "kind": "console-loss", "text": f"netconsole: {g['text']}"})
            if new > len(gaps):
                self.data["timeline"].append({"t": time.time(), "kind": "console-loss",
                                              "text": f"netconsole: {new - len(gaps)} more gaps not listed"})
            self._gaps_reported = total
        self.flush()

    def liveness(self, margin: dict[str, float | int]) -> None:
        """The monitor's margin to a false hang (:meth:`rig.device.monitor.HangMonitor.margin`), and a
        near miss on the timeline once: a heartbeat gap or a probe answer past NEAR_MISS of what a hang needs.

        Why: a lab engineer sets H per device; the report says when a device's H is too tight for it
        before a stall of a healthy laptop is reported as a hang.
        """
        self.data["liveness"] = margin
        h, gap, needs = margin["heartbeat_interval"], margin["longest_heartbeat_gap"], margin["hang_needs_silence"]
        answer, deadline = margin["slowest_probe_answer"], margin["silence_probe_deadline"]
        notes = []
        if gap >= NEAR_MISS * needs and "heartbeat" not in self._near_misses:
            self._near_misses.add("heartbeat")
            notes.append(f"near miss: a heartbeat came {gap:.1f} s after the one before, and {needs:g} s of silence "
                         f"with SSH dead is a hang; if the device is healthy, raise [monitor] heartbeat_interval "
                         f"(now {h:g} s)")
        if answer >= NEAR_MISS * deadline and "probe" not in self._near_misses:
            self._near_misses.add("probe")
            notes.append(f"near miss: an SSH probe took {answer:.2f} s to answer, and a probe unanswered for "
                         f"{deadline:g} s during a heartbeat silence is a hang")
        for text in notes:
            self.data["timeline"].append({"t": time.time(), "kind": "near-miss", "text": text})
        self.flush()

    def last_words(self, harvest: Any) -> None:
        """A look at the device's pstore (rig.device.pstore.PstoreHarvest): "last words before the reboot".

        A hang judged by the test before this recovery whose pstore holds a crash becomes that crash,
        with the pstore text as evidence; an empty pstore after a hang is said in the timeline.
        """
        self.data["last_words"].append(harvest.to_json())
        self.event("last-words", harvest.summary())
        last = self.data["tests"][-1] if self.data["tests"] else None
        hang_at = float(last["verdict"].get("at") or 0) if last is not None else 0.0
        if last is None or last["verdict"].get("kind") != "hang" or not speaks_of_hang(harvest, hang_at):
            self.flush()
            return
        found = crash_after_hang(harvest, hang_at)
        if found is None:
            self.event("last-words", f"after the hang in {last['name']}: " + nothing_after_hang(harvest))
            return
        rec, ev = found
        v = last["verdict"]
        v.update(
            verdict=f"crash({ev.kind.value})",
            kind="crash",
            detail=ev.kind.value,
            reason=hang_amended(rec, ev, v.get("reason", "")),
            event={"kind": ev.kind.value, "line": ev.line_no, "text": ev.text, "source": "pstore"},
        )
        self.event("verdict-amended", f"{last['name']}: hang -> crash({ev.kind.value}) from pstore")


    def set_deploy(self, result: Any) -> None:
        self.data["deploy"] = result.to_json()
        self.event("deploy", f"{result.recipe} started, result code {result.result_code}")

    def set_deploy_failure(self, exc: Any) -> None:
        """A deploy that failed by name (rig.device.shadowbox.DeployFailed): reason, checks, build tail,
        kernel lines."""
        self.data["deploy"] = exc.to_json()
        self.event("deploy-failed", exc.summary(), reason=exc.reason)

    def test_result(
        self,
        *,
        nodeid: str,
        name: str,
        outcome: str,
        duration: float,
        verdict: Any,
        irq_before: Any = None,
        irq_after: Any = None,
        host_callbacks: dict[int, int] | None = None,
        longrepr: str = "",
    ) -> None:
        nmi = None
        delivered = None
        if irq_before is not None and irq_after is not None:
            delivered = dict(zip(irq_after.cpus, irq_after.delta(irq_before, "NMI"), strict=True))
            nmi = {
                "cpus": list(irq_after.cpus),
                "NMI": {"before": list(irq_before.row("NMI")), "after": list(irq_after.row("NMI"))},
                "PMI": {"before": list(irq_before.row("PMI")), "after": list(irq_after.row("PMI"))},
            }
        self.data["tests"].append(
            {
                "nodeid": nodeid,
                "name": name,
                "outcome": outcome,
                "duration": round(duration, 3),
                "verdict": verdict.to_json(),
                "nmi": nmi,
                "host_nmi": host_attribution(delivered, host_callbacks),
                "failure": longrepr[-4000:],
            }
        )
        self.event("test", f"{name}: {outcome} ({verdict.text})")

    def close(self) -> None:
        self.data["status"] = "complete"
        self.flush()


class RunReport:
    """A run's folder; one :class:`DeviceReport` per device driven by this process."""

    def __init__(self, root: Path, run_id: str, build: str | None = None) -> None:
        self.run_id = run_id
        #: The label of the Shadow-box build under test (rig regress / bisect), if the run has one.
        self.build = build
        self.dir = root / run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self._devices: dict[str, DeviceReport] = {}
        run_json = self.dir / "run.json"
        if not run_json.exists():
            write_json_atomic(
                run_json,
                {
                    "run_id": run_id,
                    "build": build,
                    "started": time.time(),
                    "controller": socket.gethostname(),
                    "rig_version": __version__,
                    "status": "incomplete",
                },
            )

    def device(self, device: Device) -> DeviceReport:
        rep = self._devices.get(device.name)
        if rep is None:
            rep = self._devices[device.name] = DeviceReport(self, device)
        return rep

    def close(self) -> None:
        for rep in self._devices.values():
            rep.close()


def _deploy_digest(deploy: Any) -> dict[str, Any] | None:
    """The deploy as summary.json keeps it: outcome, and for a failure what happened, what to do, last lines."""
    if not isinstance(deploy, dict):
        return None
    if deploy.get("ok", True):
        return {"ok": True, "recipe": deploy.get("recipe"), "forced": deploy.get("forced", False)}
    last = (deploy.get("build_output_tail") or [])[-3:] + (deploy.get("kernel_lines") or [])[-3:]
    return {k: deploy.get(k) for k in ("ok", "recipe", "reason", "detail", "hint", "forced")} | {"last_lines": last}


def write_summary(run_dir: Path) -> dict[str, Any]:
    """Gather every device's report.json into summary.json (devices x tests -> verdict)."""
    from rig.reports.results import load_run  # the one reader of run folders

    try:
        view = load_run(run_dir)
    except ConfigError:
        view = None  # nothing written yet: an empty summary
    devices: list[dict[str, Any]] = []
    for dev in view.devices if view is not None else []:
        if dev.from_summary or dev.problem:
            continue  # a row of an earlier summary.json, or a report.json that cannot be read: not summed up
        data = dev.data
        cells = {t["name"]: {"outcome": t["outcome"], "verdict": t["verdict"]["verdict"]} for t in data["tests"]}
        devices.append(
            {
                "device": data["device"]["name"],
                "build": data.get("build"),
                "status": data["status"],
                "identity": data.get("identity", {}),
                "tests": cells,
                "deploy": _deploy_digest(data.get("deploy")),
            }
        )
    summary = {
        "schema": "shadowbox-rig/run-summary",
        "version": SCHEMA_VERSION,
        "run_id": run_dir.name,
        "build": next((d["build"] for d in devices if d["build"]), None),
        "finished": time.time(),
        "devices": devices,
    }
    write_json_atomic(run_dir / "summary.json", summary)
    run_json = run_dir / "run.json"
    if run_json.exists():
        from rig.reports.results import read_json

        meta = read_json(run_json)
        meta.update(status="complete", finished=summary["finished"])
        write_json_atomic(run_json, meta)
    return summary
