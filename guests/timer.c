/*
 * timer: VIRQ_TIMER with the periodic timer, set_timer_op and the VCPUOP
 * single-shot timer.
 *
 * Semantics (Xen 4.17):
 *  - xen/common/sched/core.c do_set_timer_op: 0 stops v->singleshot_timer;
 *    a deadline < 0 (bit 63) or more than 2^50 ns ahead is the "Linux
 *    workaround": the timer fires in 100 ms instead; otherwise
 *    set_timer(deadline) (a past deadline fires at once).
 *  - xen/common/domain.c do_vcpu_op:
 *    set_periodic_timer: period < 1 ms or > STIME_DELTA_MAX -> -EINVAL; any
 *      vCPU of the domain may be targeted. HVM vCPUs have no periodic timer
 *      by default (only PV gets the 100 Hz ticker, pv/domain.c).
 *    set/stop_singleshot_timer: only for the calling vCPU (-EINVAL else);
 *      it is the same timer as set_timer_op's. A past deadline sends the
 *      event at once. VCPU_SSHOTTMR_future is IGNORED: commit 19c6cbd90965
 *      "xen/vcpu: ignore VCPU_SSHOTTMR_future" is in the 4.17 stable branch
 *      (Debian's 4.17.7 public/vcpu.h: "return -ETIME if it's passed) but
 *      can be ignored by the hypervisor"), so a past deadline with the flag
 *      returns 0 and fires, where Xen 4.17.0 returned -ETIME.
 *    vcpu >= max_vcpus -> -ENOENT before anything else.
 *  - vcpu_periodic_timer_work: a tick sends VIRQ_TIMER and the next one is
 *    due period after *now* (so late ticks slow the rate).
 *  - send_guest_vcpu_virq: nothing happens when VIRQ_TIMER is not bound.
 *
 * cmdline: period_ms=<n> (default 10: 100 Hz), seconds=<n> (measurement,
 *          default 1), shots=<n> (one-shot samples per kind, default 15)
 * INFO keys (host: check the figures against its own expectations):
 *   ticks <count> <interval_ns>       periodic ticks seen in interval_ns of
 *                                     pvclock time (first tick .. end)
 *   tick_expected <n>                 interval_ns / period
 *   tick_interval_median_ns / tick_interval_p99_ns / tick_interval_max_ns
 *   oneshot_late_ns <n>               set_timer_op: delivery - deadline, per shot
 *   oneshot_late_median_ns / oneshot_late_p99_ns / oneshot_late_max_ns
 *   sshot_late_ns <n>                 VCPUOP_set_singleshot_timer, per shot
 *   sshot_late_median_ns / sshot_late_max_ns
 *   huge_timeout_fired_after_ns <n>   set_timer_op 2^51 ns ahead (Xen: ~100 ms)
 */
#include "guest.h"
#include "evtchn.h"

#define MS 1000000ULL
#define MAX_TICKS 1024
#define MIN_TICKS 5       /* a periodic timer must show it re-arms */

static volatile uint64_t ticks;
static volatile uint64_t tick_time[MAX_TICKS];
static volatile uint64_t last_event_ns;

static void tick_handler(evtchn_port_t port, void *arg)
{
    uint64_t t = now_ns();
    uint64_t n = ticks;
    if (n < MAX_TICKS)
        tick_time[n] = t;
    last_event_ns = t;
    ticks = n + 1;
}

/* Sleep without creating timer events: SCHEDOP_poll with no ports. */
static void quiet_sleep(uint64_t ns)
{
    uint64_t end = now_ns() + ns;
    while (now_ns() < end)
        sleep_until(end);
}

/* Wait for the next VIRQ_TIMER event, up to `limit_ns`; returns the time
 * the handler saw it, or 0 on time-out. Sleeps in SCHEDOP_poll on the timer
 * port with interrupts off (a poll timeout, not the vCPU timer being
 * measured, bounds the wait); once an upcall is pending, sti;hlt takes it. */
static uint64_t wait_event(uint64_t before, uint64_t limit_ns)
{
    uint64_t end = now_ns() + limit_ns;
    evtchn_port_t tp = evtchn_cpu[0].timer_port;
    volatile struct vcpu_info *vi = evtchn_cpu[0].vi;
    uint64_t f = irq_save();
    while (ticks == before) {
        if (vi->evtchn_upcall_pending) {
            safe_halt_cli();
            continue;
        }
        if (now_ns() >= end)
            break;
        sched_poll(&tp, 1, end);
    }
    irq_restore(f);
    return ticks != before ? last_event_ns : 0;
}

static void report_stats(const char *prefix, uint64_t *v, unsigned n)
{
    char key[64];
    sort_u64(v, n);
    snprintf(key, sizeof(key), "%s_median_ns", prefix);
    info(key, "%lu", (unsigned long)percentile_u64(v, n, 50));
    snprintf(key, sizeof(key), "%s_p99_ns", prefix);
    info(key, "%lu", (unsigned long)percentile_u64(v, n, 99));
    snprintf(key, sizeof(key), "%s_max_ns", prefix);
    info(key, "%lu", (unsigned long)(n ? v[n - 1] : 0));
}

static void test_periodic(uint64_t period, uint64_t seconds)
{
    struct vcpu_set_periodic_timer pt;
    check_eq("timer.periodic_period_zero", vcpu_set_periodic(0, 0), EINVAL_);
    check_eq("timer.periodic_period_below_1ms", vcpu_set_periodic(0, MS - 1), EINVAL_);
    check_eq("timer.periodic_period_too_big", vcpu_set_periodic(0, 1ULL << 62), EINVAL_);
    check_eq("timer.periodic_period_negative", vcpu_set_periodic(0, 1ULL << 63), EINVAL_);
    check_eq("timer.periodic_bad_vcpu", vcpu_set_periodic(4096, 10 * MS), ENOENT_);
    check_eq("timer.periodic_badptr", HYPERVISOR_vcpu_op(VCPUOP_set_periodic_timer, 0, BAD_PTR), EFAULT_);
    (void)pt;

    /* No periodic timer by default for an HVM vCPU. */
    uint64_t t0 = ticks;
    quiet_sleep(50 * MS);
    check("timer.no_default_periodic", ticks == t0, "%lu VIRQ_TIMER events in 50 ms with no timer armed",
          (unsigned long)(ticks - t0));

    /* Count every tick from the moment of arming. Xen sends at most one
     * per period (a late tick re-arms a period after *now*; the first may come
     * at once), so n ticks seen by time T mean n <= (T - t_arm) / period + 1:
     * over-delivery fails at once.
     * How close the rate comes to 1/period depends on the host's load: that
     * is a figure (INFO ticks, `python -m benchmarks events`), not a check. */
    uint64_t f = irq_save();
    uint64_t base = ticks, t_arm = now_ns();
    long rc = vcpu_set_periodic(0, period);
    irq_restore(f);
    check_eq("timer.periodic_set", rc, 0);
    if (rc)
        return;
    uint64_t first = wait_event(base, WAIT_BOUND_NS);
    check("timer.periodic_first_tick", first != 0, "no tick within 10 s of a %lu ns period",
          (unsigned long)period);
    if (!first) {
        vcpu_stop_periodic(0);
        return;
    }
    /* Measure for `seconds`, and until a few ticks came (the timer re-arms). */
    uint64_t start = last_event_ns, end = start + seconds * 1000 * MS;
    uint64_t stop_at, give_up = now_ns() + WAIT_BOUND_NS;
    for (;;) {
        uint64_t t = wait_event(ticks, WAIT_BOUND_NS);
        stop_at = now_ns();
        if (!t || (stop_at >= end && ticks - base >= MIN_TICKS) || stop_at >= give_up)
            break;
    }
    uint64_t all = ticks - base;
    uint64_t most = (stop_at - t_arm) / period + 1;
    check("timer.periodic_rearms", all >= MIN_TICKS, "%lu ticks in %lu ns (period %lu ns)",
          (unsigned long)all, (unsigned long)(stop_at - t_arm), (unsigned long)period);
    check("timer.periodic_never_more_than_one_per_period", all <= most,
          "%lu ticks in %lu ns since arming: at most %lu fit (period %lu ns)", (unsigned long)all,
          (unsigned long)(stop_at - t_arm), (unsigned long)most, (unsigned long)period);
    uint64_t n = all - 1;               /* ticks after the first one */
    uint64_t interval = stop_at - start;
    info("ticks", "%lu %lu", (unsigned long)n, (unsigned long)interval);
    info("tick_expected", "%lu", (unsigned long)(interval / period));

    /* Inter-tick intervals. */
    static uint64_t iv[MAX_TICKS];
    unsigned m = 0;
    for (uint64_t i = base; i < ticks && i < MAX_TICKS && m < MAX_TICKS; i++)
        if (i > 0)
            iv[m++] = tick_time[i] - tick_time[i - 1];
    report_stats("tick_interval", iv, m);

    check_eq("timer.periodic_stop", vcpu_stop_periodic(0), 0);
    quiet_sleep(2 * MS);
    uint64_t after = ticks;
    quiet_sleep(100 * MS);
    check("timer.periodic_stopped", ticks == after, "%lu ticks after VCPUOP_stop_periodic_timer",
          (unsigned long)(ticks - after));
}

static void test_oneshots(unsigned shots)
{
    static const uint64_t delays[] = { 1 * MS, 2 * MS, 5 * MS, 10 * MS, 20 * MS };
    static uint64_t late_a[64], late_b[64];
    unsigned na = 0, nb = 0;
    bool early_a = false, early_b = false, lost_a = false, lost_b = false;
    if (shots > 64)
        shots = 64;

    for (unsigned i = 0; i < shots; i++) {
        uint64_t before = ticks;
        uint64_t deadline = now_ns() + delays[i % ARRAY_SIZE(delays)];
        HYPERVISOR_set_timer_op(deadline);
        uint64_t t = wait_event(before, WAIT_BOUND_NS);
        if (!t) {
            lost_a = true;
            continue;
        }
        if (t < deadline)
            early_a = true;
        uint64_t late = t >= deadline ? t - deadline : 0;
        late_a[na++] = late;
        if (t < deadline)
            info("oneshot_early_ns", "%lu", (unsigned long)(deadline - t));
        else
            info("oneshot_late_ns", "%lu", (unsigned long)late);
    }
    check("timer.set_timer_op_fires", !lost_a, "a set_timer_op deadline produced no VIRQ_TIMER within 10 s");
    check("timer.set_timer_op_not_early", !early_a, "VIRQ_TIMER arrived before the set_timer_op deadline");
    report_stats("oneshot_late", late_a, na);

    for (unsigned i = 0; i < shots; i++) {
        uint64_t before = ticks;
        uint64_t deadline = now_ns() + delays[i % ARRAY_SIZE(delays)];
        long rc = vcpu_set_singleshot(0, deadline, VCPU_SSHOTTMR_future);
        if (rc) {
            test_fail("timer.singleshot_set", "rc %ld", rc);
            lost_b = true;
            break;
        }
        uint64_t t = wait_event(before, WAIT_BOUND_NS);
        if (!t) {
            lost_b = true;
            continue;
        }
        if (t < deadline)
            early_b = true;
        uint64_t late = t >= deadline ? t - deadline : 0;
        late_b[nb++] = late;
        if (t < deadline)
            info("sshot_early_ns", "%lu", (unsigned long)(deadline - t));
        else
            info("sshot_late_ns", "%lu", (unsigned long)late);
    }
    check("timer.singleshot_fires", !lost_b, "a singleshot deadline produced no VIRQ_TIMER within 10 s");
    check("timer.singleshot_not_early", !early_b, "VIRQ_TIMER arrived before the singleshot deadline");
    report_stats("sshot_late", late_b, nb);
}

static void expect_no_event(const char *name, uint64_t ns)
{
    uint64_t before = ticks;
    quiet_sleep(ns);
    check(name, ticks == before, "%lu unexpected VIRQ_TIMER events", (unsigned long)(ticks - before));
}

/* Arm with `arm` (its rc is checked as `armname`), then expect one VIRQ_TIMER
 * event between lo_ns and hi_ns after arming. The event count is sampled
 * before arming: a past deadline fires during the hypercall. */
static void arm_and_expect(const char *armname, long (*arm)(uint64_t), uint64_t arg,
                           const char *name, uint64_t lo_ns, uint64_t hi_ns, uint64_t *after)
{
    uint64_t f = irq_save();
    uint64_t before = ticks, t0 = now_ns();
    long rc = arm(arg);
    irq_restore(f);
    check_eq(armname, rc, 0);
    uint64_t t = wait_event(before, hi_ns + 200 * MS);
    uint64_t dt = t ? t - t0 : 0;
    if (after)
        *after = dt;
    check(name, t && dt >= lo_ns && dt <= hi_ns, "event %s after %lu ns (expected %lu..%lu ns)",
          t ? "arrived" : "never arrived", (unsigned long)dt, (unsigned long)lo_ns, (unsigned long)hi_ns);
}

static long arm_timer_op(uint64_t v) { return HYPERVISOR_set_timer_op(v); }
static long arm_timer_op_rel(uint64_t v) { return HYPERVISOR_set_timer_op(now_ns() + v); }
static long arm_sshot(uint64_t v) { return vcpu_set_singleshot(0, v, 0); }
static long arm_sshot_future_past(uint64_t v) { return vcpu_set_singleshot(0, now_ns() - v, VCPU_SSHOTTMR_future); }

static long arm_sshot_rel(uint64_t v) { return vcpu_set_singleshot(0, now_ns() + v, 0); }
static long cancel_timer_op(void) { return HYPERVISOR_set_timer_op(0); }
static long cancel_sshot(void) { return vcpu_stop_singleshot(0); }

/* Arm a timer 20 ms ahead, cancel it, and expect no event. With interrupts off, so that
 * a busy host which let the deadline pass before the cancel returned is noticed: then the
 * event rightly came, it is let through, and the pair is tried again. */
static void expect_cancelled(const char *armname, long (*arm)(uint64_t), const char *cancelname,
                             long (*cancel)(void), const char *name)
{
    for (int tries = 0; tries < 10; tries++) {
        uint64_t f = irq_save();
        uint64_t t0 = now_ns();
        long rc_arm = arm(20 * MS), rc_cancel = cancel();
        uint64_t t1 = now_ns();
        irq_restore(f);
        if (t1 + MS < t0 + 20 * MS) {
            check_eq(armname, rc_arm, 0);
            check_eq(cancelname, rc_cancel, 0);
            expect_no_event(name, 60 * MS);
            return;
        }
        quiet_sleep(60 * MS);   /* the deadline passed first: let its event land */
    }
    test_fail(name, "the host never let a cancel in within 20 ms of arming (10 tries)");
}

static void test_timer_ops(unsigned nr_vcpus)
{
    /* set_timer_op(0) cancels. */
    expect_cancelled("timer.set_timer_op_arm", arm_timer_op_rel, "timer.set_timer_op_zero",
                     cancel_timer_op, "timer.set_timer_op_cancel");

    /* A past deadline fires at once. */
    arm_and_expect("timer.set_timer_op_past", arm_timer_op, 1,
                   "timer.set_timer_op_past_fires", 0, WAIT_BOUND_NS, NULL);

    /* Far future / negative: Xen's "Linux workaround" fires in 100 ms. */
    uint64_t dt = 0;
    arm_and_expect("timer.set_timer_op_huge", arm_timer_op_rel, 1ULL << 51,
                   "timer.set_timer_op_huge_fires_in_100ms", 90 * MS, WAIT_BOUND_NS, &dt);
    info("huge_timeout_fired_after_ns", "%lu", (unsigned long)dt);
    arm_and_expect("timer.set_timer_op_negative", arm_timer_op, 1ULL << 63,
                   "timer.set_timer_op_negative_fires_in_100ms", 90 * MS, WAIT_BOUND_NS, NULL);

    /* VCPUOP single-shot: same timer as set_timer_op. */
    expect_cancelled("timer.singleshot_arm", arm_sshot_rel, "timer.singleshot_stop",
                     cancel_sshot, "timer.singleshot_stop_cancels");
    expect_cancelled("timer.singleshot_arm_again", arm_sshot_rel,
                     "timer.set_timer_op_zero_after_singleshot", cancel_timer_op,
                     "timer.set_timer_op_cancels_singleshot");
    expect_cancelled("timer.set_timer_op_arm_again", arm_timer_op_rel,
                     "timer.singleshot_stop_after_set_timer_op", cancel_sshot,
                     "timer.singleshot_stop_cancels_set_timer_op");

    /* Past deadlines: fire at once; VCPU_SSHOTTMR_future is ignored (4.17.x). */
    arm_and_expect("timer.singleshot_past", arm_sshot, 1,
                   "timer.singleshot_past_fires", 0, WAIT_BOUND_NS, NULL);
    arm_and_expect("timer.singleshot_future_flag_ignored", arm_sshot_future_past, 1 * MS,
                   "timer.singleshot_future_flag_past_fires", 0, WAIT_BOUND_NS, NULL);

    /* Argument checks. */
    check_eq("timer.singleshot_bad_vcpu", vcpu_set_singleshot(4096, now_ns() + 10 * MS, 0), ENOENT_);
    check_eq("timer.singleshot_stop_bad_vcpu", vcpu_stop_singleshot(4096), ENOENT_);
    check_eq("timer.singleshot_badptr", HYPERVISOR_vcpu_op(VCPUOP_set_singleshot_timer, 0, BAD_PTR), EFAULT_);
    check_eq("timer.stop_periodic_bad_vcpu", vcpu_stop_periodic(4096), ENOENT_);
    if (nr_vcpus >= 2) {
        check_eq("timer.singleshot_other_vcpu", vcpu_set_singleshot(1, now_ns() + 10 * MS, 0), EINVAL_);
        check_eq("timer.singleshot_stop_other_vcpu", vcpu_stop_singleshot(1), EINVAL_);
    }

    /* VIRQ_TIMER unbound: the timer expires and nothing happens. */
    evtchn_port_t tp = evtchn_cpu[0].timer_port;
    uint64_t up0 = evtchn_cpu[0].upcalls;
    check_eq("timer.close_virq_timer", evtchn_close(tp), 0);
    HYPERVISOR_set_timer_op(now_ns() + 5 * MS);
    quiet_sleep(40 * MS);
    check("timer.unbound_virq_timer_no_event", evtchn_cpu[0].upcalls == up0 && !evtchn_is_pending(tp),
          "upcalls %lu -> %lu, port %u pending %d", (unsigned long)up0,
          (unsigned long)evtchn_cpu[0].upcalls, tp, evtchn_is_pending(tp));
    check_eq("timer.rebind_virq_timer", evtchn_rebind_timer(), 0);
    evtchn_set_handler(evtchn_cpu[0].timer_port, tick_handler, NULL);
    arm_and_expect("timer.set_timer_op_after_rebind", arm_timer_op_rel, 5 * MS,
                   "timer.rebound_virq_timer_fires", 4 * MS, WAIT_BOUND_NS, NULL);
}

int guest_main(void)
{
    long rc = evtchn_init(UPCALL_CALLBACK_VECTOR);
    check_eq("timer.evtchn_init", rc, 0);
    if (rc)
        return 0;
    const char *s;
    uint64_t period = 10 * MS, seconds = 1;
    unsigned shots = 15;
    if ((s = cmdline_get("period_ms")))
        period = strtoul(s, NULL, 0) * MS;
    if ((s = cmdline_get("seconds")))
        seconds = strtoul(s, NULL, 0);
    if ((s = cmdline_get("shots")))
        shots = (unsigned)strtoul(s, NULL, 0);
    unsigned nr_vcpus = smp_nr_vcpus();

    evtchn_set_handler(evtchn_cpu[0].timer_port, tick_handler, NULL);
    test_timer_ops(nr_vcpus);
    test_oneshots(shots);
    test_periodic(period, seconds);
    irq_disable();
    return 0;
}
