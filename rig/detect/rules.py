"""The kernel's crash report classes as data: which first line opens a report, its kind, its title.

Why data and not code: a kernel developer reads "which report types does the rig know, and what does
it call them" off this one table (docs/triage.md lists the same classes with example lines), and a new
class is one row. The idea is syzkaller's ``pkg/report`` (report start line -> title template, a
guilty function taken from the report's stack trace, a list of generic frames never to blame); the
rows were written here from the kernel's own printk formats (x86 and arm64, 2.6.3x to 6.x), not
copied from syzkaller.

A row's ``title`` is a ``str.format`` template over the pattern's named groups and ``{func}``, the
*guilty function*: the first frame of the report's stack that is not generic (:data:`SKIP_FRAMES`).
Titles name no address, offset, PID, CPU number or source line, so the same bug gets the same title
on every run, device and kernel build (rig/detect/detector.py tidies the groups). :mod:`rig.detect.detector` applies
the rows in order; the first that matches wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rig.vocab import EventKind

__all__ = ["Rule", "RULES", "GATE", "SKIP_FRAMES", "PANIC_CONSEQUENCES", "WHAT_ALIASES", "skip_frame"]


@dataclass(frozen=True)
class Rule:
    """One report class.

    ``guilty``: where the guilty function comes from -- ``none`` (no function: the title is the
    message), ``line`` (the ``func`` group of the first line, unless generic: then ``stack``),
    ``stack`` (the first non-generic frame: ``RIP:``/``pc :`` lines and call-trace frames, in the
    order printed), ``at`` (lockdep: the first non-generic ``..., at: func+0x`` lock line, else the
    stack), ``caller`` (``caller is func+0x``, else the stack). ``fallback``: the title when no
    function is found (default: ``title`` without `` in {func}``). ``search``: the pattern may occur
    anywhere in the message (default: at its start; ``needle``: a literal it contains). ``irq``:
    frames inside ``<IRQ>``/``<NMI>`` sections may be guilty (not for stalls and lockups: there they
    are the detector's own path).
    ``access``: a KASAN report, whose title says ``Read`` or ``Write`` from the line after it.
    """

    name: str
    pattern: re.Pattern[str]
    kind: EventKind
    title: str
    guilty: str = "none"
    fallback: str | None = None
    search: bool = False
    irq: bool = True
    access: bool = False
    needle: str = ""  # a ``search`` rule: a literal its match contains (a cheap ``in`` test first)

    @property
    def fallback_title(self) -> str:
        return self.fallback if self.fallback is not None else self.title.replace(" in {func}", "")


def _r(name: str, pattern: str, kind: EventKind, title: str, **kw: object) -> Rule:
    return Rule(name, re.compile(pattern), kind, title, **kw)  # type: ignore[arg-type]


_F = r"(?P<func>[A-Za-z_][\w.]*)"  # a function name as the kernel prints it (%pS, before +0x...)
B, OOPS, P, W = EventKind.BUG, EventKind.OOPS, EventKind.PANIC, EventKind.WARNING

#: The report classes, in the order they are tried (the first match wins). The ``Kernel panic``
#: row comes first: rig/detect/detector.py gives a panic that only reports an earlier report
#: (:data:`PANIC_CONSEQUENCES`) that report's title.
RULES: tuple[Rule, ...] = (
    _r("panic", r"Kernel panic - not syncing: ?(?:kernel: )?(?P<msg>.*?)(?: exitcode=.*)?$", P, "kernel panic: {msg}"),
    _r("double fault", r"PANIC: double fault", P, "PANIC: double fault in {func}", guilty="stack"),
    # --- lockups, stalls, hung tasks
    _r(
        "soft lockup",
        r"BUG: soft lockup - CPU#(?P<cpu>\d{1,6}) stuck for",
        EventKind.SOFT_LOCKUP,
        "BUG: soft lockup in {func}",
        guilty="stack",
        irq=False,
    ),
    _r(
        "hard lockup",
        r"Watchdog detected hard LOCKUP on cpu (?P<cpu>\d{1,6})",
        EventKind.HARD_LOCKUP,
        "watchdog: hard LOCKUP in {func}",
        guilty="stack",
        search=True,
        needle="hard LOCKUP",
        irq=False,
    ),
    _r(
        "rcu stall",
        r"INFO: (?:rcu_\w+ (?:self-)?detected (?:expedited )?stall|RCU detected CPU \d+ stall)",
        EventKind.RCU_STALL,
        "INFO: rcu detected stall in {func}",
        guilty="stack",
        irq=False,
    ),
    _r(
        "hung task",
        r"INFO: task .+:\d+ blocked for more than \d+ seconds",
        EventKind.HUNG_TASK,
        "INFO: task hung in {func}",
        guilty="stack",
    ),
    _r(
        "task can't die",
        r"INFO: task .+:\d+ can't die for more than \d+ seconds",
        EventKind.HUNG_TASK,
        "INFO: task can't die in {func}",
        guilty="stack",
    ),
    # --- oopses: the title says what the CPU trapped on; the guilty function is where (RIP first)
    _r(
        "null deref",
        r"BUG: (?:unable to handle kernel |kernel )NULL pointer dereference",
        OOPS,
        "BUG: kernel NULL pointer dereference in {func}",
        guilty="stack",
    ),
    _r(
        "page fault",
        r"BUG: unable to handle (?:page fault|kernel paging request|kernel)",
        OOPS,
        "BUG: unable to handle page fault in {func}",
        guilty="stack",
    ),
    _r(
        "arm fault",
        r"Unable to handle kernel (?P<what>NULL pointer dereference|paging request|[a-zA-Z ]+?)(?= at|:|$)",
        OOPS,
        "Unable to handle kernel {what} in {func}",
        guilty="stack",
    ),
    _r(
        "gpf",
        r"(?:Oops: )?general protection fault",
        EventKind.GPF,
        "general protection fault in {func}",
        guilty="stack",
    ),
    _r(
        "trap",
        r"(?:Oops: )?(?P<what>invalid opcode|stack segment|divide error|int3|Internal error|Unhandled fault)"
        r"(?=:| at|$)",
        OOPS,
        "{what} in {func}",
        guilty="stack",
    ),
    _r("oops", r"Oops(?:: | - |$)", OOPS, "Oops in {func}", guilty="stack"),
    _r(
        "kernel BUG",
        r"[Kk]ernel BUG at (?P<file>[^\s!:]+)",
        B,
        "kernel BUG in {func}",
        guilty="stack",
        fallback="kernel BUG at {file}",
    ),
    # --- sanitizers: one report type each, the guilty function after " in "
    _r(
        "kasan",
        r"BUG: (?:KASAN|KASan|AddressSanitizer): (?P<what>[\w -]+?) (?:in|on address) " + _F,
        B,
        "KASAN: {what}{access} in {func}",
        guilty="line",
        access=True,
    ),
    _r("kfence", r"BUG: KFENCE: (?P<what>[\w -]+?) in " + _F, B, "KFENCE: {what} in {func}", guilty="line"),
    _r("kmsan", r"BUG: KMSAN: (?P<what>[\w -]+?) in " + _F, B, "KMSAN: {what} in {func}", guilty="line"),
    _r(
        "kcsan",
        r"BUG: KCSAN: (?P<what>[\w :-]+?) in (?P<funcs>[\w.]+(?:\+\S+)?(?: / [\w.]+(?:\+\S+)?)?)",
        B,
        "KCSAN: {what} in {funcs}",
    ),
    _r(
        "ubsan",
        r"UBSAN: (?P<what>[\w -]+?) in (?P<file>[^\s:]+)",
        B,
        "UBSAN: {what} in {func}",
        guilty="stack",
        fallback="UBSAN: {what} in {file}",
    ),
    _r("ubsan other", r"UBSAN: (?P<what>.*)", B, "UBSAN: {what}"),
    # --- lockdep (modern "WARNING: ..." headers and the older "[ INFO: ... ]" / "[ BUG: ... ]" ones)
    _r(
        "lockdep deadlock",
        r"(?:WARNING: |\[ INFO: )(?:possible circular locking dependency|possible recursive locking"
        r"|possible irq lock inversion dependency|\S+-safe -> \S+-unsafe lock order) detected",
        B,
        "possible deadlock in {func}",
        guilty="at",
    ),
    _r(
        "lockdep state",
        r"(?:WARNING: |\[ INFO: )inconsistent lock state",
        B,
        "inconsistent lock state in {func}",
        guilty="at",
    ),
    _r(
        "lockdep unlock",
        r"(?:WARNING: |\[ BUG: )bad unlock balance detected",
        B,
        "WARNING: bad unlock balance in {func}",
        guilty="stack",
    ),
    _r(
        "lockdep freed",
        r"(?:WARNING: |\[ BUG: )held lock freed",
        B,
        "WARNING: held lock freed in {func}",
        guilty="at",
    ),
    _r(
        "lockdep held",
        r"(?:WARNING: |\[ BUG: |BUG: )\S* ?still has locks held",
        B,
        "WARNING: still has locks held in {func}",
        guilty="at",
    ),
    _r(
        "lockdep user",
        r"(?:WARNING: |\[ BUG: )lock held when returning to user space",
        B,
        "WARNING: lock held when returning to user space in {func}",
        guilty="at",
    ),
    _r(
        "lockdep nested",
        r"WARNING: Nested lock was not taken",
        B,
        "WARNING: nested lock was not taken in {func}",
        guilty="stack",
    ),
    _r(
        "suspicious rcu",
        r"(?:WARNING: |\[ INFO: )suspicious RCU usage",
        B,
        "WARNING: suspicious RCU usage in {func}",
        guilty="stack",
    ),
    _r(
        "non-static key",
        r"INFO: trying to register non-static key",
        B,
        "INFO: trying to register non-static key in {func}",
        guilty="stack",
    ),
    # --- other BUG: reports the kernel prints and carries on from
    _r(
        "preemptible",
        r"BUG: using (?P<what>\S+) in preemptible",
        B,
        "BUG: using {what} in preemptible code in {func}",
        guilty="caller",
    ),
    _r(
        "sleeping",
        r"BUG: sleeping function called from invalid context",
        B,
        "BUG: sleeping function called from invalid context in {func}",
        guilty="stack",
    ),
    _r("atomic", r"BUG: scheduling while atomic", B, "BUG: scheduling while atomic in {func}", guilty="stack"),
    _r(
        "spinlock",
        r"BUG: (?P<what>(?:spin|rw|read|write)lock [\w ]+?)(?= on CPU|,|$)",
        B,
        "BUG: {what} in {func}",
        guilty="stack",
    ),
    _r(
        "stack guard",
        r"BUG: (?P<what>(?:\w+ )?stack guard page was hit)",
        B,
        "BUG: {what} in {func}",
        guilty="stack",
    ),
    _r("slub", r"BUG (?P<cache>[\w.-]+) \((?:Not tainted|Tainted[^)]*)\): (?P<what>.*)", B, "BUG {cache}: {what}"),
    _r("bug", r"BUG: (?P<what>.+?)(?: - |[:,\[(!]| at | for | on CPU| in process|$)", B, "BUG: {what}"),
    _r(
        "netdev refcount",
        r"unregister_netdevice: waiting for \S+ to become free\. Usage count",
        B,
        "unregister_netdevice: waiting for DEV to become free",
    ),
    _r("busy inodes", r"VFS: Busy inodes after unmount", B, "VFS: Busy inodes after unmount"),
    # --- WARN() splats (a notice): every format the kernel has used for the WARNING: line
    _r(
        "warn",
        r"WARNING: CPU: (?P<cpu>\d{1,6}) PID: \d+ at (?P<file>[^\s:]+)\S*(?: " + _F + r")?",
        W,
        "WARNING in {func}",
        guilty="line",
        fallback="WARNING at {file}",
    ),
    _r(
        "warn new",  # 6.16+: "WARNING: kernel/workqueue.c:2338 at __queue_work+0x5e0/0x790, CPU#2: kworker/2:2/116"
        r"WARNING: (?P<file>[^\s:]+):\d+ at " + _F + r"(?:\S*, CPU#(?P<cpu>\d{1,6}))?",
        W,
        "WARNING in {func}",
        guilty="line",
    ),
    _r("warn old", r"WARNING: at (?P<file>[^\s:]+)\S* " + _F, W, "WARNING in {func}", guilty="line"),
    _r(
        "unwinder regs",
        r"WARNING: kernel stack regs at \S+ in \S+ has bad '(?P<what>\w+)' value",
        W,
        "WARNING: kernel stack regs has bad '{what}' value",
    ),
    _r(
        "unwinder fp",
        r"WARNING: kernel stack frame pointer at \S+ in \S+ has bad value",
        W,
        "WARNING: kernel stack frame pointer has bad value",
    ),
)

#: Older kernels' spellings of a report type, mapped to today's (so titles agree across builds).
WHAT_ALIASES: dict[str, str] = {
    "use after free": "use-after-free",
    "out of bounds access": "out-of-bounds",
    "out of bounds on stack": "stack-out-of-bounds",
    "out of bounds": "out-of-bounds",
    "null ptr deref": "null-ptr-deref",
    "wild memory access": "wild-memory-access",
    "user memory access": "user-memory-access",
    "Undefined behaviour": "undefined-behaviour",
}

#: What a kernel message must start with for any row above to match (rows with ``search`` are
#: checked apart): one ``match`` turns away a line that would otherwise try every row.
GATE = re.compile(
    r"Kernel panic|PANIC: |BUG|INFO: |Oops|general protection fault|invalid opcode|stack segment|divide error"
    r"|int3|Unable to handle kernel|Internal error|Unhandled fault|[Kk]ernel BUG|UBSAN: |WARNING: "
    r"|\[ (?:INFO|BUG): |unregister_netdevice: waiting|VFS: Busy inodes"
)

#: A ``Kernel panic - not syncing:`` message that only says an earlier report stopped the machine
#: (``panic_on_warn``, ``panic_on_oops``, the lockup and hung-task detectors' panic switches): the
#: panic's title is then that report's (the root cause), not the panic's message.
PANIC_CONSEQUENCES = re.compile(
    r"Fatal exception|panic_on_warn set|panic_on_oops|softlockup: hung tasks|hung_task: blocked tasks"
    r"|Hard LOCKUP|RCU Stall|kasan\.fault=panic|kfence\.fault=panic|Oops - BUG"
)

#: Frames never blamed: the report, printk and dump helpers, the trap and fault entry paths, the
#: sanitizers' and lockdep's own functions, locking, scheduling and waiting primitives (a hung task
#: waits in them; they are rarely the bug), allocators and string/copy helpers (the bad access
#: is their caller's), assertion helpers (refcount, list debugging, might_sleep), timekeeping
#: reads a spinning CPU happens to be in. Each entry is a regex that must match the whole name.
SKIP_FRAMES: tuple[str, ...] = (
    # report / printk / dump
    r"__pfx_\w+",
    r"dump_stack\w*",
    r"__dump_stack",
    r"show_\w+",
    r"print_\w+",
    r"_?printk\w*",
    r"vprintk\w*",
    r"panic",
    r"__warn\w*",
    r"warn_slowpath\w*",
    r"report_bug",
    r"handle_bug",
    r"__report_bug",
    r"bust_spinlocks",
    r"nmi_cpu_backtrace\w*",
    r"nmi_trigger_cpumask_backtrace",
    r"arch_trigger_cpumask_backtrace",
    r"\w*_backtrace",
    r"sched_show_task",
    r"show_regs",
    r"dump_cpu_task",
    r"rcu_dump_\w+",
    # trap / fault / interrupt entry
    r"asm_\w+",
    r"exc_\w+",
    r"do_error_trap",
    r"do_trap",
    r"do_\w*invalid_op",
    r"fixup_\w+",
    r"die\w*",
    r"__die\w*",
    r"oops_\w+",
    r"no_context",
    r"_*bad_area\w*",
    r"page_fault_oops",
    r"kernelmode_fixup_or_oops",
    r"do_user_addr_fault",
    r"_*do_page_fault",
    r"handle_page_fault",
    r"do_general_protection",
    r"do_mem_abort",
    r"el1_\w+",
    r"el1h_\w+",
    r"__do_kernel_fault",
    r"do_translation_fault",
    r"do_bad_area",
    r"_*sysvec_\w+",
    r"sysvec_\w+",
    r"\w*apic_timer_interrupt",
    r"irq_exit\w*",
    r"__irq_exit_rcu",
    r"handle_softirqs",
    r"__do_softirq",
    r"do_softirq\w*",
    r"run_ksoftirqd",
    # sanitizers and lockdep
    r"_*kasan_\w+",
    r"__asan_\w+",
    r"check_memory_region\w*",
    r"kfence_\w+",
    r"__kfence_\w+",
    r"_*kmsan_\w+",
    r"__msan_\w+",
    r"_*kcsan_\w+",
    r"__tsan_\w+",
    r"_*ubsan_\w+",
    r"__ubsan_handle_\w+",
    r"lockdep_\w+",
    r"__lock_acquire\w*",
    r"lock_acquire\w*",
    r"lock_release",
    r"__lock_release",
    r"lock_acquired",
    r"lock_contended",
    r"lock_is_held\w*",
    r"mark_lock\w*",
    r"mark_usage",
    r"validate_chain",
    r"check_prevs?_add",
    r"check_\w+_usage",
    r"debug_check_no_locks_\w+",
    r"register_lock_class",
    r"look_up_lock_class",
    r"check_noncircular",
    r"check_deadlock",
    r"valid_state",
    r"__lock_acquire",
    r"debug_object\w*",
    r"__debug_object\w*",
    r"debug_print_object",
    # locking, scheduling, waiting
    r"_raw_\w+",
    r"__raw_\w+",
    r"do_raw_\w+",
    r"raw_spin_\w+",
    r"spin_\w+",
    r"queued_\w+",
    r"native_queued_\w+",
    r"__pv_queued_\w+",
    r"mutex_\w+",
    r"__mutex_\w+",
    r"down",
    r"down_\w+",
    r"__down\w*",
    r"up",
    r"up_\w+",
    r"rwsem_\w+",
    r"__rwsem_\w+",
    r"rt_mutex_\w+",
    r"__rt_mutex_\w+",
    r"percpu_down_\w+",
    r"_*schedule\w*",
    r"io_schedule\w*",
    r"preempt_schedule\w*",
    r"context_switch",
    r"__switch_to\w*",
    r"wait_for_completion\w*",
    r"__wait_for_common",
    r"do_wait_for_common",
    r"wait_on_\w+",
    r"__wait_on_\w+",
    r"out_of_line_wait_on_\w+",
    r"bit_wait\w*",
    r"wait_woken",
    r"rcu_\w+",
    r"__rcu_\w+",
    r"synchronize_rcu\w*",
    r"__synchronize_srcu",
    r"synchronize_srcu\w*",
    r"__might_sleep",
    r"___might_sleep",
    r"__might_resched",
    r"__might_fault",
    r"might_sleep",
    r"might_fault",
    r"__cant_sleep",
    r"debug_smp_processor_id",
    r"check_preemption_disabled",
    r"__this_cpu_preempt_check",
    # allocators
    r"_*kmalloc\w*",
    r"kmem_cache_\w+",
    r"__kmem_cache_\w+",
    r"kfree\w*",
    r"__kfree\w*",
    r"kvfree\w*",
    r"kvmalloc\w*",
    r"__kvmalloc\w*",
    r"kzalloc\w*",
    r"kcalloc\w*",
    r"krealloc\w*",
    r"kmemdup\w*",
    r"kstrdup\w*",
    r"_*vmalloc\w*",
    r"vfree\w*",
    r"vzalloc\w*",
    r"slab_\w+",
    r"__slab_\w+",
    r"___slab_\w+",
    r"__cache_free",
    r"kfree_skb\w*",
    r"__alloc_pages\w*",
    r"alloc_pages\w*",
    r"__free_pages\w*",
    r"free_pages\w*",
    # string / copy helpers
    r"_*mem(?:cpy|set|move|cmp|chr)\w*",
    r"str(?:n?cpy|n?cmp|n?len|n?cat|lcpy|scpy|chr)\w*",
    r"_?_?copy_\w*_user\w*",
    r"raw_copy_\w+",
    r"rep_movs_alternative",
    r"_*(?:put|get)_user\w*",
    r"copy_user_\w+",
    r"check_\w*object\w*",
    r"__check_object_size",
    r"usercopy_\w+",
    # assertion helpers
    r"_*refcount_\w+",
    r"__list_\w+_valid\w*",
    r"__list_\w+_report",
    r"list_\w+_corruption",
    r"__bug",
    r"bug_handler",
    r"ubsan_epilogue",
    r"handle_overflow",
    r"handle_null_ptr_deref",
    r"handle_misaligned_access",
    r"handle_object_size_mismatch",
    # timekeeping and idle a stuck CPU is often interrupted in
    r"read_hpet",
    r"read_tsc",
    r"ktime_get\w*",
    r"_*delay\w*",
    r"__const_udelay",
    r"__udelay",
    r"delay_tsc",
    r"native_safe_halt",
    r"default_idle\w*",
    r"cpu_relax",
)
_SKIP = re.compile("|".join(f"(?:{p})" for p in SKIP_FRAMES))


def skip_frame(func: str) -> bool:
    """True when ``func`` is a generic frame (:data:`SKIP_FRAMES`) that a title must not blame."""
    return _SKIP.fullmatch(func) is not None
