"""``rig bisect``: find the commit that introduced a hang, with the rig as git bisect's oracle.

The oracle tests one commit on one device: fresh boot, deploy that commit's tree, then an NMI soak
(every cheap NMI source of the device, as the soak suite does) while the hang monitor watches. A
hang or crash marks the commit bad; surviving the soak marks it good. The boot is always fresh after a
hang, crash or lost connection and for Shadow-box (it cannot be unloaded); only sbsim, the lab's
stand-in whose module unloads, is unloaded instead after an attempt that passed. Controller builds
are kept by tree content in ``<out>/builds``: the same tree is built once per bisection.

Why "good" needs a computed soak: the hang is intermittent (the original needed about 20 minutes of
NMIs), so surviving one minute proves little. The oracle first measures the *bad* ref (one or more
attempts, each up to ``--max-soak-minutes``) and fits an exponential model to its times to failure:
``rate = failures / total exposure`` (the maximum-likelihood estimate; an attempt that survived
counts its exposure as censored data). A commit is then called good only after a soak ``T`` with
``exp(-rate * T) <= 1 - confidence``: the probability that a commit as bad as the bad ref would
have survived that long. Each good step reports the confidence it actually reached (lower than asked
if ``--max-soak-minutes`` cut the soak short; the step says so).

Times to failure are measured from the start of the NMI soak to the monitor's verdict. The verdict
comes up to 3*H+2 s after the device went silent, so the times are slightly long and the fitted rate
slightly low: the soak for "good" comes out longer, never shorter, than the exact one. For the same
reason a soak is followed by that detection bound of quiet watching before it counts as survived.

Which bisection: real ``git bisect`` (start/good/bad/skip/log), run in a ``git clone --shared`` of
the user's tree under ``<out>/tree``: git picks the commits (merges and skips included) and its log
is part of the evidence, while the user's checkout, index and refs are never touched. A commit
that does not build (or does not start for a named reason that is not a hang/crash) is skipped.

A lab fault (console server, BMC) aborts the bisection with the evidence so far: it is never
blamed on a commit. git bisect trusts the good ref; ``--verify-good`` soaks it first, as long as a
'good' step needs, and stops if it fails too. The same command with the same ``--out`` resumes an interrupted bisection:
``bisect.json`` keeps the bad ref's attempts and every judged step, which are replayed into a new
``git bisect`` (``BisectRun._resume``, ``_replay``); only an attempt that was cut short runs again.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import click
from rich.console import Console
from rich.table import Table

from rig.device.lifecycle import DeviceState, fresh_boot
from rig.device.soak import NMI_INTERVAL, run_soak
from rig.errors import ConfigError, LabFault, RigError, Unavailable
from rig.inventory import Device, load_inventory
from rig.reports.board import wanted as board_wanted
from rig.reports.report import write_json_atomic
from rig.runs.gitrepo import clone_shared, resolve_ref
from rig.runs.ttf import analyse, fit_rate, planning_rate, required_soak, survival_confidence
from rig.vocab import NOT_DEVICE_KINDS, VerdictKind

RESULT_FILE = "bisect.json"
EXIT_FOUND = 0
EXIT_INCONCLUSIVE = 3


# ---------------------------------------------------------------------------------------------
# the statistics: one owner, rig.runs.ttf (fit_rate, required_soak, survival_confidence are re-exported here)


# ---------------------------------------------------------------------------------------------
# evidence


@dataclass
class Attempt:
    """One deploy + soak of one commit, as the report shows it."""

    commit: str
    target_seconds: float
    exposure: float = 0.0  # seconds of NMIs until the verdict, or the whole soak if it survived
    failed: bool = False
    untestable: bool = False
    verdict: str = "ok"
    reason: str = ""
    started: float = 0.0
    console_lines: tuple[int, int] = (0, 0)  # line numbers in console.log covering this attempt
    excerpt: list[str] = field(default_factory=list)
    raised: dict[str, int] = field(default_factory=dict)
    title: str = ""  # the crash's title (rig.detect.detector: "<report type> in <guilty function>"), "" if none
    #: rig.device.soak.SoakResult.to_json(): per source asked/achieved rate and NMIs per minute.
    soak: dict[str, Any] = field(default_factory=dict)
    #: How the device was made clean for it: "fresh boot", "unloaded" (sbsim after a pass), "clean".
    start: str = ""

    @property
    def evidence(self) -> str:
        if self.untestable:
            return f"untestable: {self.reason}"
        if self.failed:
            return f"{self.verdict} after {self.exposure:.0f} s of NMIs"
        return f"survived {self.exposure:.0f} s of NMIs"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["exposure"] = round(self.exposure, 1)
        d["target_seconds"] = round(self.target_seconds, 1)
        d["evidence"] = self.evidence
        return d


@dataclass
class Step:
    """One commit judged: its verdict for git bisect and why."""

    commit: str
    subject: str
    verdict: Literal["good", "bad", "skip"]
    attempts: list[Attempt]
    target_seconds: float | None = None  # the soak a 'good' needed for the asked confidence
    confidence: float | None = None  # reached, for a 'good'
    note: str = ""

    @property
    def evidence(self) -> str:
        a = self.attempts[-1] if self.attempts else None
        text = a.evidence if a else self.note
        if self.verdict == "skip" and a is not None and a.failed and self.note:
            text += f"; skipped: {self.note}"
        if self.verdict == "good" and self.confidence is not None:
            text += f"; confidence {self.confidence:.3f}"
            if self.note:
                text += f" ({self.note})"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "commit": self.commit,
            "subject": self.subject,
            "verdict": self.verdict,
            "evidence": self.evidence,
            "target_seconds": None if self.target_seconds is None else round(self.target_seconds, 1),
            "confidence": None if self.confidence is None else round(self.confidence, 4),
            "note": self.note,
            "attempts": [a.to_json() for a in self.attempts],
        }


def is_the_crash(attempt: Attempt, crash_title: str | None) -> bool:
    """Whether a failed attempt is the crash being bisected: any failure without ``--crash-title``,
    else one whose crash title contains it (case-insensitive; titles are stable across builds)."""
    return crash_title is None or crash_title.casefold() in attempt.title.casefold()


def judge_soak(attempt: Attempt, rate: float, target: float, confidence: float, crash_title: str | None = None) -> Step:
    """Turn one attempt into a step verdict (pure): failed -> bad, untestable -> skip, else good.

    With ``crash_title``, only that crash is bad: another failure (an unrelated crash, a hang) is
    recorded and the step is ``skip`` -- it neither clears nor blames the commit.
    """
    if attempt.untestable:
        return Step(attempt.commit, "", "skip", [attempt], note=attempt.reason)
    if attempt.failed and not is_the_crash(attempt, crash_title):
        what = f"{attempt.verdict}: {attempt.title}" if attempt.title else attempt.verdict
        return Step(attempt.commit, "", "skip", [attempt], note=f"another failure ({what}), not '{crash_title}'")
    if attempt.failed:
        return Step(attempt.commit, "", "bad", [attempt], target_seconds=target)
    reached = survival_confidence(rate, attempt.exposure)
    note = ""
    if reached + 1e-9 < confidence:
        note = f"below the asked {confidence:g}: the soak was capped at {attempt.exposure:.0f} s of {target:.0f} s"
    return Step(attempt.commit, "", "good", [attempt], target_seconds=target, confidence=reached, note=note)


# ---------------------------------------------------------------------------------------------
# the oracle: one commit on one device


class Oracle:
    """Deploys a tree on a device and soaks it with NMIs; every attempt starts from a clean device
    (a fresh boot; sbsim only: unloaded after a pass, see :meth:`_fresh_start`)."""

    def __init__(self, dut: Any, *, interval: float = NMI_INTERVAL) -> None:
        self.dut = dut
        self.interval = interval
        #: Watch the monitor's hang bound (and a second more) after a soak, so a hang at its end is seen.
        self.detect_bound = dut.device.monitor.hang_bound + 1
        #: The live board's feed (rig.reports.board), if one is drawn: states and verdicts of each attempt.
        self.board: Any = None

    def _show(self, state: str, **fields: Any) -> None:
        if self.board is not None:
            self.board.state(self.dut.name, state, **fields)

    def _sources(self) -> dict[str, Any]:
        ready = {n: s for n, s in self.dut.nmi_sources().items() if not isinstance(s, Unavailable)}
        if not ready:
            raise ConfigError(f"device {self.dut.name}: no NMI source available (nmi_sources in its inventory)")
        return ready

    def _fresh_start(self) -> str:
        """A clean device for the next attempt; returns how (the attempt's ``start``).

        A fresh boot after a hang, crash or lost connection and after any Shadow-box build
        (it cannot be unloaded). Only a recipe whose module unloads (sbsim, the lab stand-in) may
        instead be unloaded after an attempt that passed (Dut.unload_shadowbox): nothing of the
        last build runs any more and the device never failed, so the next build starts as it would
        after a boot; if the unload fails in any way, the device is booted as before.
        """
        d = self.dut
        how = "clean"
        if d.shadowbox_loaded and not d.needs_recovery:
            why_not = d.unload_shadowbox()
            how = "unloaded" if why_not is None else "fresh boot"
        if d.lifecycle.needs_fresh_boot:
            self._show("recovering")
            how = "fresh boot"
        # Shadow-box cannot be unloaded: every attempt gets its own clean boot (else a fresh watch).
        d.lifecycle.transition(DeviceState.WATCHED, clean=True)
        return how

    def _lab_fault(self, verdict: Any, commit: str) -> LabFault:
        return LabFault(
            f"lab fault while testing {commit[:12]} on {self.dut.name}: {verdict.reason}; "
            "this is not the commit's fault: fix the lab and run rig bisect again"
        )

    def attempt(self, tree: Path, commit: str, seconds: float) -> Attempt:
        """Fresh boot, deploy ``tree``, NMIs for ``seconds``; a hang/crash ends it early."""
        from rig.device.shadowbox import DeployFailed

        d = self.dut
        start = self._fresh_start()
        a = Attempt(commit, seconds, started=time.time(), start=start)
        first_line = d.console_mark()
        self._show("deploying", test=commit[:12])
        try:
            d.deploy_shadowbox(source=tree)
        except LabFault:
            raise
        except (DeployFailed, RigError) as exc:
            d.lifecycle.fail(f"deploy failed: {exc}")
            v = d.wait_verdict(self.detect_bound)
            if v is not None and v.kind in NOT_DEVICE_KINDS:
                raise self._lab_fault(v, commit) from None
            if v is not None and v.kind in (VerdictKind.HANG, VerdictKind.CRASH, VerdictKind.REBOOT):
                a.failed, a.verdict, a.reason = True, v.text, f"while loading: {v.reason}"
                a.title = v.event.title if v.event is not None else ""
            else:
                a.untestable, a.reason = True, f"deploy failed: {exc}"
            return self._close(a, first_line)
        self._show("soaking", test=commit[:12], soak_seconds=seconds)
        soak = run_soak(d, self._sources(), seconds, interval=self.interval)
        a.raised = soak.raised
        a.soak = soak.to_json()
        if soak.stopped is not None:
            raise soak.stopped  # a lab fault naming the NMI source: never the commit's fault
        soaked = soak.effective_seconds  # a thin soak counts at the rate it achieved
        if soak.shortfalls:
            a.reason = "soak below its asked NMI rate: " + "; ".join(soak.shortfalls)
        v = d.settled_verdict()
        if v.ok:
            # A hang in the last seconds of the soak is declared only later: watch that long, quietly.
            late = d.wait_verdict(self.detect_bound)
            v = late if late is not None else v
        if v.kind in NOT_DEVICE_KINDS:  # a lab fault, or switched off behind our back: never the commit's fault
            raise self._lab_fault(v, commit)
        if v.ok:
            a.exposure = soaked
        elif v.kind is VerdictKind.LOST_CONNECTION:
            d.lifecycle.fail(v.text)
            a.untestable, a.verdict, a.reason, a.exposure = True, v.text, v.reason, soaked
        else:
            d.lifecycle.fail(v.text)
            a.failed, a.verdict, a.reason = True, v.text, v.reason
            a.title = v.event.title if v.event is not None else ""
            # From the start of the NMIs to the verdict (wall clock: the verdict carries wall time).
            a.exposure = min(max(0.0, v.at - soak.started), time.time() - soak.started)
        return self._close(a, first_line)

    def _close(self, a: Attempt, first_line: int) -> Attempt:
        if self.board is not None:
            outcome = "failed" if a.failed else ("skipped" if a.untestable else "passed")
            self.board.verdict(
                self.dut.name, a.commit[:12], outcome, a.verdict or ("untestable" if a.untestable else "ok")
            )
        if self.dut.device.console is not None:
            a.console_lines = (first_line + 1, self.dut.console_mark())
            if a.failed or a.untestable:
                a.excerpt = self.dut.console_lines(30)
        return a


# ---------------------------------------------------------------------------------------------
# git bisect in a clone


_FIRST_BAD = re.compile(r"^([0-9a-f]{40}) is the first bad commit", re.M)
_ONLY_SKIPPED = "first bad commit could be any of"


class GitBisect:
    """``git bisect`` in a shared clone: the user's repository is only read."""

    def __init__(self, source: Path, clone: Path) -> None:
        self.source = source
        self.clone = clone_shared(source, clone)
        self.first_bad: str | None = None
        self.candidates: list[str] = []

    def _git(self, *args: str) -> str:
        proc = subprocess.run(["git", "-C", str(self.clone), *args], capture_output=True, text=True, timeout=120)
        if proc.returncode not in (0, 2) or (proc.returncode == 2 and _ONLY_SKIPPED not in proc.stdout):
            raise ConfigError(f"git {' '.join(args)} failed in {self.clone}: {(proc.stderr or proc.stdout)[-500:]}")
        return proc.stdout

    def checkout(self, commit: str) -> Path:
        self._git("-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit)
        return self.clone

    def head(self) -> str:
        return self._git("rev-parse", "HEAD").strip()

    def subject(self, commit: str) -> str:
        return self._git("log", "-1", "--format=%s", commit).strip()

    def _after(self, out: str) -> bool:
        m = _FIRST_BAD.search(out)
        if m:
            self.first_bad = m.group(1)
            return True
        if _ONLY_SKIPPED in out:
            self.candidates = re.findall(r"^([0-9a-f]{40})", out.split(_ONLY_SKIPPED, 1)[1], re.M)
            return True
        return False

    def start(self, bad: str, good: str) -> bool:
        """Start; True if git already knows the answer (bad is good's child)."""
        return self._after(self._git("bisect", "start", bad, good))

    def mark(self, verdict: Literal["good", "bad", "skip"], commit: str) -> bool:
        """Tell git; True when the bisection is over (first_bad or candidates set)."""
        return self._after(self._git("bisect", verdict, commit))

    def log(self) -> str:
        return self._git("bisect", "log")


# ---------------------------------------------------------------------------------------------
# the whole bisection


@dataclass
class BisectRun:
    source: Path
    good_ref: str
    bad_ref: str
    device: Device
    out: Path
    confidence: float = 0.95
    max_soak: float = 3600.0
    bad_attempts: int = 2
    interval: float = NMI_INTERVAL
    verify_good: bool = False
    console: Console = field(default_factory=Console)
    #: Only this crash is bad (a substring of its title); other failures make a step 'skip'.
    crash_title: str | None = None
    #: Draw the live board (rig.reports.board) while soaking: on a terminal, unless --no-live.
    live: bool = False
    #: Controller builds kept by tree content (default ``<out>/builds``): a commit whose tree was
    #: built already (the bad ref's second attempt, a commit that changed nothing) is not rebuilt.
    build_cache: Path | None = None

    def __post_init__(self) -> None:
        required_soak(1.0, self.confidence)  # validates the confidence
        if self.bad_attempts < 1:
            raise ConfigError("--bad-attempts must be at least 1")
        if self.max_soak <= 0:
            raise ConfigError("--max-soak-minutes must be positive")
        self.good = resolve_ref(self.source, self.good_ref)
        self.bad = resolve_ref(self.source, self.bad_ref)
        self.result: dict[str, Any] = {
            "schema": "shadowbox-rig/bisect",
            "version": 1,
            "status": "running",
            "source_tree": str(self.source),
            "good": {"ref": self.good_ref, "commit": self.good},
            "bad": {"ref": self.bad_ref, "commit": self.bad},
            "device": self.device.name,
            "confidence": self.confidence,
            "max_soak_seconds": self.max_soak,
            "crash_title": self.crash_title,
            "bad_ref_attempts": [],
            "rate": None,
            "steps": [],
            "first_bad": None,
            "candidates": [],
            "git_bisect_log": "",
        }

    def save(self) -> None:
        write_json_atomic(self.out / RESULT_FILE, self.result)

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def _resume(self) -> bool:
        """Take over ``<out>/bisect.json`` of an interrupted run of the same bisection; True if it had finished.

        Why: a bisection on real laptops runs for hours (each 'good' is a long soak), and a ^C, a
        power cut or a lab fault must not throw the soaks already done away. What was recorded is
        kept (the bad ref's attempts, every judged step); an attempt cut short was never recorded
        and is done again. Another bisection's folder is refused, naming the field that differs.
        """
        path = self.out / RESULT_FILE
        if not path.exists():
            return False
        try:
            prior = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable bisect.json ({exc}); use another --out") from None
        if prior.get("schema") != self.result["schema"]:
            raise ConfigError(f"{path} is not a rig bisect result; use another --out")
        same = {
            "source_tree": (prior.get("source_tree"), self.result["source_tree"]),
            "good commit": ((prior.get("good") or {}).get("commit"), self.good),
            "bad commit": ((prior.get("bad") or {}).get("commit"), self.bad),
            "device": (prior.get("device"), self.device.name),
            "confidence": (prior.get("confidence"), self.confidence),
            "max_soak_seconds": (prior.get("max_soak_seconds"), self.max_soak),
            "crash_title": (prior.get("crash_title"), self.crash_title),
        }
        for what, (was, now) in same.items():
            if was != now:
                raise ConfigError(
                    f"{path} holds another bisection ({what} was {was}, now {now}): rerun with the same "
                    "options to resume it, or give another --out"
                )
        self.result = prior
        if prior.get("status") in ("done", "inconclusive"):
            self.say(f"{path}: this bisection has finished already ({prior['status']}); nothing to do")
            return True
        self.result.pop("error", None)
        self.result["status"] = "running"
        self.result.setdefault("resumed", []).append(time.time())
        self.say(
            f"resuming {path}: {len(prior.get('bad_ref_attempts', []))} bad-ref attempt(s) and "
            f"{len(prior.get('steps', []))} step(s) already judged"
        )
        return False

    def run(self) -> dict[str, Any]:
        from rig.reports.board import BOARD_FILE, live_board

        with live_board(
            self.out / BOARD_FILE, self.console, enabled=self.live, title=f"rig bisect: {self.device.name}"
        ):
            return self._run()

    def _run(self) -> dict[str, Any]:
        from rig.device.dut import Dut
        from rig.reports.board import BOARD_FILE, BoardFeed, Sampler

        self.out.mkdir(parents=True, exist_ok=True)
        if self._resume():
            return self.result
        self.save()
        git = GitBisect(self.source, self.out / "tree")
        # A clean start: the device may be hung, or run an earlier build (Shadow-box cannot be unloaded).
        fresh_boot([self.device], self.out / "reset", self.console)
        dut = Dut(self.device, self.out / "console")
        dut.build_cache = self.build_cache or self.out / "builds"
        feed = BoardFeed(self.out / BOARD_FILE)
        sampler = Sampler(feed, lambda: [dut]).start()
        try:
            dut.open()
            oracle = Oracle(dut, interval=self.interval)
            oracle.board = feed
            rate = self._measure_bad(git, oracle)
            target = required_soak(rate, self.confidence)
            self.say(
                f"a 'good' needs {min(target, self.max_soak):.0f} s of NMIs without failure "
                f"(confidence {self.confidence:g} against a commit as bad as {self.bad_ref})"
            )
            if self.verify_good:
                self._verify_good(git, oracle, rate, target)
            done = self._replay(git)
            while not done:
                commit = git.head()
                self.say(f"testing {commit[:12]} {git.subject(commit)}")
                a = oracle.attempt(git.clone, commit, min(target, self.max_soak))
                step = judge_soak(a, rate, target, self.confidence, self.crash_title)
                step.subject = git.subject(commit)
                self.result["steps"].append(step.to_json())
                self.save()
                self.say(f"  {step.verdict}: {step.evidence}")
                done = git.mark(step.verdict, commit)
            self.result["git_bisect_log"] = git.log()
            if dut.shadowbox_loaded and not dut.needs_recovery:
                dut.unload_shadowbox()  # sbsim leaves the device as a boot would; Shadow-box stays (it cannot)
            if git.first_bad:
                self.result["first_bad"] = {"commit": git.first_bad, "subject": git.subject(git.first_bad)}
                self.result["status"] = "done"
            else:
                self.result["candidates"] = [{"commit": c, "subject": git.subject(c)} for c in git.candidates]
                self.result["status"] = "inconclusive"
        except BaseException as exc:
            self.result["status"] = "aborted"
            self.result["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.result["finished"] = time.time()
            self.save()
            sampler.stop()
            feed.state(dut.name, "done")
            dut.close()
        return self.result

    def _verify_good(self, git: GitBisect, oracle: Oracle, rate: float, target: float) -> None:
        """Soak the good ref as long as any 'good' verdict needs; stop if it fails.

        Why: git bisect trusts the good ref. If it has the bug too (intermittent, so nobody saw it),
        every commit between would be judged against a false premise and the "first bad commit"
        named would be wrong. One soak of the same length and confidence as a 'good' step settles
        it first. Recorded in ``good_ref_attempt``; a resumed run does not soak it again.
        """
        rec = self.result.get("good_ref_attempt")
        if rec is None:
            self.say(f"verifying the good ref {self.good_ref} ({self.good[:12]})")
            a = oracle.attempt(git.checkout(self.good), self.good, min(target, self.max_soak))
            step = judge_soak(a, rate, target, self.confidence, self.crash_title)
            rec = self.result["good_ref_attempt"] = {**a.to_json(), "verdict_for_bisect": step.verdict,
                                                     "confidence": step.confidence}  # fmt: skip
            self.save()
            self.say(f"  {step.evidence}")
        if rec["verdict_for_bisect"] == "bad":
            raise ConfigError(
                f"the good ref {self.good_ref} ({self.good[:12]}) fails too ({rec['evidence']} on {self.device.name}): "
                "it is not good; give an older --good"
            )
        if rec["verdict_for_bisect"] == "skip":
            raise ConfigError(f"the good ref {self.good_ref} cannot be tested on {self.device.name}: {rec['reason']}")

    def _replay(self, git: GitBisect) -> bool:
        """``git bisect start`` and the verdicts already recorded (a resumed run); True when that settles it."""
        done = git.start(self.bad, self.good)
        for i, step in enumerate(self.result["steps"], 1):
            if done:
                break
            head = git.head()
            if head != step["commit"]:
                raise ConfigError(
                    f"{self.out / RESULT_FILE}: step {i} judged {step['commit'][:12]} but git bisect now asks for "
                    f"{head[:12]} (did the history between the refs change?); give another --out"
                )
            done = git.mark(step["verdict"], head)
        return done

    def _measure_bad(self, git: GitBisect, oracle: Oracle) -> float:
        tree = git.checkout(self.bad)
        pairs = [(float(a["exposure"]), bool(a["failed"])) for a in self.result["bad_ref_attempts"]]
        for i in range(len(pairs), self.bad_attempts):
            self.say(f"measuring the bad ref {self.bad_ref} ({self.bad[:12]}): attempt {i + 1}/{self.bad_attempts}")
            a = oracle.attempt(tree, self.bad, self.max_soak)
            self.result["bad_ref_attempts"].append(a.to_json())
            self.save()
            self.say(f"  {a.evidence}")
            if a.untestable:
                raise ConfigError(f"the bad ref {self.bad_ref} cannot be tested on {self.device.name}: {a.reason}")
            pairs.append((a.exposure, a.failed and is_the_crash(a, self.crash_title)))
        rate = fit_rate(pairs)
        if rate is None:
            raise ConfigError(
                f"the bad ref {self.bad_ref} survived {len(pairs)} soak(s) of {self.max_soak:.0f} s on "
                f"{self.device.name}: no failure rate to bisect with; raise --max-soak-minutes or "
                "--bad-attempts, or check that the ref really fails"
            )
        ttf = analyse(pairs, self.confidence)
        plan = planning_rate(ttf.failures, ttf.exposure, self.confidence)
        self.result["rate"] = {
            "failures": ttf.failures,
            "exposure_seconds": round(ttf.exposure, 1),
            "per_second": rate,
            "mean_time_to_failure": round(1 / rate, 1),
            "model": "exponential, MLE: failures / total exposure (survivors censored)",
            # what the 'good' soaks are planned with: the MLE's uncertainty from few failures included
            "planning_per_second": plan,
            "time_to_failure": ttf.to_json(),  # times, censored survivors, exact interval (rig.runs.ttf)
        }
        self.say(f"bad ref: {ttf.summary()}")
        return plan


def render_steps(result: dict[str, Any]) -> Table:
    table = Table(title=f"rig bisect on {result['device']}")
    for col in ("#", "commit", "subject", "verdict", "evidence"):
        table.add_column(col)
    for a in result["bad_ref_attempts"]:
        table.add_row("bad", a["commit"][:12], f"(the bad ref {result['bad']['ref']})", "bad" if a["failed"] else "-",
                      a["evidence"])  # fmt: skip
    g = result.get("good_ref_attempt")
    if g is not None:
        table.add_row("good", g["commit"][:12], f"(the good ref {result['good']['ref']})", g["verdict_for_bisect"],
                      g["evidence"])  # fmt: skip
    for i, s in enumerate(result["steps"], 1):
        style = {"good": "green", "bad": "red"}.get(s["verdict"], "yellow")
        table.add_row(str(i), s["commit"][:12], s["subject"], f"[{style}]{s['verdict']}[/]", s["evidence"])
    return table


@click.command("bisect")
@click.option("--source-tree", required=True, type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="The Shadow-box git tree (only read: bisect runs in a clone).")  # fmt: skip
@click.option("--good", "good", required=True, metavar="REF", help="A commit without the failure.")
@click.option("--bad", "bad", required=True, metavar="REF", help="A commit with the failure.")
@click.option("--device", "name", required=True, help="The device that is the oracle.")
@click.option("--confidence", type=float, default=0.95, show_default=True, help="Wanted confidence of each 'good'.")
@click.option("--max-soak-minutes", type=float, default=60.0, show_default=True,
              help="Cap of one soak (bad-ref attempts and good verdicts).")  # fmt: skip
@click.option("--bad-attempts", type=int, default=2, show_default=True,
              help="Soaks of the bad ref to measure its time to failure.")  # fmt: skip
@click.option("--verify-good", is_flag=True,
              help="First soak the good ref as long as a 'good' verdict needs; stop if it fails too.")  # fmt: skip
@click.option("--nmi-interval", type=float, default=NMI_INTERVAL, show_default=True, help="Seconds between NMI rounds.")
@click.option("--crash-title", default=None, metavar="TEXT",
              help="Only a crash whose title contains TEXT is bad (e.g. 'KASAN: use-after-free Read in sb_'); "
              "other failures are recorded and the step is skipped.")  # fmt: skip
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Evidence folder (default <report-dir>/bisect-<time>); reuse it to resume.")  # fmt: skip
@click.option("--no-live", is_flag=True, help="No live device board (it is drawn only on a terminal anyway).")
@click.pass_context
def bisect_cmd(
    ctx: click.Context,
    source_tree: Path,
    good: str,
    bad: str,
    name: str,
    confidence: float,
    max_soak_minutes: float,
    bad_attempts: int,
    verify_good: bool,
    nmi_interval: float,
    crash_title: str | None,
    out: Path | None,
    no_live: bool,
) -> None:
    """Find the first bad commit between --good and --bad: build, deploy, soak on one device."""
    console = Console()
    root = ctx.find_root().obj or {}
    out = (out or Path(root.get("report_dir", "reports")) / f"bisect-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    try:
        (device,) = load_inventory(root.get("devices", [Path("devices")]), names=[name])
        run = BisectRun(
            source_tree.resolve(), good, bad, device, out, confidence=confidence,
            max_soak=max_soak_minutes * 60, bad_attempts=bad_attempts, interval=nmi_interval,
            verify_good=verify_good, console=console, crash_title=crash_title, live=board_wanted(None, no_live),
        )  # fmt: skip
        result = run.run()
    except LabFault as exc:
        console.print(render_steps(_load_partial(out)))
        raise click.ClickException(f"LAB FAULT (not a commit's fault): {exc}; evidence so far in {out}") from None
    except RigError as exc:
        raise click.ClickException(f"{exc} (evidence so far in {out / RESULT_FILE})") from None
    console.print(render_steps(result))
    if result["first_bad"]:
        fb = result["first_bad"]
        console.print(f"first bad commit: {fb['commit']} {fb['subject']}", highlight=False, soft_wrap=True)
        console.print(f"evidence: {out / RESULT_FILE}, console log: {out / 'console'}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_FOUND)
    cands = ", ".join(c["commit"][:12] for c in result["candidates"])
    console.print(f"inconclusive: the first bad commit is one of {cands} (the others could not be tested)")
    sys.exit(EXIT_INCONCLUSIVE)


def _load_partial(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / RESULT_FILE).read_text()))
