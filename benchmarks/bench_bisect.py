"""Bisect validation: does ``rig bisect`` name the commit that brought an intermittent hang, and at what cost?

Method, per bisection: a generated sbsim history (rig.lab.sbsim_history) of ``--commits`` commits;
the good ref turns host residency on (``--residency`` % of each CPU's time in an imitated host
section), one random commit is a timing-only decoy (longer, fewer host sections, same share), a
later random commit the culprit (``hang_on_host_nmi=1``: an NMI that lands in the host never
returns -- the time to hang is random, exponential). Two bisections of the same history, side by
side on two lab guests (adaptive on lab-1, baseline on lab-2; ``--serial``: one after the other on
lab-1), so twice as many fit in the hour; each thread has its own device, clone and evidence:

- **adaptive** (``rig bisect`` as shipped): the bad ref is soaked ``--bad-attempts`` times, an
  exponential rate is fitted, and a commit is called good after the soak the asked ``--confidence``
  needs against that rate;
- **fixed-soak baseline**: no measurement; every step is soaked ``--fixed-soak`` seconds (what a
  person picks by hand; the real laptop's hang came after about 20 minutes, so people soaked 30).

Per bisection: right commit or not, total soak (seconds of NMIs over every attempt, the bad-ref
measurement included), and wall time from the start to the named commit ("this build hangs" to
"this is the commit"). The correct-commit rate is shown as a count with its Wilson 95 % interval
(honest at k = n, where the normal approximation claims certainty).

Run: ``python -m benchmarks.bench_bisect --commits 8 --residency 1.0 --fixed-soak 15 --until 13:29
--write`` (as many bisections as end before 13:29 UTC) writes ``/tmp/bench-lab/results/bisect.json``
(after every bisection; each bisection's bisect.json and console log in ``results/evidence/``)
and, with ``--write``, its section at the end of BENCHMARKS.md. ``--rerender`` redraws it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.labenv import bench_lab, bench_root, devices
from benchmarks.machine import describe
from rig.inventory import Device
from rig.lab.manager import Lab, checkout_dir
from rig.lab.sbsim_history import History, intermittent_history
from rig.runs.bisect import BisectRun, GitBisect, Oracle
from rig.runs.ttf import fit_rate

MD = checkout_dir() / "BENCHMARKS.md"
BEGIN, END = "<!-- bench:bisect -->", "<!-- /bench:bisect -->"
TITLE = "## Bisect validation: intermittent host-NMI hang (issue 19)"


class FixedSoakBisect(BisectRun):
    """The baseline: every step soaked ``fixed`` seconds; the bad ref is not measured.

    Implemented as the same BisectRun with the rate set so that the soak a 'good' needs is exactly
    ``fixed`` (``required_soak(rate, confidence) == fixed``): everything else -- git bisect, fresh
    boots, the oracle, the evidence file -- is the shipped code, so the comparison is fair.
    """

    fixed: float = 30.0

    def _measure_bad(self, git: GitBisect, oracle: Oracle) -> float:
        rate = -math.log(1.0 - self.confidence) / self.fixed
        self.result["rate"] = {"model": f"fixed-soak baseline: every step {self.fixed:g} s", "per_second": rate}
        return rate


def _attempts(result: dict[str, Any]) -> list[dict[str, Any]]:
    attempts = list(result.get("bad_ref_attempts", []))
    if result.get("good_ref_attempt"):
        attempts.append(result["good_ref_attempt"])
    for s in result.get("steps", []):
        attempts += s.get("attempts", [])
    return attempts


def _soak_seconds(result: dict[str, Any]) -> float:
    return float(sum(a.get("exposure", 0.0) for a in _attempts(result)))


def one(run: BisectRun, h: History) -> dict[str, Any]:
    t0 = time.monotonic()
    error = None
    try:
        result = run.run()
    except Exception as exc:  # noqa: BLE001 - a failed bisection is a data point, not the end
        error = f"{type(exc).__name__}: {exc}"
        result = run.result
    named = (result.get("first_bad") or {}).get("commit")
    return {
        "correct": named == h.culprit,
        "named": named,
        "named_is_decoy": named == h.decoy,
        "status": result.get("status"),
        "error": error,
        "soak_s": round(_soak_seconds(result), 1),
        "wall_s": round(time.monotonic() - t0, 1),
        "steps": len(result.get("steps", [])),
        "attempts": len(_attempts(result)),
        "boots": sum(1 for a in _attempts(result) if a.get("start") == "fresh boot"),
        "unloads": sum(1 for a in _attempts(result) if a.get("start") == "unloaded"),
        "verdicts": [st.get("verdict") for st in result.get("steps", [])],
        # a commit with the bug called good (the error a short soak makes), or one without it called bad
        "wrong_good": sum(1 for st in result.get("steps", []) if st.get("verdict") == "good"
                          and h.commits.index(st["commit"]) >= h.commits.index(h.culprit)),  # fmt: skip
        "wrong_bad": sum(1 for st in result.get("steps", []) if st.get("verdict") == "bad"
                         and h.commits.index(st["commit"]) < h.commits.index(h.culprit)),  # fmt: skip
        "rate": result.get("rate"),
        "skips": [st.get("evidence") for st in result.get("steps", []) if st.get("verdict") == "skip"],
    }


def main(
    lab: Lab | None = None,
    bisections: int = 12,
    commits: int = 10,
    residency: str = "0.5",
    confidence: float = 0.95,
    bad_attempts: int = 2,
    fixed_soak: float = 30.0,
    max_soak: float = 180.0,
    seed: int = 19,
    parallel: bool = True,
    until: float | None = None,
    save: Path | None = None,
    ssh_probe_timeout: float | None = None,
) -> dict[str, Any]:
    """``bisections`` histories, each bisected by both methods: side by side on lab-1 (adaptive) and
    lab-2 (fixed) when ``parallel``, else one after the other on lab-1.

    ``until`` (a time.time()): start no bisection that would end after it, judged by the slowest
    so far. ``save``: the results so far are written there after every bisection (and each
    bisection's evidence, bisect.json and console logs, is kept beside it in ``evidence/``).
    """
    params = {"ssh_probe_timeout_s": ssh_probe_timeout,
              "commits": commits, "residency_pct": residency, "confidence": confidence, "bad_attempts": bad_attempts,
              "fixed_soak_s": fixed_soak, "max_soak_s": max_soak, "seed": seed, "parallel": parallel}  # fmt: skip
    rng = random.Random(seed)
    runs: list[dict[str, Any]] = []
    quiet = Console(quiet=True)
    evidence = save.parent / "evidence" if save is not None else None
    if evidence is not None and evidence.exists():
        shutil.rmtree(evidence)
    with bench_lab(2 if parallel else 1, lab) as the_lab, tempfile.TemporaryDirectory(prefix="bench-bisect-") as tmp:
        keep = evidence or Path(tmp)
        devs = {d.name: _patient(d, ssh_probe_timeout) for d in devices(the_lab)}
        a_dev, f_dev = devs["lab-1"], devs["lab-2" if parallel else "lab-1"]
        builds = Path(tmp) / "builds"  # one build per tree and kernel, for both methods and every bisection
        slowest = 0.0
        for i in range(bisections):
            if until is not None and time.time() + slowest > until:
                print(f"stopping after {i} bisections: another would end after the deadline", flush=True)
                break
            t_start = time.time()
            culprit = rng.randint(2, commits - 1)
            decoy = rng.randint(1, culprit - 1)
            h = intermittent_history(Path(tmp) / f"h{i}", n=commits, culprit=culprit, decoy=decoy,
                                     residency_pct=residency)  # fmt: skip
            adaptive = BisectRun(h.repo, h.good, h.bad, a_dev, keep / f"a{i}", confidence=confidence,
                                 max_soak=max_soak, bad_attempts=bad_attempts, console=quiet,
                                 build_cache=builds)  # fmt: skip
            fixed = FixedSoakBisect(h.repo, h.good, h.bad, f_dev, keep / f"f{i}", confidence=confidence,
                                    max_soak=max_soak, console=quiet, build_cache=builds)  # fmt: skip
            fixed.fixed = fixed_soak
            if parallel:
                with ThreadPoolExecutor(max_workers=2) as pool:
                    fa, ff = pool.submit(one, adaptive, h), pool.submit(one, fixed, h)
                    ra, rf = fa.result(), ff.result()
            else:
                ra, rf = one(adaptive, h), one(fixed, h)
            row = {"culprit_index": culprit, "decoy_index": decoy, "adaptive": ra, "fixed": rf,
                   "load": os.getloadavg()[0], "ended": datetime.now(UTC).strftime("%H:%M")}  # fmt: skip
            runs.append(row)
            brief = {m: {k: row[m][k] for k in ("correct", "soak_s", "wall_s", "boots", "unloads")}
                     for m in ("adaptive", "fixed")}  # fmt: skip
            print(json.dumps({"bisection": i + 1, "culprit": culprit, "decoy": decoy, "load": row["load"],
                              **brief}), flush=True)  # fmt: skip
            slowest = max(slowest, time.time() - t_start)
            if save is not None:
                save.parent.mkdir(parents=True, exist_ok=True)
                save.write_text(json.dumps(_summary(runs, params), indent=1))
    return _summary(runs, params)


def _patient(dev: Device, ssh_probe_timeout: float | None) -> Device:
    """The device with a longer SSH deadline before 'lost-connection' (SSH dead, console alive).

    Why: on this shared 2-core VM at a load of 15-20 a guest's SSH can stay unanswered for the
    default 3 s + 2 H while it deploys; the monitor then calls it lost-connection, the attempt is
    untestable and the bisection stops, though nothing hung. The hang rule (heartbeat silence plus
    a short probe) is unchanged, so the times to failure are measured as before.
    """
    if ssh_probe_timeout is None:
        return dev
    return dev.model_copy(update={"monitor": dev.monitor.model_copy(update={"ssh_probe_timeout": ssh_probe_timeout})})


def _summary(runs: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """What bisect.json holds: the parameters, every bisection's row, when and where."""
    return {**params, "bisections": len(runs), "runs": runs, "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": describe()}  # fmt: skip


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion (95 % for z = 1.96): sane at k = n, unlike the normal one."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def render(r: dict[str, Any], smoke: bool) -> str:
    runs = r["runs"]
    n = len(runs)
    lines = [BEGIN, TITLE, ""]
    if smoke:
        lines += [
            f"**Smoke run only ({n} bisection(s) per method), not the benchmark**: with {n} bisection(s) these "
            f"figures cannot show a correct-commit rate near the asked {r['confidence']:g}.",
            "",
        ]
    rows = []
    for name, label in (("adaptive", "adaptive (`rig bisect`)"), ("fixed", f"fixed soak {r['fixed_soak_s']:g} s")):
        xs = [x[name] for x in runs]
        k = sum(1 for x in xs if x["correct"])
        lo, hi = wilson(k, n)
        decoys = sum(1 for x in xs if x["named_is_decoy"])
        soak = [x["soak_s"] for x in xs]
        wall = [x["wall_s"] for x in xs]
        wrong = sum(x.get("wrong_good", 0) for x in xs)
        steps = sum(x["steps"] for x in xs)
        boots = statistics.median(x.get("boots", 0) for x in xs)
        unloads = statistics.median(x.get("unloads", 0) for x in xs)
        rows.append(
            f"| {label} | {k}/{n} ({100 * k / max(n, 1):.0f} %; Wilson 95 % [{100 * lo:.0f}, {100 * hi:.0f}] %) | "
            f"{decoys} | {wrong} of {steps} | {statistics.median(soak):.0f} s (mean {statistics.mean(soak):.0f}) | "
            f"{statistics.median(wall):.0f} s (mean {statistics.mean(wall):.0f}, max {max(wall):.0f}) | "
            f"{boots:g} / {unloads:g} |"
        )
    a = [x["adaptive"]["soak_s"] for x in runs]
    f = [x["fixed"]["soak_s"] for x in runs]
    ratio = sum(a) / sum(f) if sum(f) else float("nan")
    loads = [x["load"] for x in runs]
    where = ", ".join(f"{x['culprit_index']}/{x['decoy_index']}" for x in runs)
    side = ("side by side on two lab guests (adaptive on lab-1, the baseline on lab-2, one history at a time)"
            if r.get("parallel") else "one after the other on lab-1")  # fmt: skip
    lines += [
        f"Measured {r['when']} on {r['machine']} (this 2-core VM, shared with other sessions; 1-minute load at "
        f"each bisection's end: {', '.join(f'{x:.1f}' for x in loads)}; median {statistics.median(loads):.1f}).",
        "",
        f"{n} histories of {r['commits']} commits, host residency {r['residency_pct']} % per CPU, culprit and decoy "
        f"at random (seed {r['seed']}: culprit/decoy index per bisection {where}); each bisected by both methods, "
        f"{side}. Confidence {r['confidence']:g}, {r['bad_attempts']} bad-ref attempts, "
        f"soak cap {r['max_soak_s']:g} s.",
        "",
        "| method | right commit | named the decoy | bad commits called good (of steps) | total soak per "
        "bisection, median | wall time, 'this build hangs' to the named commit, median | boots / unloads per "
        "bisection, median |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Soak time, adaptive / fixed-soak baseline (summed over the bisections): **{ratio:.2f}x**. Goal: right "
        f"commit in at least {100 * r['confidence']:.0f} % of bisections.",
    ]
    ka = sum(1 for x in runs if x["adaptive"]["correct"])
    lo, _ = wilson(ka, n)
    met = n > 0 and ka / n >= r["confidence"]
    lines += [
        "",
        f"**Goal {'met in this sample' if met else 'missed'}** (adaptive {ka}/{n}). With {n} bisections the Wilson "
        f"interval's lower end is {100 * lo:.0f} %: "
        + ("the sample is too small to show the rate is at least the goal, only that it is not far below it."
           if met and lo < r["confidence"] else "see the errors and skips below for why." if not met else "")
    ]  # fmt: skip
    skips = [f"{m} #{i + 1}: {e}" for i, x in enumerate(runs) for m in ("adaptive", "fixed")
             for e in x[m].get("skips") or []]  # fmt: skip
    if skips:
        lines += ["", "Skipped steps (untestable or another failure, not a verdict): " + "; ".join(skips)]
    errors = [f"{m}: {x[m]['error']}" for x in runs for m in ("adaptive", "fixed") if x[m]["error"]]
    if errors:
        lines += ["", "Errors: " + "; ".join(errors)]
    rates = [x["adaptive"]["rate"] for x in runs if x["adaptive"].get("rate")]
    ttf = [rt.get("time_to_failure") for rt in rates if rt.get("time_to_failure")]
    pooled = [(t, True) for x in ttf for t in x["times_to_failure"]] + [
        (t, False) for x in ttf for t in x["censored_seconds"]]
    rate = fit_rate(pooled) if pooled else None
    if rate:
        survive = math.exp(-rate * r["fixed_soak_s"])
        goods = [t["soak_for_good_seconds"] for t in ttf]
        mttfs = ", ".join(f"{t['mean_time_to_failure']:.0f}" for t in ttf)
        lines += [
            "",
            f"Bad ref over the adaptive runs: {sum(1 for _, f in pooled if f)} failures in {len(pooled)} soaks, "
            f"pooled mean time to failure {1 / rate:.1f} s (per bisection "
            f"{mttfs} s); the 'good' soak it gave, median "
            f"{statistics.median(goods):.0f} s. A commit as bad survives the baseline's {r['fixed_soak_s']:g} s with "
            f"probability {100 * survive:.0f} % (pooled rate); the adaptive soak aims at "
            f"{100 * (1 - r['confidence']):.0f} %.",
        ]
    lines += [
        "",
        "Method: `benchmarks/bench_bisect.py`. Both methods run the shipped `rig.runs.bisect.BisectRun` (real `git "
        "bisect` in a clone, the NMI soak oracle; a fresh boot after every failure, sbsim unloaded after a pass, one "
        "build per tree and kernel); the baseline only replaces the bad-ref measurement by a fixed soak per step. "
        "Soak = seconds of NMIs summed over every attempt; wall time includes boots, builds, deploys and the "
        "bad-ref measurement.",
        END,
    ]
    return "\n".join(lines)


def write_section(text: str) -> None:
    md = MD.read_text()
    if BEGIN in md and END in md:
        pre, rest = md.split(BEGIN, 1)
        md = pre + text + rest.split(END, 1)[1]
    else:
        md = md.rstrip("\n") + "\n\n" + text + "\n"
    MD.write_text(md)


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bisections", type=int, default=12)
    ap.add_argument("--commits", type=int, default=10)
    ap.add_argument("--residency", default="0.5", help="host residency per CPU, percent (sbsim host_residency_pct)")
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--bad-attempts", type=int, default=2)
    ap.add_argument("--fixed-soak", type=float, default=30.0)
    ap.add_argument("--max-soak", type=float, default=180.0)
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--until", default=None, metavar="HH:MM", help="UTC time by which the last bisection must end")
    ap.add_argument("--ssh-probe-timeout", type=float, default=None,
                    help="the guests' [monitor] ssh_probe_timeout for this run (a loaded machine)")  # fmt: skip
    ap.add_argument("--serial", action="store_true", help="both methods on lab-1, one after the other (one guest)")
    ap.add_argument("--smoke", action="store_true", help="label the section a smoke run (too few bisections)")
    ap.add_argument("--write", action="store_true", help="write the section at the end of BENCHMARKS.md")
    ap.add_argument("--rerender", action="store_true", help="render the saved results without measuring")
    a = ap.parse_args()
    out = bench_root() / "results" / "bisect.json"
    until = None
    if a.until:
        hh, mm = (int(x) for x in a.until.split(":"))
        now = datetime.now(UTC)
        until = now.replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()
    if a.rerender:
        r = json.loads(out.read_text())
    else:
        r = main(bisections=a.bisections, commits=a.commits, residency=a.residency, confidence=a.confidence,
                 bad_attempts=a.bad_attempts, fixed_soak=a.fixed_soak, max_soak=a.max_soak, seed=a.seed,
                 parallel=not a.serial, until=until, save=out,
                 ssh_probe_timeout=a.ssh_probe_timeout)  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(r, indent=1))
    text = render(r, a.smoke or r["bisections"] < 5)
    print(text)
    if a.write:
        write_section(text)


if __name__ == "__main__":
    cli()
