// SPDX-License-Identifier: GPL-2.0
/*
 * sbsim -- a lab stand-in for the Shadow-box kernel protector.
 *
 * THIS IS NOT SHADOW-BOX. It starts no hypervisor, uses no VT-x and protects nothing.
 * It exists so that shadowbox-rig (deploy, crash detector, NMI monitor) can be tested in
 * QEMU/TCG guests, where the real Shadow-box cannot run ("VMX not support").
 *
 * What it imitates (written from the public facts in the rig's shadow-box.md, no Shadow-box
 * code): the console lines Shadow-box prints at start-up and on failure, all prefixed
 * "shadow-box: ", and the debug line the NMI-fixed build prints for every NMI,
 * "shadow-box: VM [<cpu>] INT NMI callback".
 *
 * What it reproduces on demand (module parameters, all off by default), so that the rig's
 * detectors are tested on the kernel's REAL output for each condition:
 *   hang_after_nmi=N   the seed bug: the Nth NMI never returns and the machine goes silent
 *   panic_after_nmi=N  panic from the Nth NMI
 *   nmi_delay_us=N     a slow NMI handler
 *   fail_start=1       refuse to start as Shadow-box does without VT-x
 *   host_residency_pct=P, host_window_us=W
 *                      a per-CPU "host section" (a pinned hrtimer whose hard-IRQ callback
 *                      busy-waits W us with a per-CPU flag set, P % of the time), imitating
 *                      VM exits handled in VMX root: an NMI that lands there is a HOST NMI
 *   hang_on_host_nmi=1 the original bug, intermittent: a host NMI never returns
 *   trigger=<what>     (runtime) oops, gpf, bug, warn, panic, softlockup, rcu_stall, hung_task,
 *                      alert[:name], hang_banner[:reason]
 *                      (gpf: a load from the non-canonical address 0xdead000000000100, so the
 *                      kernel prints "general protection fault, probably for non-canonical
 *                      address ..." -- the other kernel-crash class, beside the page-fault oops)
 * See README.md next to this file for the exact console lines of each.
 */

#define pr_fmt(fmt) "shadow-box: " fmt

#include <linux/atomic.h>
#include <linux/bug.h>
#include <linux/cpumask.h>
#include <linux/delay.h>
#include <linux/hrtimer.h>
#include <linux/kernel.h>
#include <linux/kthread.h>
#include <linux/math64.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/version.h>
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 18, 0)
#include <linux/panic.h> /* panic() moved out of kernel.h in 5.18; 5.10 declares it there */
#endif
#include <linux/percpu.h>
#include <linux/proc_fs.h>
#include <linux/random.h>
#include <linux/ratelimit.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/seq_file.h>
#include <linux/smp.h>
#include <linux/string.h>
#include <linux/timekeeping.h>
#include <linux/wait.h>

#include <asm/apic.h>
#include <asm/irq_vectors.h>
#include <asm/nmi.h>

#define SBSIM_NMI_NAME "sbsim"
#define SBSIM_TRIGGER_LEN 64

/* ---- parameters ----------------------------------------------------------------------- */

static char *version = "2.3.0-sbsim";
module_param(version, charp, 0444);
MODULE_PARM_DESC(version, "Version shown in the banner (default 2.3.0-sbsim)");

static int log_nmi = 1;
module_param(log_nmi, int, 0644);
MODULE_PARM_DESC(log_nmi,
		 "NMI callback line: 0 never, 1 every NMI (default), 2 rate-limited (10 per 5 s)");

static int hang_after_nmi;
module_param(hang_after_nmi, int, 0644);
MODULE_PARM_DESC(hang_after_nmi,
		 "Seed bug: the first NMI whose running total (all CPUs, since load) is >= N never returns; "
		 "all CPUs are pulled in and the machine goes silent. 0 = off");

static int panic_after_nmi;
module_param(panic_after_nmi, int, 0644);
MODULE_PARM_DESC(panic_after_nmi,
		 "Panic from the first NMI whose running total (all CPUs, since load) is >= N. 0 = off");

static int nmi_delay_us;
module_param(nmi_delay_us, int, 0644);
MODULE_PARM_DESC(nmi_delay_us, "Busy-wait this many microseconds in the NMI handler. 0 = off");

static bool fail_start;
module_param(fail_start, bool, 0444);
MODULE_PARM_DESC(fail_start,
		 "Refuse to start like Shadow-box on a CPU without VT-x (errorcode=2, insmod gets EPERM)");

static int stall_secs = 30;
module_param(stall_secs, int, 0644);
MODULE_PARM_DESC(stall_secs, "How long trigger=softlockup and trigger=rcu_stall spin (default 30 s)");

static char *host_residency_pct = "0";
module_param(host_residency_pct, charp, 0444);
MODULE_PARM_DESC(host_residency_pct,
		 "Per-CPU host section (imitated VMX root): percent of the time each CPU spends in it, "
		 "0.0001..50, up to 4 decimals (e.g. 2 or 0.05). 0 = off (default): every NMI is treated as before");

static int host_window_us = 200;
module_param(host_window_us, int, 0444);
MODULE_PARM_DESC(host_window_us,
		 "Length of one host section in microseconds (default 200, 10..10000); the gaps between "
		 "sections are random with the mean that gives host_residency_pct");

static int hang_on_host_nmi;
module_param(hang_on_host_nmi, int, 0644);
MODULE_PARM_DESC(hang_on_host_nmi,
		 "The original bug, intermittent: an NMI that arrives in a host section never returns and "
		 "the machine goes silent. 0 = off (the fixed build: log the callback, drop the NMI)");

static int hung_secs = 150;
module_param(hung_secs, int, 0644);
MODULE_PARM_DESC(hung_secs,
		 "How long trigger=hung_task sleeps uninterruptibly (default 150 s, above Debian's 120 s)");

/* ---- NMI state ------------------------------------------------------------------------ */

static DEFINE_PER_CPU(unsigned long, sbsim_nmi_count);
static atomic_t sbsim_nmi_total = ATOMIC_INIT(0);
static atomic_t sbsim_hanging = ATOMIC_INIT(0);
/* set by the one NMI that calls nmi_panic() for panic_after_nmi (see the handler) */
static atomic_t sbsim_panicking = ATOMIC_INIT(0);
static char sbsim_panic_msg[80];
static DEFINE_RATELIMIT_STATE(sbsim_nmi_rs, 5 * HZ, 10);

/*
 * Spin here forever with NMIs blocked (we are inside an NMI) and interrupts off (the CPU
 * cleared IF on NMI entry). Nothing on this CPU runs again: no timer tick, no watchdog,
 * no printk flush. notrace/noinline keep it a plain loop.
 */
static noinline notrace void sbsim_spin_forever(void)
{
	for (;;)
		cpu_relax();
}

/* ---- host residency (imitated VMX root) ------------------------------------------------ */

/*
 * Real Shadow-box runs Linux as its guest; on every VM exit a CPU runs briefly in the host
 * (VMX root) with interrupts off. The original bug: an NMI arriving there ran Linux's NMI
 * handler in the host's environment and never came back -- so the hang struck at random,
 * at a rate of (NMIs per second) x (share of time in the host). sbsim imitates the host by a
 * pinned hrtimer per CPU: its callback runs in hard-IRQ context with interrupts off (like an
 * exit handler), sets sbsim_in_host, busy-waits host_window_us and clears it. The gap to the
 * next section is drawn uniformly from [0.5, 1.5] x the mean gap, so the schedule does not
 * beat against a periodic NMI source.
 */
static DEFINE_PER_CPU(struct hrtimer, sbsim_host_timer);
static DEFINE_PER_CPU(int, sbsim_in_host);
static DEFINE_PER_CPU(u32, sbsim_host_rng);
static DEFINE_PER_CPU(unsigned long, sbsim_host_nmi_count);
static DEFINE_PER_CPU(u64, sbsim_host_ns);
static u64 sbsim_host_window_ns;
static u64 sbsim_host_gap_ns; /* mean gap between two host sections */
static u64 sbsim_host_since_ns;
static bool sbsim_host_on;

/* xorshift32: cheap and safe in hard-IRQ context; seeded per CPU from get_random_u32() at load. */
static u32 sbsim_host_next_rand(void)
{
	u32 x = this_cpu_read(sbsim_host_rng);

	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	this_cpu_write(sbsim_host_rng, x);
	return x;
}

static u64 sbsim_host_gap(void)
{
	/* uniform in [gap/2, 3*gap/2): mean gap */
	return sbsim_host_gap_ns / 2 + div_u64(sbsim_host_gap_ns * (sbsim_host_next_rand() >> 16), 65536);
}

static enum hrtimer_restart sbsim_host_timer_fn(struct hrtimer *timer)
{
	u64 start = ktime_get_mono_fast_ns();
	u64 now = start;

	this_cpu_write(sbsim_in_host, 1);
	barrier();
	while (now - start < sbsim_host_window_ns) {
		cpu_relax();
		now = ktime_get_mono_fast_ns();
	}
	barrier();
	this_cpu_write(sbsim_in_host, 0);
	this_cpu_add(sbsim_host_ns, now - start);
	/*
	 * The next section starts one gap after this one ENDED (not hrtimer_forward_now(), which
	 * steps from the old expiry: the period would then be one gap, and the residency
	 * W/gap = P/(100-P) instead of P %).
	 */
	hrtimer_set_expires(timer, ns_to_ktime(ktime_get_ns() + sbsim_host_gap()));
	return HRTIMER_RESTART;
}

static void sbsim_host_start_this_cpu(void *unused)
{
	struct hrtimer *t = this_cpu_ptr(&sbsim_host_timer);

	this_cpu_write(sbsim_host_rng, get_random_u32() | 1);
	hrtimer_start(t, ns_to_ktime(sbsim_host_gap()), HRTIMER_MODE_REL_PINNED_HARD);
}

/* "N" or "N.DDDD" percent -> parts per million (0.0001 % = 1 ppm); -EINVAL for anything else. */
static int sbsim_parse_pct_ppm(const char *text, u32 *ppm)
{
	u32 whole = 0, frac = 0, scale = 10000;
	const char *c = text;

	if (!*c)
		return -EINVAL;
	for (; *c >= '0' && *c <= '9'; c++) {
		whole = whole * 10 + (*c - '0');
		if (whole > 100)
			return -EINVAL;
	}
	if (*c == '.') {
		for (c++; *c >= '0' && *c <= '9'; c++) {
			if (scale == 1)
				return -EINVAL; /* more than 4 decimals */
			scale /= 10;
			frac += (*c - '0') * scale;
		}
	}
	if (*c == '\n')
		c++;
	if (*c)
		return -EINVAL;
	*ppm = whole * 10000 + frac;
	return 0;
}

static int sbsim_host_setup(void)
{
	u32 ppm = 0;
	int cpu;

	if (host_residency_pct && !sbsim_parse_pct_ppm(host_residency_pct, &ppm) && ppm == 0)
		return 0; /* off: nothing changes */
	if (!host_residency_pct || sbsim_parse_pct_ppm(host_residency_pct, &ppm) ||
	    ppm > 500000 || host_window_us < 10 || host_window_us > 10000) {
		pr_err("host_residency_pct=%s host_window_us=%d: give 0..50 %% (up to 4 decimals) and 10..10000 us\n",
		       host_residency_pct ? host_residency_pct : "(null)", host_window_us);
		return -EINVAL;
	}
	sbsim_host_window_ns = (u64)host_window_us * NSEC_PER_USEC;
	sbsim_host_gap_ns = div_u64(sbsim_host_window_ns * (1000000 - ppm), ppm);
	for_each_online_cpu(cpu)
		hrtimer_init(per_cpu_ptr(&sbsim_host_timer, cpu), CLOCK_MONOTONIC, HRTIMER_MODE_REL_PINNED_HARD);
	for_each_online_cpu(cpu)
		per_cpu_ptr(&sbsim_host_timer, cpu)->function = sbsim_host_timer_fn;
	sbsim_host_since_ns = ktime_get_mono_fast_ns();
	sbsim_host_on = true;
	on_each_cpu(sbsim_host_start_this_cpu, NULL, 1);
	pr_info("host residency %s%% in sections of %d us (sbsim imitation of VMX root)%s\n",
		host_residency_pct, host_window_us, hang_on_host_nmi ? ", hang_on_host_nmi=1" : "");
	return 0;
}

static void sbsim_host_teardown(void)
{
	int cpu;

	if (!sbsim_host_on)
		return;
	for_each_online_cpu(cpu)
		hrtimer_cancel(per_cpu_ptr(&sbsim_host_timer, cpu));
	sbsim_host_on = false;
}

/* ---- NMI handler ---------------------------------------------------------------------- */

/*
 * NMI_LOCAL because Linux's default_do_nmi() runs the NMI_LOCAL list for EVERY NMI before
 * it looks at the reason port: that list sees LINT1 NMIs (QMP inject-nmi, IPMI diag) and the
 * NMI IPIs of sysrq-l / RCU stall backtraces alike. NMI_UNKNOWN would only see unclaimed
 * ones (never sysrq backtraces, which the arch_bt NMI_LOCAL handler claims).
 *
 * Returns NMI_DONE for every NMI that is not a host NMI: sbsim claims nothing, so Linux's
 * accounting stays what it would be without sbsim -- an injected LINT1 NMI still prints
 * "Uhhuh. NMI received for unknown reason ..." and still counts as unknown, and the other
 * NMI_LOCAL handlers (the backtrace one) run as before. Returning NMI_HANDLED would swallow
 * those unknown-NMI messages and make the lab look quieter than a machine without sbsim.
 *
 * A host NMI (host residency on, the CPU inside a host section) is what the fixed Shadow-box
 * drops in its own IDT after logging "VM [n] INT NMI callback": sbsim returns NMI_HANDLED for
 * it, so Linux prints no "Uhhuh" for that one (the other NMI_LOCAL handlers still run: a
 * sysrq-l backtrace still prints). Each external NMI thus leaves exactly one line: a callback
 * when it hit the host, an "Uhhuh" when it reached Linux. With residency on, only host NMIs
 * log the callback line (as on the real fixed build); with it off, every NMI does (as before).
 */
static int sbsim_nmi_handler(unsigned int type, struct pt_regs *regs)
{
	int cpu = smp_processor_id();
	int total, limit, delay, mode;
	bool host = false;

	this_cpu_inc(sbsim_nmi_count);
	total = atomic_inc_return(&sbsim_nmi_total);

	if (atomic_read(&sbsim_hanging))
		sbsim_spin_forever();

	if (sbsim_host_on && this_cpu_read(sbsim_in_host)) {
		host = true;
		this_cpu_inc(sbsim_host_nmi_count);
	}

	limit = READ_ONCE(hang_after_nmi);
	if ((limit > 0 && total >= limit) || (host && READ_ONCE(hang_on_host_nmi))) {
		/*
		 * The seed bug, silently: no log line. The first CPU here pulls every other CPU
		 * into this handler with an NMI IPI, where they see sbsim_hanging and spin too.
		 * With every CPU stuck inside an NMI nobody is left to notice (no soft-lockup,
		 * no RCU stall report, no perf hard-lockup NMI since NMIs are blocked).
		 */
		if (atomic_cmpxchg(&sbsim_hanging, 0, 1) == 0)
			apic->send_IPI_allbutself(NMI_VECTOR);
		sbsim_spin_forever();
	}

	/*
	 * Exactly one NMI panics; the other CPUs' NMIs return as usual so that panic() can stop
	 * them with its REBOOT_VECTOR IPI. If every CPU past the limit called nmi_panic(), the
	 * losers would spin in nmi_panic_self_stop() with NMIs blocked, never go offline, and a
	 * 5.10 kernel whose stuck CPU held logbuf_lock would then skip printk_safe_flush_on_panic()
	 * ("more CPUs are up") and print nothing at all: a silent hang, not the panic this switch
	 * promises (seen once in CI on the 5.10 guest, as a 'hang' verdict).
	 */
	limit = READ_ONCE(panic_after_nmi);
	if (limit > 0 && total >= limit && atomic_cmpxchg(&sbsim_panicking, 0, 1) == 0)
		nmi_panic(regs, sbsim_panic_msg);

	mode = READ_ONCE(log_nmi);
	if ((host || !sbsim_host_on) && (mode == 1 || (mode == 2 && __ratelimit(&sbsim_nmi_rs))))
		pr_info("VM [%d] INT NMI callback\n", cpu);

	delay = READ_ONCE(nmi_delay_us);
	while (delay > 0) {
		int step = min(delay, 1000);

		udelay(step);
		delay -= step;
	}
	return host ? NMI_HANDLED : NMI_DONE;
}

/* ---- /proc/sbsim: per-CPU NMI counts ---------------------------------------------------- */

static int sbsim_proc_show(struct seq_file *m, void *v)
{
	int cpu;

	for_each_online_cpu(cpu)
		seq_printf(m, "cpu%d %lu\n", cpu, per_cpu(sbsim_nmi_count, cpu));
	if (!sbsim_host_on)
		return 0;
	/* host residency: host NMIs, and the share of time measured in host sections (ppm) */
	for_each_online_cpu(cpu) {
		u64 elapsed = ktime_get_mono_fast_ns() - sbsim_host_since_ns;

		seq_printf(m, "host cpu%d nmis %lu residency_ppm %llu\n", cpu,
			   per_cpu(sbsim_host_nmi_count, cpu),
			   elapsed ? div64_u64(per_cpu(sbsim_host_ns, cpu) * 1000000ULL, elapsed) : 0ULL);
	}
	return 0;
}

static int sbsim_proc_open(struct inode *inode, struct file *file)
{
	return single_open(file, sbsim_proc_show, NULL);
}

static const struct proc_ops sbsim_proc_ops = {
	.proc_open = sbsim_proc_open,
	.proc_read = seq_read,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
};

/* ---- runtime triggers ------------------------------------------------------------------ */

/*
 * Long or fatal triggers run in their own kthread, not in the writer of the sysfs file:
 * the writer holds sbsim's parameter mutex, which an oops would leave locked forever and
 * a 30 s spin would hold for 30 s. Each thread holds a module reference (rmmod waits for
 * it; after an oops/GPF/BUG the reference is never dropped -- reboot, as with Shadow-box).
 */
static int * volatile sbsim_null;
/*
 * LIST_POISON1's value: bits 63..48 are not copies of bit 47, so the CPU raises #GP (not #PF)
 * and the kernel names it "probably for non-canonical address" -- the typical shape of a
 * use-after-list_del in real drivers. volatile, so the compiler cannot prove the load faults.
 */
static int * volatile sbsim_noncanonical = (int *)0xdead000000000100UL;
static volatile int sbsim_true = 1;
static char sbsim_last_trigger[SBSIM_TRIGGER_LEN] = "none";
static DECLARE_WAIT_QUEUE_HEAD(sbsim_never_wq);

static void sbsim_spin_for(u64 secs)
{
	u64 end = ktime_get_mono_fast_ns() + secs * NSEC_PER_SEC;

	while (ktime_get_mono_fast_ns() < end)
		cpu_relax();
}

static int sbsim_oops_fn(void *arg)
{
	pr_info("trigger oops: NULL pointer dereference in kthread\n");
	pr_info("value %d\n", READ_ONCE(*sbsim_null));
	module_put_and_kthread_exit(0);
}

static int sbsim_gpf_fn(void *arg)
{
	pr_info("trigger gpf: non-canonical address dereference in kthread\n");
	pr_info("value %d\n", READ_ONCE(*sbsim_noncanonical));
	module_put_and_kthread_exit(0);
}

static int sbsim_bug_fn(void *arg)
{
	pr_info("trigger bug: BUG() in kthread\n");
	if (sbsim_true)
		BUG();
	module_put_and_kthread_exit(0);
}

/* Preemption off, interrupts on: the soft-lockup watchdog's stopper thread cannot run. */
static int sbsim_softlockup_fn(void *arg)
{
	pr_info("trigger softlockup: spinning %d s with preemption disabled\n", stall_secs);
	preempt_disable();
	sbsim_spin_for(stall_secs);
	preempt_enable();
	pr_info("trigger softlockup: done\n");
	module_put_and_kthread_exit(0);
}

/* Inside an RCU read-side section with interrupts off: no quiescent state, no tick. */
static int sbsim_rcu_stall_fn(void *arg)
{
	unsigned long flags;

	pr_info("trigger rcu_stall: spinning %d s in rcu_read_lock with irqs off\n", stall_secs);
	rcu_read_lock();
	local_irq_save(flags);
	sbsim_spin_for(stall_secs);
	local_irq_restore(flags);
	rcu_read_unlock();
	pr_info("trigger rcu_stall: done\n");
	module_put_and_kthread_exit(0);
}

/* TASK_UNINTERRUPTIBLE sleep: the hung-task detector reports it after hung_task_timeout_secs. */
static int sbsim_hung_task_fn(void *arg)
{
	pr_info("trigger hung_task: sleeping %d s uninterruptibly\n", hung_secs);
	wait_event_timeout(sbsim_never_wq, false, (long)hung_secs * HZ);
	pr_info("trigger hung_task: done\n");
	module_put_and_kthread_exit(0);
}

static int sbsim_start_thread(int (*fn)(void *), const char *name)
{
	struct task_struct *t;

	if (!try_module_get(THIS_MODULE))
		return -ENODEV;
	t = kthread_run(fn, NULL, "%s", name);
	if (IS_ERR(t)) {
		module_put(THIS_MODULE);
		return PTR_ERR(t);
	}
	return 0;
}

static void sbsim_hang_banner(const char *reason)
{
	pr_err("================================================================\n");
	pr_err("HANG %s\n", reason);
	pr_err("================================================================\n");
}

static int sbsim_trigger_set(const char *val, const struct kernel_param *kp)
{
	char buf[SBSIM_TRIGGER_LEN];
	char *what, *arg;

	strscpy(buf, val, sizeof(buf));
	what = strim(buf);
	arg = strchr(what, ':');
	if (arg)
		*arg++ = '\0';
	if (!*what)
		return -EINVAL;

	if (!strcmp(what, "oops"))
		return sbsim_start_thread(sbsim_oops_fn, "sbsim_oops");
	if (!strcmp(what, "gpf"))
		return sbsim_start_thread(sbsim_gpf_fn, "sbsim_gpf");
	if (!strcmp(what, "bug"))
		return sbsim_start_thread(sbsim_bug_fn, "sbsim_bug");
	if (!strcmp(what, "softlockup"))
		return sbsim_start_thread(sbsim_softlockup_fn, "sbsim_softlock");
	if (!strcmp(what, "rcu_stall"))
		return sbsim_start_thread(sbsim_rcu_stall_fn, "sbsim_rcustall");
	if (!strcmp(what, "hung_task"))
		return sbsim_start_thread(sbsim_hung_task_fn, "sbsim_hungtask");

	strscpy(sbsim_last_trigger, what, sizeof(sbsim_last_trigger));
	if (!strcmp(what, "warn")) {
		pr_info("trigger warn: WARN_ON\n");
		WARN_ON(sbsim_true);
	} else if (!strcmp(what, "panic")) {
		panic("sbsim: trigger=panic");
	} else if (!strcmp(what, "alert")) {
		pr_err("VM [%d] Hidden module, module name=\"%s\" (sbsim simulated alert)\n",
		       raw_smp_processor_id(), arg && *arg ? arg : "sbsim_hidden");
	} else if (!strcmp(what, "hang_banner")) {
		sbsim_hang_banner(arg && *arg ? arg : "sbsim simulated hang");
	} else {
		pr_err("trigger: unknown value \"%s\" (oops gpf bug warn panic softlockup rcu_stall hung_task alert[:name] hang_banner[:reason])\n",
		       what);
		strscpy(sbsim_last_trigger, "none", sizeof(sbsim_last_trigger));
		return -EINVAL;
	}
	return 0;
}

static int sbsim_trigger_get(char *buffer, const struct kernel_param *kp)
{
	return scnprintf(buffer, PAGE_SIZE, "%s\n", sbsim_last_trigger);
}

static const struct kernel_param_ops sbsim_trigger_ops = {
	.set = sbsim_trigger_set,
	.get = sbsim_trigger_get,
};
module_param_cb(trigger, &sbsim_trigger_ops, NULL, 0644);
MODULE_PARM_DESC(trigger,
		 "Write to act now: oops gpf bug warn panic softlockup rcu_stall hung_task alert[:name] hang_banner[:reason]");

/* ---- load / unload --------------------------------------------------------------------- */

static void sbsim_banner(void)
{
	pr_info("================================================================\n");
	pr_info("sbsim (sbsim lab stand-in, NOT Shadow-box): Lightweight Hypervisor-Based Kernel Protector v%s\n",
		version);
	pr_info("(sbsim lab stand-in) a test payload imitating Shadow-box's console; it protects nothing\n");
	pr_info("================================================================\n");
}

static int __init sbsim_init(void)
{
	int cpu, ret;

	sbsim_banner();
	pr_info("CPU Count %d\n", num_online_cpus());

	if (fail_start) {
		/* What Shadow-box prints on a CPU without VT-x; insmod reports EPERM. */
		pr_err("    [*] VMX not support\n");
		pr_err("Execution Fail\n");
		pr_err("errorcode=2\n");
		return -EPERM;
	}

	for_each_online_cpu(cpu)
		pr_info("Booting CPU ID %d\n", cpu);

	snprintf(sbsim_panic_msg, sizeof(sbsim_panic_msg), "sbsim: panic_after_nmi=%d reached",
		 panic_after_nmi);

	pr_info("Protect Kernel Code Area\n");
	pr_info("    [*] Complete\n");
	pr_info("Framework Preinitialize\n");

	if (!proc_create("sbsim", 0444, NULL, &sbsim_proc_ops)) {
		pr_err("Execution Fail [%d]\n", -ENOMEM);
		return -ENOMEM;
	}
	ret = register_nmi_handler(NMI_LOCAL, sbsim_nmi_handler, 0, SBSIM_NMI_NAME);
	if (ret) {
		remove_proc_entry("sbsim", NULL);
		pr_err("Execution Fail [%d]\n", ret);
		return ret;
	}
	ret = sbsim_host_setup();
	if (ret) {
		unregister_nmi_handler(NMI_LOCAL, SBSIM_NMI_NAME);
		remove_proc_entry("sbsim", NULL);
		pr_err("Execution Fail [%d]\n", ret);
		return ret;
	}
	pr_info("Framework Initailize\n");
	pr_info("Execution Complete\n");
	pr_info("errorcode=0\n");
	return 0;
}

/*
 * Real Shadow-box cannot be unloaded (rmmod is caught and oopses). sbsim allows rmmod so a
 * lab guest can be reused, but the rig must never rely on unloading Shadow-box.
 */
static void __exit sbsim_exit(void)
{
	sbsim_host_teardown();
	unregister_nmi_handler(NMI_LOCAL, SBSIM_NMI_NAME);
	remove_proc_entry("sbsim", NULL);
	pr_info("sbsim unloaded (real Shadow-box cannot be unloaded)\n");
}

module_init(sbsim_init);
module_exit(sbsim_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("shadowbox-rig");
MODULE_DESCRIPTION("sbsim: lab stand-in imitating Shadow-box's console protocol; NOT Shadow-box, no hypervisor");
MODULE_VERSION("2.3.0-sbsim");
