"""NMI sources and proof of delivery.

Each source has one job, ``raise_``; delivery is proved the same way for all of them, from the
per-CPU deltas of the ``NMI:`` (and, for perf, ``PMI:``) rows of ``/proc/interrupts`` read over
SSH before and after. That shared proof is what makes "every source reaches every CPU" a fact in
the report rather than a hope.

A source the device cannot offer (no PMU, no BMC, a BMC that refuses diag, no QEMU) says so by
raising :class:`rig.errors.Unavailable` with the reason from :meth:`NmiSource.check`; suites skip
it with that reason, they never fail on it.

Which CPUs should see an NMI:
- ``ipmi`` / ``qmp``: the NMI arrives on LINT1 (external NMI). Linux unmasks it on every CPU only
  when booted with ``apic_extnmi=all``; otherwise only on the boot CPU.
- ``sysrq``: ``echo l > /proc/sysrq-trigger`` sends an NMI to every CPU but the writer, so the rig
  writes it from two different CPUs (``taskset``) and every CPU is covered.
- ``perf``: PMU overflow NMIs on every CPU where ``perf record -a`` samples.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rig.errors import DeviceError, Unavailable
from rig.protocols import CommandRunner


class DiagBmc(Protocol):
    """A BMC that can pulse diag (rig.transports.bmc.BmcClient)."""

    def diag(self) -> None: ...


class NmiInjector(Protocol):
    """A hypervisor that can inject an NMI (rig.transports.qmp.QmpClient)."""

    def inject_nmi(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# /proc/interrupts


@dataclass(frozen=True)
class InterruptCounts:
    """One reading of ``/proc/interrupts``: per-CPU counts of the named rows (``NMI``, ``PMI``, ...)."""

    cpus: tuple[int, ...]
    rows: dict[str, tuple[int, ...]]
    at: float = 0.0

    def row(self, name: str) -> tuple[int, ...]:
        return self.rows.get(name, tuple(0 for _ in self.cpus))

    def delta(self, before: InterruptCounts, name: str = "NMI") -> tuple[int, ...]:
        """Per-CPU increase of ``name`` since ``before`` (CPUs matched by number)."""
        prev = dict(zip(before.cpus, before.row(name), strict=True))
        now = dict(zip(self.cpus, self.row(name), strict=True))
        return tuple(now[c] - prev.get(c, 0) for c in self.cpus)

    def to_json(self) -> dict[str, object]:
        return {"cpus": list(self.cpus), "rows": {k: list(v) for k, v in self.rows.items()}, "at": self.at}


_CPU_HEADER = re.compile(r"CPU(\d+)")


def parse_proc_interrupts(text: str, rows: Sequence[str] = ("NMI", "PMI", "LOC")) -> InterruptCounts:
    """Parse the per-CPU columns of the wanted rows of ``/proc/interrupts``.

    The header names the online CPUs (``CPU0 CPU1 ...``); each row has one count per CPU after its
    label. Offline CPUs are simply absent, which is why CPUs are kept by number, not position.
    """
    lines = text.splitlines()
    if not lines or "CPU" not in lines[0]:
        raise DeviceError("/proc/interrupts: no CPU header line; is this really /proc/interrupts?")
    cpus = tuple(int(m) for m in _CPU_HEADER.findall(lines[0]))
    wanted = set(rows)
    found: dict[str, tuple[int, ...]] = {}
    for line in lines[1:]:
        label, _, rest = line.strip().partition(":")
        if label not in wanted:
            continue
        fields = rest.split()
        counts = []
        for tok in fields[: len(cpus)]:
            if not tok.isdigit():
                break
            counts.append(int(tok))
        if len(counts) == len(cpus):
            found[label] = tuple(counts)
    return InterruptCounts(cpus=cpus, rows=found, at=time.time())


def read_interrupts(runner: CommandRunner, timeout: float = 10.0) -> InterruptCounts:
    res = runner.run("cat /proc/interrupts", timeout=timeout)
    if res.exit_status != 0:
        raise DeviceError(f"cat /proc/interrupts failed ({res.exit_status}): {res.err.strip()[-200:]}")
    return parse_proc_interrupts(res.out)


# ---------------------------------------------------------------------------------------------
# Delivery


@dataclass
class Delivery:
    """What one ``raise`` did: raised vs counted, per CPU, and which CPUs it should have reached."""

    source: str
    raised: int
    before: InterruptCounts
    after: InterruptCounts
    expected_cpus: tuple[int, ...]
    row: str = "NMI"
    note: str = ""
    duration: float = 0.0
    per_cpu: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.per_cpu = self.after.delta(self.before, self.row)

    @property
    def missing_cpus(self) -> list[int]:
        got = dict(zip(self.after.cpus, self.per_cpu, strict=True))
        return [c for c in self.expected_cpus if got.get(c, 0) <= 0]

    @property
    def ok(self) -> bool:
        return self.raised > 0 and not self.missing_cpus

    @property
    def counted(self) -> int:
        return sum(self.per_cpu)

    def summary(self) -> str:
        cells = " ".join(f"cpu{c}:+{d}" for c, d in zip(self.after.cpus, self.per_cpu, strict=True))
        state = "ok" if self.ok else f"MISSING on cpu {', '.join(map(str, self.missing_cpus))}"
        return f"{self.source}: raised {self.raised}, {self.row} {cells} -> {state}{self.note}"

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "raised": self.raised,
            "row": self.row,
            "cpus": list(self.after.cpus),
            "per_cpu": list(self.per_cpu),
            "expected_cpus": list(self.expected_cpus),
            "missing_cpus": self.missing_cpus,
            "ok": self.ok,
            "note": self.note,
            "duration": round(self.duration, 3),
            "before": self.before.to_json(),
            "after": self.after.to_json(),
        }


# ---------------------------------------------------------------------------------------------
# Sources


class NmiSource:
    """Base of every source: ``check`` says whether it can work here, ``raise_`` raises NMIs."""

    name: str = "?"
    row: str = "NMI"

    def __init__(self, runner: CommandRunner) -> None:
        self.runner = runner

    def check(self) -> None:
        """Raise :class:`Unavailable` with the reason when this device cannot offer the source."""

    def raise_(self, count: int = 1, interval: float = 0.0) -> int:
        """Raise ``count`` NMIs (or rounds); return how many were really raised."""
        raise NotImplementedError

    def expected_cpus(self, cpus: tuple[int, ...], cmdline: str) -> tuple[int, ...]:
        return cpus

    def deliver(self, count: int = 1, interval: float = 0.0, settle: float = 0.5) -> Delivery:
        """Raise and prove: read counts, raise, wait ``settle`` s, read again, compare per CPU."""
        self.check()
        cmdline = self.runner.run("cat /proc/cmdline", timeout=10).out
        before = read_interrupts(self.runner)
        t0 = time.monotonic()
        raised = self.raise_(count, interval)
        duration = time.monotonic() - t0
        time.sleep(settle)
        after = read_interrupts(self.runner)
        expected = self.expected_cpus(after.cpus, cmdline)
        note = ""
        if len(expected) < len(after.cpus):
            note = f" (expected only cpu {', '.join(map(str, expected))}: {self._why_partial(cmdline)})"
        return Delivery(
            source=self.name,
            raised=raised,
            before=before,
            after=after,
            expected_cpus=expected,
            row=self.row,
            note=note,
            duration=duration,
        )

    def _why_partial(self, cmdline: str) -> str:
        return "partial delivery by design"


def _external_nmi_cpus(cpus: tuple[int, ...], cmdline: str) -> tuple[int, ...]:
    """External (LINT1) NMIs reach every CPU only with apic_extnmi=all; else only the boot CPU."""
    if "apic_extnmi=all" in cmdline.split():
        return cpus
    if "apic_extnmi=none" in cmdline.split():
        return ()
    return cpus[:1]


class _ExternalNmi(NmiSource):
    def expected_cpus(self, cpus: tuple[int, ...], cmdline: str) -> tuple[int, ...]:
        return _external_nmi_cpus(cpus, cmdline)

    def _why_partial(self, cmdline: str) -> str:
        return "boot without apic_extnmi=all masks LINT1 NMIs on all but the boot CPU"


class IpmiDiagNmi(_ExternalNmi):
    """``chassis power diag`` through the device's BMC (IPMI chassis control 4)."""

    name = "ipmi"

    def __init__(self, runner: CommandRunner, bmc: DiagBmc | None, reason: str = "") -> None:
        super().__init__(runner)
        self.bmc = bmc
        self.reason = reason or "the device has no BMC ([power] kind is not 'ipmi')"

    def check(self) -> None:
        if self.bmc is None:
            raise Unavailable(self.name, self.reason)

    def raise_(self, count: int = 1, interval: float = 0.0) -> int:
        self.check()
        assert self.bmc is not None
        for i in range(count):
            self.bmc.diag()  # raises Unavailable if the BMC refuses diag (0xCC), LabFault if unreachable
            if interval and i + 1 < count:
                time.sleep(interval)
        return count


class QmpNmi(_ExternalNmi):
    """QEMU ``inject-nmi`` over QMP (virtual-lab devices only)."""

    name = "qmp"

    def __init__(self, runner: CommandRunner, qmp: NmiInjector | None) -> None:
        super().__init__(runner)
        self.qmp = qmp

    def check(self) -> None:
        if self.qmp is None:
            raise Unavailable(self.name, "not a virtual-lab device: no QMP socket in the inventory")

    def raise_(self, count: int = 1, interval: float = 0.0) -> int:
        self.check()
        assert self.qmp is not None
        for i in range(count):
            self.qmp.inject_nmi()
            if interval and i + 1 < count:
                time.sleep(interval)
        return count


class SysrqNmi(NmiSource):
    """``echo l > /proc/sysrq-trigger``: an NMI backtrace on every CPU but the writer.

    Writing to /proc/sysrq-trigger works whatever ``kernel.sysrq`` says (that sysctl only gates the
    keyboard). To reach *every* CPU, successive rounds are written from different CPUs with
    ``taskset`` when the device has it.
    """

    name = "sysrq"

    def __init__(self, runner: CommandRunner, sudo: bool = False) -> None:
        super().__init__(runner)
        self.sudo = sudo
        self._ncpus: int | None = None
        self._taskset: bool | None = None

    def check(self) -> None:
        res = self.runner.run(
            "test -w /proc/sysrq-trigger && echo writable; command -v taskset >/dev/null && echo taskset;"
            " grep -c ^processor /proc/cpuinfo",
            timeout=10,
            sudo=self.sudo,
        )
        if "writable" not in res.out:
            raise Unavailable(self.name, "/proc/sysrq-trigger is not writable (kernel without MAGIC_SYSRQ?)")
        self._taskset = "taskset" in res.out
        last = res.out.strip().splitlines()[-1:] or ["1"]
        self._ncpus = int(last[0]) if last[0].isdigit() else 1

    def raise_(self, count: int = 1, interval: float = 0.0) -> int:
        if self._taskset is None:
            self.check()
        ncpus = self._ncpus or 1
        rounds = max(count, 2) if (self._taskset and ncpus > 1) else count
        parts = []
        for i in range(rounds):
            write = "echo l > /proc/sysrq-trigger"
            if self._taskset and ncpus > 1:
                write = f"taskset -c {i % ncpus} sh -c {shlex.quote(write)}"
            parts.append(write)
            if interval and i + 1 < rounds:
                parts.append(f"sleep {interval:g}")
        res = self.runner.run("; ".join(parts), timeout=30 + rounds * (interval + 1), sudo=self.sudo)
        if res.exit_status != 0:
            raise DeviceError(f"sysrq NMI: writing /proc/sysrq-trigger failed: {res.err.strip()[-200:]}")
        return rounds


class PerfNmi(NmiSource):
    """PMU overflow NMIs from ``perf record -a -e cycles -F max``; counted in the ``PMI:`` row.

    Unavailable without a PMU (every TCG guest: no ``/sys/bus/event_source/devices/cpu``) or
    without the ``perf`` tool; the reason says which.
    """

    name = "perf"
    row = "PMI"

    def __init__(self, runner: CommandRunner, sudo: bool = False, seconds: float = 1.0) -> None:
        super().__init__(runner)
        self.sudo = sudo
        self.seconds = seconds

    def check(self) -> None:
        res = self.runner.run(
            "test -e /sys/bus/event_source/devices/cpu && echo pmu; command -v perf >/dev/null && echo tool;"
            " cat /proc/sys/kernel/nmi_watchdog 2>/dev/null | sed 's/^/wd=/'",
            timeout=10,
        )
        if "pmu" not in res.out.split():
            raise Unavailable(
                self.name,
                "no PMU on this CPU (/sys/bus/event_source/devices/cpu is missing; "
                "typical of a virtual machine without PMU passthrough)",
            )
        if "tool" not in res.out.split():
            raise Unavailable(self.name, "the 'perf' tool is not installed on the device (linux-perf)")

    def raise_(self, count: int = 1, interval: float = 0.0) -> int:
        secs = max(self.seconds, 0.1) * max(count, 1)
        cmd = f"perf record -a -e cycles -F max -o /dev/null -- sleep {secs:g}"
        res = self.runner.run(cmd, timeout=secs + 30, sudo=self.sudo)
        if res.exit_status != 0:
            raise Unavailable(self.name, f"perf record failed: {res.err.strip()[-200:]}")
        return count


@dataclass(frozen=True)
class NmiMeans:
    """What a device offers to raise NMIs with: its SSH runner, BMC and QMP (None where it has none)."""

    runner: CommandRunner
    bmc: DiagBmc | None = None
    qmp: NmiInjector | None = None
    sudo: bool = False


#: The NMI source registry: name (rig.vocab.NmiSourceName) -> how to build that source for a device.
SOURCES: dict[str, Callable[[NmiMeans], NmiSource]] = {
    "ipmi": lambda m: IpmiDiagNmi(m.runner, m.bmc),
    "sysrq": lambda m: SysrqNmi(m.runner, sudo=m.sudo),
    "perf": lambda m: PerfNmi(m.runner, sudo=m.sudo),
    "qmp": lambda m: QmpNmi(m.runner, m.qmp),
}
