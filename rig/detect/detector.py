"""Console line -> events: the crash detector.

Why a separate, pure module: the console reader calls it on every line of every device, the
report and triage tools re-run it over saved logs, and tests feed it captured text. So it does
no I/O, starts no threads, imports nothing of the rig but :mod:`rig.vocab` and its rule table
:mod:`rig.detect.rules` (the kernel's report classes as data), and is cheap on the
99.9 % of lines that mean nothing: one combined pre-filter regex rejects them before any
specific pattern is tried; :meth:`Detector.scan` pre-filters a whole block of lines at once.

What a line may look like (everything in front of the message is stripped before matching):
``2025-01-02T03:04:05.678Z `` (the rig's ``console.log`` format, see :mod:`rig.console.capture`; its time
becomes :attr:`Event.time` when the caller gives none), a syslog level ``<4>``, a kernel
timestamp ``[   12.345678]`` with an optional caller id ``[    T1]``, a ``shadow-box: `` (or
Hyper-box ``alcatraz: ``) prefix, and a ``watchdog: `` / ``NMI watchdog: `` / ``rcu: `` /
``kernel: `` prefix.

Incident rule (one crash, one event; the monitor takes the FIRST crash event as the verdict):
    A crash-kind event (:data:`rig.vocab.CRASH_KINDS`) opens an *incident*. While it is open,
    further crash-kind lines are the same report and are not emitted (``BUG: kernel NULL
    pointer dereference`` then ``Oops: 0002`` is one OOPS; ``kernel BUG at`` then ``invalid
    opcode`` is one BUG; a repeated ``HANG`` banner or soft-lockup report is one event) --
    except escalations, emitted once per incident each because they say something new: the
    first ``Kernel panic - not syncing`` (the machine has stopped; ``[OOPS, PANIC]`` for an oops
    with ``panic_on_oops``) and the first soft/hard lockup (which CPU is stuck; a spinning CPU
    trips the RCU stall detector (21 s) before the soft-lockup one, giving
    ``[RCU_STALL, SOFT_LOCKUP]``). An incident closes at ``---[ end trace ... ]---``, at a boot banner,
    or after :attr:`Detector.incident_lines` lines with no crash-kind line.
Notice kinds (WARNING, NMI, SHADOWBOX_START/ALERT) never open or close incidents and are emitted
every time, except that a ``Dazed and confused`` line that follows an ``Uhhuh`` line is the same
NMI (both are printed for one unclaimed NMI) and ``------------[ cut here ]------------`` only
pairs with the ``WARNING:`` (or ``kernel BUG at``) line after it; a cut-here block that ends
without either is reported as one WARNING. SHADOWBOX_FAIL (a notice: the deploy step names the
failure) is emitted once per start attempt (attempts are separated by Shadow-box's banner).

Titles (:mod:`rig.detect.rules`): ``<report type> in <guilty function>``. The event is emitted at
the report's first line; the detector then reads up to :data:`REPORT_LINES` more lines (every
line, not only pre-filtered ones) for the first non-generic frame and sets the event's ``title``
when it finds it. A panic that only reports an earlier report (``Fatal exception``,
``panic_on_warn set``...) shares that report's title.
"""

from __future__ import annotations

import operator
import re
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import accumulate

from rig.detect.rules import GATE, PANIC_CONSEQUENCES, RULES, WHAT_ALIASES, Rule, skip_frame
from rig.vocab import CRASH_KINDS, EventKind

__all__ = ["Event", "Detector", "scan", "first_crash", "strip_prefixes"]


@dataclass
class Event:
    """One meaningful console line. ``title`` is short and stable (no addresses) for grouping.

    ``title`` is the one field that may still change after the event was returned: a crash report's
    first line says what happened, the lines after it say where (the guilty function, a KASAN
    access's Read/Write), so the detector completes the title as those lines arrive -- within
    :data:`REPORT_LINES` lines of the first. The kind, line and text never change, and the event
    is returned at once (the monitor's verdict does not wait for the stack trace).
    """

    kind: EventKind
    line_no: int
    text: str
    time: float | None
    cpu: int | None
    title: str


# --- the cheap pre-filter: every line that can produce an event or change state contains one of
# these literals. Keep it in sync with the rules below (tests feed every rule through feed()).
_TRIGGERS = (
    "Linux version",
    "BUG",
    "Oops",
    "Kernel panic",
    "PANIC: ",
    "general protection fault",
    "LOCKUP",
    "INFO: ",
    "WARNING: ",
    "cut here",
    "end trace",
    "NMI",
    "Dazed",
    "Unable to handle kernel",
    "invalid opcode:",
    "stack segment: ",
    "divide error: ",
    "int3: ",
    "UBSAN: ",
    "Usage count",
    "Busy inodes",
    "Internal error: ",
    "Unhandled fault: ",
    "shadow-box: ",
    "alcatraz: ",
    "VM [",
    "Execution ",
    "VMX ",
    "Kernel version is not",
    "errorcode=",
    "GRMCODE=",
    "HANG ",
    "Hypervisor-Based Kernel Protector",
)
_PREFILTER = re.compile("|".join(re.escape(t) for t in _TRIGGERS))
#: The block pre-filter's anchors (:meth:`Detector.scan`). Invariant: every line that can produce
#: an event or change the detector's state contains one of them -- each rule in
#: :meth:`Detector._classify` / :meth:`Detector._shadowbox` matches only text that contains the
#: anchor noted here, and the rule text is a suffix of the line (prefix stripping only cuts the
#: front). A Shadow-box line without one of its rule words (most of its chatter) changes nothing.
#: An anchor that contains no :data:`_TRIGGERS` literal ("weak": ``NFO: ``, the trap words, which
#: the ``trap`` rule also matches as ``int3 at``) only nominates a line: it must still pass the
#: per-line pre-filter, as in :meth:`Detector.feed`.
#: Why these spellings: anchors that start with an upper-case letter or ``-`` are found together
#: by one regex (:func:`_first_letter_trie`: ``re`` skips positions whose character starts none);
#: the others cost one ``str.find`` pass each over the block, fast for long words. A short or
#: broad anchor costs false candidates: ``NMI`` alone would also pick ``ACPI: LAPIC_NMI`` and
#: ``Perf NMI watchdog`` on every boot, ``shadow-box: `` every line Shadow-box prints.
#: tests/test_detect.py checks that block and per-line scanning give the same events.
_TRIE_ANCHORS = (
    "Linux version",  # _BANNER
    "VM [",  # _SB_VM (with or without a shadow-box: prefix)
    "Hypervisor-Based Kernel Protector",  # _shadowbox: a new start attempt
    "Execution ",  # _shadowbox: Execution Complete / Fail
    "Kernel version is not",  # _shadowbox
    "VMX ",  # _shadowbox: VMX not support / is disabled by BIOS
    "HANG ",  # _SB_HANG
    "GRMCODE=",  # _SB_GRMCODE
    "-[ cut here",  # _CUT_HERE
    "-[ end trace",  # _END_TRACE
    "NMI received",  # _UHHUH
    "Dazed and confused",  # _DAZED
    "NMI backtrace",  # _NMI_BT
    "NFO: ",  # _NMI_SLOW, RULES: rcu stall, hung task, lockdep ("INFO: ": I is common, N less so)
    "Kernel panic - not syncing",  # RULES: panic
    "BUG",  # RULES: soft lockup, oopses, kernel BUG, BUG:, sanitizers, "[ BUG: " lockdep
    "LOCKUP",  # RULES: hard lockup
    "Oops",  # RULES: oops, gpf, trap
    "Unable to handle kernel",  # RULES: arm fault
    "Unhandled fault",  # RULES: trap
    "UBSAN: ",  # RULES: ubsan
    "Usage count",  # RULES: netdev refcount ("unregister_netdevice: waiting ... Usage count = N": u is common)
    "VFS: Busy inodes",  # RULES: busy inodes
    "WARNING: ",  # RULES: warn..., lockdep
)
_FIND_ANCHORS = (
    "errorcode=",  # _SB_ERRORCODE
    "PANIC: double fault",  # RULES: double fault (P is the commonest capital in console text)
    "general protection fault",  # RULES: gpf
    "invalid opcode",  # RULES: trap ...
    "stack segment",
    "divide error",
    "int3",
    "Internal error",
)
_ANCHORS = _TRIE_ANCHORS + _FIND_ANCHORS
#: Anchors that contain a :data:`_TRIGGERS` literal; a line found only by another (a trap word)
#: still takes the per-line pre-filter.
_STRONG = frozenset(a for a in _ANCHORS if any(t in a for t in _TRIGGERS))


def _first_letter_trie(words: list[str]) -> re.Pattern[str]:
    """One regex for ``words`` grouped by first letter (``B(?:UG)|O(?:ops)|...``).

    Why: ``re`` skips positions whose character cannot start a match, so words that start
    with an upper-case letter or ``-`` (rarer than lower-case ones in console text) are found
    in one pass, cheaper than one ``str.find`` pass each (measured: ~25 % less).
    """
    groups: dict[str, list[str]] = {}
    for w in words:
        groups.setdefault(w[0], []).append(re.escape(w[1:]))
    return re.compile("|".join(f"{re.escape(k)}(?:{'|'.join(v)})" for k, v in groups.items()))


_TRIE = _first_letter_trie(list(_TRIE_ANCHORS))

#: Below this many lines :meth:`Detector.scan` feeds line by line (a few lines at a time, as a
#: live console delivers them); the block pre-filter's fixed cost (one join, one regex pass, one
#: ``find`` pass per other anchor) pays off only on blocks.
BLOCK_MIN_LINES = 24

# --- prefixes
_ISO = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?) ")
_HEAD = re.compile(
    r"(?:(?:kern|user|daemon|syslog|local\d)\s*:\s*(?:emerg|alert|crit|err|warn|notice|info|debug)\s*: )?"  # dmesg -x
    r"(?:<\d{1,3}>)?"  # syslog level
    r"(?:\[\s*\d+\.\d+\](?: ?\[\s*[TC]\d+\])? ?"  # kernel timestamp, optional caller id
    r"|\[[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}\] )?"  # or dmesg -T's wall time
)
_SB_PREFIX = re.compile(r"(?:shadow-box|alcatraz): ")
_SUBSYS = re.compile(r"(?:NMI watchdog|watchdog|rcu|kernel): ")

# --- kernel rules: the report classes are data (rig.detect.rules.RULES); these are the lines with state
#: The boot banner, wherever it is in the line: after a reset the new boot's first line is often glued
#: to the last of the old one (no line end before the reset) or to firmware output.
_BANNER = re.compile(r"Linux version (\S+) \(")
_CUT_HERE = "------------[ cut here ]------------"
_END_TRACE = re.compile(r"---\[ end trace")
_HARMLESS_INFO = ("INFO: lockdep is turned off",)
#: What a message must start with for any kernel rule below the Shadow-box ones to match (the
#: rules that search anywhere, _UHHUH and the hard lockup, are checked with ``in``).
_KERNEL_GATE = re.compile(r"---|Dazed|NMI backtrace|INFO: NMI|" + GATE.pattern)
_SEARCH_RULES = tuple(r for r in RULES if r.search)
_START_RULES = tuple(r for r in RULES if not r.search)
#: How many lines after a report's first line are read for its guilty function (a hung task's
#: trace starts ~5 lines in, an RCU stall's stalled CPU ~30; the rest of a report names nothing new).
REPORT_LINES = 120
# --- a report's body: frames and the lines that end it
_FRAME = re.compile(
    r"\s*(?:(?:RIP|IP|EIP|NIP|pc|PC is at|EIP is at)\s*:?\s*(?:\d{4}:)?)?(?:\[<[0-9a-fA-F]+>\]\s*)*(\? )?"
    r"([A-Za-z_][\w.]*)\+0x[0-9a-f]+(?:/0x[0-9a-f]+)?"
)
_AT = re.compile(r", at: (?:\[<[0-9a-fA-F]+>\]\s*)?([A-Za-z_][\w.]*)\+0x")
_CALLER = re.compile(r"caller is ([A-Za-z_][\w.]*)\+0x")
_ACCESS = re.compile(r"(Read|Write) of size \d")
_IRQ_OPEN = frozenset({"<IRQ>", "<NMI>", "<SOFTIRQ>"})
_IRQ_CLOSE = frozenset({"</IRQ>", "</NMI>", "</SOFTIRQ>", "<EOI>", "<TASK>"})
#: Sections of a report that show another task than the guilty one (RCU prints its own kthread).
_IGNORE_FROM = ("rcu: RCU grace-period kthread stack dump:", "RCU grace-period kthread stack dump:")
_IGNORE_UNTIL = (
    "rcu: Stack dump where RCU GP kthread last ran:",
    "Stack dump where RCU GP kthread last ran:",
    "Sending NMI",
    "NMI backtrace for cpu",
)
_REPORT_END = ("---[ end trace", "Kernel Offset:", "---[ end Kernel panic")
_FUNC_SUFFIX = re.compile(r"\.(?:cold|isra|constprop|part|llvm|lto_priv|localalias)\b.*$")
# --- NMI evidence
_UHHUH = re.compile(r"Uhhuh\. NMI received for unknown reason \w+ on CPU (\d{1,6})")
_DAZED = "Dazed and confused, but trying to continue"
_NMI_BT = re.compile(r"NMI backtrace for cpu (\d{1,6})")
_NMI_SLOW = re.compile(r"INFO: NMI handler \((.*?)\) took too long")
# --- Shadow-box
_SB_VM = re.compile(r"VM \[(\d{1,6})\] (?:GRMCODE=\d+ )?(.*)")
_SB_ALERTS = (
    ("Memory attack", "Memory attack"),
    ("GDTR or IDTR attack", "GDTR or IDTR attack"),
    ("Task count is different", "Task count is different"),
    ("Hidden task", "Hidden task"),
    ("Module count is different", "Module count is different"),
    ("Hidden module", "Hidden module"),
    ("Process try to unload", "unload attempt"),
)
_SB_HANG = re.compile(r"HANG (\S.*?)\s*$")
_SB_ERRORCODE = re.compile(r"errorcode=(-?\d{1,9})")
_SB_GRMCODE = re.compile(r"GRMCODE=(\d+)")
#: Gooroom result codes that mean success (``Execution Complete`` is followed by 020008).
SB_GRM_OK = frozenset({"020008"})

#: The title of a ``cut here`` block that ends without a ``WARNING:`` line (a ``WARN()`` with a
#: message only): its guilty function is the block's first non-generic frame.
_CUT_RULE = Rule(
    "cut here",
    re.compile("$^"),
    EventKind.WARNING,
    "WARNING in {func}",
    guilty="stack",
    fallback="WARNING (cut here block)",
)

#: Crash kinds that are still emitted inside an open incident, once per group, because they say
#: something new: the machine stopped (panic) / which CPU is stuck (a lockup after an RCU stall).
_ESCALATION: dict[EventKind, str] = {
    EventKind.PANIC: "panic",
    EventKind.SOFT_LOCKUP: "lockup",
    EventKind.HARD_LOCKUP: "lockup",
}

_ADDR = re.compile(
    r"\+0x[0-9a-f]+(?:/0x[0-9a-f]+)?|\b0x[0-9a-f]+\b|\b[0-9a-f]{8,}\b|\[<[0-9a-f]+>\]"
    r"|\bCPU#?:? ?\d+\b|\bcpu ?\d+\b|\bPID: ?\d+|\bpid[:=] ?\d+|\[\S+:\d+\]|\[[0-9a-f]{8,}\]"
)
_SPACES = re.compile(r"\s{2,}")


def _tidy(s: str, limit: int = 80) -> str:
    """Drop addresses, offsets, CPU numbers and PIDs so that titles of the same problem compare equal."""
    s = _ADDR.sub("", s).strip(" ,:!.")
    s = _SPACES.sub(" ", s)
    return s[:limit]


def _func(name: str) -> str:
    """A function name without the compiler's clone suffix (``foo.cold``, ``foo.isra.0`` are ``foo``)."""
    return _FUNC_SUFFIX.sub("", name)


class _Report:
    """A crash report being read: completes its events' titles from the lines after its first.

    Why a small object: the guilty function is found lines later (a RIP line, a call trace, a
    lockdep ``at:`` line); the events were already returned, so they are kept here and their title
    is set again whenever it improves, until the report is resolved or ends.
    """

    __slots__ = ("rule", "groups", "events", "func", "spare", "access", "left", "in_irq", "ignoring")

    def __init__(self, rule: Rule, groups: dict[str, str]) -> None:
        self.rule = rule
        self.groups = groups
        self.events: list[Event] = []
        self.func: str | None = None  # the guilty function
        self.spare: str | None = None  # a stack frame, for "at"/"caller" rules that find no better
        self.access: str | None = None  # KASAN: " Read" / " Write"
        self.left = REPORT_LINES
        self.in_irq = False
        self.ignoring = False
        line_func = groups.get("func")
        if rule.guilty == "line" and line_func and not skip_frame(_func(line_func)):
            self.func = _func(line_func)

    @property
    def resolved(self) -> bool:
        if self.rule.guilty == "none":
            return True
        return self.func is not None and (not self.rule.access or self.access is not None)

    def title(self) -> str:
        g = dict(self.groups)
        func = self.func or self.spare
        g["access"] = self.access or ""
        try:
            if func is None:
                return _tidy(self.rule.fallback_title.format_map(_Missing(g)), 100)
            g["func"] = func
            return _tidy(self.rule.title.format_map(_Missing(g)), 100)
        except (ValueError, IndexError, KeyError):  # a template error is a rule-table bug; never lose the event
            return self.rule.name

    def add(self, event: Event) -> None:
        self.events.append(event)
        event.title = self.title()

    def line(self, msg: str) -> bool:
        """Read one line of the report's body; False when the report is over (resolved or ended)."""
        self.left -= 1
        s = msg.strip()
        if self.left < 0 or s.startswith(_REPORT_END) or _BANNER.search(s):
            return False
        if s in _IRQ_OPEN:
            self.in_irq = True
            return True
        if s in _IRQ_CLOSE:
            self.in_irq = False
            return True
        if s.startswith(_IGNORE_FROM):
            self.ignoring = True
            return True
        if self.ignoring:
            if not s.startswith(_IGNORE_UNTIL):
                return True
            self.ignoring = False
        rule = self.rule
        before = (self.func, self.spare, self.access)
        if rule.access and self.access is None:
            m = _ACCESS.match(s)
            if m:
                self.access = " " + m.group(1)
        if self.func is None:
            if rule.guilty in ("at", "caller"):
                m = (_AT.search if rule.guilty == "at" else _CALLER.search)(s)
                if m and not skip_frame(_func(m.group(1))):
                    self.func = _func(m.group(1))
            m = _FRAME.match(msg)
            if m and m.group(1) is None and (rule.irq or not self.in_irq):
                name = _func(m.group(2))
                if not skip_frame(name):
                    if rule.guilty in ("at", "caller"):
                        self.spare = self.spare or name
                    else:
                        self.func = name
        if (self.func, self.spare, self.access) != before:
            title = self.title()
            for e in self.events:
                e.title = title
        return not self.resolved


class _Missing(dict):  # type: ignore[type-arg]
    """``format_map`` mapping that renders a group the pattern did not capture as empty."""

    def __missing__(self, key: str) -> str:
        return ""


def strip_prefixes(line: str) -> tuple[str, float | None, bool]:
    """Return ``(message, wall_time_or_None, had_shadowbox_prefix)`` for one console line.

    Why exported: the monitor and triage show the message the way a person reads it.
    """
    s = line.rstrip("\r\n")
    t: float | None = None
    m = _ISO.match(s)
    if m:
        try:
            t = datetime.fromisoformat(m.group(1)).timestamp()
        except ValueError:
            t = None
        s = s[m.end() :]
    s = s[_HEAD.match(s).end() :]  # type: ignore[union-attr]  # _HEAD matches the empty string
    sb = False
    m2 = _SB_PREFIX.match(s)
    if m2:
        sb = True
        s = s[m2.end() :]
    else:
        m3 = _SUBSYS.match(s)
        if m3:
            s = s[m3.end() :]
    return s, t, sb


class Detector:
    """Stateful line classifier for one console (one device). Feed lines in order.

    ``booted``: set when capture starts mid-run, so that the first ``Linux version`` banner seen
    is already a REBOOT. ``incident_lines``: how many lines without a crash line close an
    incident (see the module docstring).
    """

    def __init__(self, *, booted: bool = False, incident_lines: int = 300) -> None:
        self.booted = booted
        self.boots = 0
        self.incident_lines = incident_lines
        self.line_no = 0
        self._incident_last: int | None = None  # line number of the last crash line of the open incident
        self._incident_groups: set[str] = set()
        self._cut_here: int | None = None  # line number of a pending "cut here"
        self._uhhuh_pending = 0
        self._sb_failed = False  # a SHADOWBOX_FAIL was emitted for the current start attempt
        self._report: _Report | None = None  # the report whose body is being read for its title
        self._cut_report: _Report | None = None  # the frames of a pending "cut here" block
        self._root: tuple[int, _Report] | None = None  # the last report (line, report): a panic's root cause

    # -- public
    def feed(self, line: str, *, line_no: int | None = None, time: float | None = None) -> list[Event]:
        """Classify one line; return the events it produces (usually none)."""
        if line_no is None:
            self.line_no += 1
            line_no = self.line_no
        else:
            self.line_no = line_no
        if self._report is not None:
            self._body(line)
        if not _PREFILTER.search(line):
            return []
        return self._feed_hit(line, line_no, time)

    def _body(self, line: str) -> None:
        """One line of the open report's body (see :class:`_Report`)."""
        report = self._report
        assert report is not None
        msg = strip_prefixes(line)[0]
        if not report.line(msg):
            self._report = None

    def _feed_hit(self, line: str, line_no: int, time: float | None) -> list[Event]:
        """:meth:`feed` for a line that passed the pre-filter (``self.line_no`` is the caller's job)."""
        msg, t, sb = strip_prefixes(line)
        if time is None:
            time = t
        text = line.rstrip("\r\n")
        if t is not None:
            m = _ISO.match(text)
            if m is not None:
                text = text[m.end() :]
        if self._incident_last is not None and line_no - self._incident_last > self.incident_lines:
            self._close_incident()
        hit = self._classify(msg, sb, line_no)
        if hit is None:
            return []
        kind, cpu, title, report = hit
        if kind is EventKind.SHADOWBOX_FAIL:
            # "VMX not support", "Execution Fail", "errorcode=2" are one failed start attempt.
            if self._sb_failed:
                return []
            self._sb_failed = True
        if kind in CRASH_KINDS:
            open_ = self._incident_last is not None
            self._incident_last = line_no
            group = _ESCALATION.get(kind)
            if open_ and (group is None or group in self._incident_groups):
                return []
            if group is not None:
                self._incident_groups.add(group)
        event = Event(kind=kind, line_no=line_no, text=text, time=time, cpu=cpu, title=title)
        if report is not None:
            report.add(event)
            if report.events == [event]:  # a report of its own (a panic may join its root's)
                self._root = (line_no, report)
                self._report = None if report.resolved else report
        return [event]

    def scan(self, lines: Iterable[str]) -> list[Event]:
        """Feed every line (numbered from the detector's current position); return all events.

        Same events as calling :meth:`feed` on each line, but a block of lines is pre-filtered
        at once: the lines are joined and the anchors (:data:`_TRIE_ANCHORS`,
        :data:`_FIND_ANCHORS`) are searched over the whole block in C (one regex pass, a few
        ``str.find`` passes), so only the lines that contain one (about 3 % of the lab's
        captures) cost a Python call. Why not the per-line regex of :meth:`feed`: a ``re``
        alternation of ~30 literals is tried alternative by alternative at every position, and a
        Python call per line is most of the rest (BENCHMARKS.md, detector). The live monitor
        feeds one line at a time and keeps :meth:`feed`; both give the same events. While a
        crash report's body is read for its title (at most :data:`REPORT_LINES` lines), every
        line is fed.
        """
        if not isinstance(lines, list):
            lines = list(lines)
        feed = self.feed
        out: list[Event] = []
        if len(lines) < BLOCK_MIN_LINES:
            for line in lines:
                ev = feed(line)
                if ev:
                    out.extend(ev)
            return out
        base = self.line_no
        feed_hit = self._feed_hit
        pos = 0  # lines before this index are done
        for i, checked in _candidates(lines):
            if i < pos:
                continue
            while self._report is not None and pos < i:  # a report's body: every line counts
                self.line_no = base + pos + 1
                self._body(lines[pos])
                pos += 1
            line = lines[i]
            self.line_no = base + i + 1
            if self._report is not None:
                self._body(line)
            if checked or _PREFILTER.search(line):
                ev = feed_hit(line, base + i + 1, None)
                if ev:
                    out.extend(ev)
            pos = i + 1
        while self._report is not None and pos < len(lines):
            self.line_no = base + pos + 1
            self._body(lines[pos])
            pos += 1
        self.line_no = base + len(lines)
        return out

    @property
    def in_incident(self) -> bool:
        """True while a crash report is being printed (the monitor keeps reading a while):
        a crash line was seen within the last :attr:`incident_lines` lines (see the incident rule)."""
        last = self._incident_last
        return last is not None and self.line_no - last <= self.incident_lines

    # -- internals
    def _close_incident(self) -> None:
        self._incident_last = None
        self._incident_groups = set()

    def _classify(self, msg: str, sb: bool, line_no: int) -> tuple[EventKind, int | None, str, _Report | None] | None:
        # Boot banner first: it resets all state.
        m = _BANNER.search(msg) if "Linux version" in msg else None
        if m:
            self._close_incident()
            self._cut_here = None
            self._cut_report = None
            self._report = None
            self._root = None
            self._uhhuh_pending = 0
            self.boots += 1
            if self.booted:
                return EventKind.REBOOT, None, "unexpected reboot", None
            self.booted = True
            return None

        if sb or _SB_VM.match(msg):
            hit = self._shadowbox(msg)
            if hit is not None:
                return (*hit, None)

        # Nothing below can match? (Most Shadow-box chatter and NMI-adjacent lines end here.)
        if not _KERNEL_GATE.match(msg) and "Uhhuh" not in msg and "hard LOCKUP" not in msg:
            return None

        # A pending "cut here" pairs with the next WARNING / kernel BUG line.
        if msg.startswith(_CUT_HERE):
            self._cut_here = line_no
            self._cut_report = self._report = _Report(_CUT_RULE, {})
            return None
        if _END_TRACE.match(msg):
            pending, cut = self._cut_here, self._cut_report
            self._cut_here = self._cut_report = None
            self._close_incident()
            if pending is not None and cut is not None:
                cut.left = 0  # the block is over: no frame after it is the warning's
                return EventKind.WARNING, None, cut.title(), cut
            return None

        # NMI evidence (before INFO:, which "NMI handler took too long" also starts with).
        m = _UHHUH.search(msg)
        if m:
            self._uhhuh_pending = min(self._uhhuh_pending + 1, 64)
            return EventKind.NMI, int(m.group(1)), f"NMI unknown reason CPU#{m.group(1)}", None
        if msg.startswith(_DAZED):
            if self._uhhuh_pending:
                self._uhhuh_pending -= 1
                return None
            return EventKind.NMI, None, "NMI unknown reason", None
        m = _NMI_BT.match(msg)
        if m:
            return EventKind.NMI, int(m.group(1)), f"NMI backtrace CPU#{m.group(1)}", None
        m = _NMI_SLOW.match(msg)
        if m:
            return EventKind.NMI, None, "NMI handler took too long", None
        if msg.startswith(_HARMLESS_INFO):
            return None

        for rule in _SEARCH_RULES:
            if rule.needle in msg:
                m = rule.pattern.search(msg)
                if m:
                    return self._report_hit(rule, m, line_no)
        if not GATE.match(msg):
            return None
        for rule in _START_RULES:
            m = rule.pattern.match(msg)
            if m:
                return self._report_hit(rule, m, line_no)
        return None

    def _report_hit(
        self, rule: Rule, m: re.Match[str], line_no: int
    ) -> tuple[EventKind, int | None, str, _Report | None]:
        """The event of a report's first line (``rule`` matched as ``m``), with its title's report."""
        groups = {k: v for k, v in m.groupdict().items() if v is not None}
        what = groups.get("what")
        if what is not None:
            groups["what"] = WHAT_ALIASES.get(what, what)
        cpu = int(groups["cpu"]) if "cpu" in groups else None
        if rule.kind in (EventKind.WARNING, EventKind.BUG) and rule.name != "panic":
            self._cut_here = None
            self._cut_report = None
        if rule.name == "panic":
            root = self._root
            if (
                root is not None
                and PANIC_CONSEQUENCES.match(groups.get("msg", ""))
                and line_no - root[0] <= self.incident_lines
            ):
                return rule.kind, cpu, root[1].title(), root[1]
        report = _Report(rule, groups)
        return rule.kind, cpu, report.title(), report

    def _shadowbox(self, msg: str) -> tuple[EventKind, int | None, str] | None:
        cpu: int | None = None
        body = msg
        if "Hypervisor-Based Kernel Protector" in msg or msg.startswith("Execution Complete"):
            self._sb_failed = False  # a new start attempt (banner) or a successful one
        m = _SB_VM.match(msg)
        if m:
            cpu = int(m.group(1))
            body = m.group(2)
            if "INT NMI callback" in body:
                return EventKind.NMI, cpu, f"shadow-box NMI callback CPU#{cpu}"
            if "NMI Interrupt Occured" in body:
                return EventKind.SHADOWBOX_HANG, cpu, "NMI Interrupt Occured"
            if "Thread run fail" in body:
                return EventKind.SHADOWBOX_FAIL, cpu, "Thread run fail"
            for needle, title in _SB_ALERTS:
                if needle in body:
                    return EventKind.SHADOWBOX_ALERT, cpu, title
            return None
        body = body.strip()
        if body.startswith("Execution Complete"):
            return EventKind.SHADOWBOX_START, None, "Execution Complete"
        if body.startswith("Execution Fail"):
            return EventKind.SHADOWBOX_FAIL, None, "Execution Fail"
        if body.startswith("Kernel version is not supported"):
            return EventKind.SHADOWBOX_FAIL, None, "kernel version not supported"
        if body.startswith(("[*] VMX not support", "VMX not support")):
            return EventKind.SHADOWBOX_FAIL, None, "VMX not supported"
        if body.startswith(("[*] VMX is disabled by BIOS", "VMX is disabled by BIOS")):
            return EventKind.SHADOWBOX_FAIL, None, "VMX disabled by BIOS"
        m2 = _SB_HANG.match(body)
        if m2:
            return EventKind.SHADOWBOX_HANG, None, f"HANG {_tidy(m2.group(1))}"
        m2 = _SB_ERRORCODE.search(body)
        if m2:
            if int(m2.group(1)) != 0:
                return EventKind.SHADOWBOX_FAIL, None, f"errorcode={int(m2.group(1))}"
            return None
        m2 = _SB_GRMCODE.search(body)
        if m2 and m2.group(1) not in SB_GRM_OK:
            return EventKind.SHADOWBOX_FAIL, None, f"GRMCODE={m2.group(1)}"
        return None


def _candidates(lines: list[str]) -> list[tuple[int, bool]]:
    """``(index, passed_prefilter)`` of the lines that contain an anchor, in order: the block pre-filter.

    ``passed_prefilter`` is True when a found anchor contains a :data:`_TRIGGERS` literal (so the
    per-line pre-filter would pass it); a line found only by a trap word is checked again.
    The lines are joined with a separator that no anchor contains, so no hit spans two lines,
    and after a hit the search for that anchor resumes at the next line (a line full of
    ``VM [`` costs one step). A hit's line index is the number of separators before it, counted
    once over the block in order. The separator is NUL (the console reader drops control
    characters, so its lines have none); a block whose lines contain NULs is mapped with a
    table of line end offsets instead.
    """
    sep = "\x00"
    text = sep.join(lines)
    find = text.find
    hits: list[int] = []
    weak: set[int] = set()
    search = _TRIE.search
    m = search(text)
    while m is not None:
        p = m.start()
        hits.append(p)
        if m.group() not in _STRONG:
            weak.add(p)
        e = find(sep, p)
        if e < 0:
            break
        m = search(text, e + 1)
    for anchor in _FIND_ANCHORS:
        strong = anchor in _STRONG
        p = find(anchor)
        while p >= 0:
            hits.append(p)
            if not strong:
                weak.add(p)
            e = find(sep, p)
            if e < 0:
                break
            p = find(anchor, e + 1)
    if not hits:
        return []
    hits.sort()
    if text.count(sep) == len(lines) - 1:
        # The separator occurs only between lines: a hit's line is the number of separators before it.
        count = text.count
        idxs, prev, idx = [], 0, 0
        for p in hits:
            idx += count(sep, prev, p)
            prev = p
            idxs.append(idx)
    else:  # a line holds the separator itself: find each hit's line by its end offset
        ends = list(map(operator.add, accumulate(map(len, lines)), range(len(lines))))
        idxs = [bisect_left(ends, p) for p in hits]
    out: list[tuple[int, bool]] = []
    for idx, p in zip(idxs, hits, strict=True):
        strong = p not in weak
        if out and out[-1][0] == idx:  # one entry per line: strong if any of its hits is
            if strong and not out[-1][1]:
                out[-1] = (idx, True)
            continue
        out.append((idx, strong))
    return out


def scan(lines: Iterable[str], *, booted: bool = False) -> list[Event]:
    """Run a fresh :class:`Detector` over ``lines`` (a saved log, a test capture)."""
    return Detector(booted=booted).scan(lines)


def first_crash(events: Iterable[Event]) -> Event | None:
    """The first crash-kind event, or None. The monitor turns it into ``crash(<kind>)``."""
    for ev in events:
        if ev.kind in CRASH_KINDS:
            return ev
    return None
