/*
 * sched: __HYPERVISOR_sched_op (xen/common/sched/core.c do_sched_op,
 * do_poll, domain_watchdog), then ends the run as the command line says.
 *
 * cmdline: shutdown=poweroff|reboot|suspend|crash|watchdog|exception|hang|clihlt|spin
 *   poweroff (default): RESULT, SCHEDOP_shutdown(poweroff)
 *   reboot|suspend|crash: RESULT, SCHEDOP_shutdown(<that reason>)
 *   watchdog: RESULT, arm a 1 s SCHEDOP_watchdog, then block (sti;hlt, nothing
 *             armed) without feeding it (Xen: SHUTDOWN_watchdog after ~1 s)
 *   exception: RESULT, touch an unmapped address -> the runtime's #PF handler
 *             prints "PANIC exception vector=14 ..." and SHUTDOWN_crash
 *   hang:     RESULT, then block forever (sti;hlt with no interrupt source):
 *             no shutdown at all, the host's timeout must end it
 *   clihlt:   RESULT, then cli;hlt. NB Xen 4.17 (hvm_hlt -> hvm_vcpu_down)
 *             takes the vCPU offline and powers the domain off when it was
 *             the last one ("All CPUs offline -- powering off")
 *   spin:     RESULT, then a busy loop with interrupts off (host timeout)
 * code=<reason>: also call SCHEDOP_shutdown_code(<reason>) first; in Xen the
 *   recorded code then wins over the reason of the final SCHEDOP_shutdown.
 *
 * INFO keys: shutdown (the requested end), shutdown_code, poll_slept_ns.
 */
#include "guest.h"

static int reason_of(const char *s)
{
    if (!s || !strcmp(s, "poweroff")) return SHUTDOWN_poweroff;
    if (!strcmp(s, "reboot")) return SHUTDOWN_reboot;
    if (!strcmp(s, "suspend")) return SHUTDOWN_suspend;
    if (!strcmp(s, "crash")) return SHUTDOWN_crash;
    if (!strcmp(s, "watchdog")) return SHUTDOWN_watchdog;
    return -1;
}

static void test_poll(void)
{
    struct sched_poll p;
    evtchn_port_t ports[2] = { 0, 0 };
    uint64_t t0, t1;

    if (map_shared_info() != 0) {
        test_fail("sched.poll_timeout", "shared_info could not be mapped");
        return;
    }
    /* No ports, timeout 20 ms from now: sleeps until then, returns 0. */
    t0 = xen_now_ns();
    long rc = sleep_until(t0 + 20000000ULL);
    t1 = xen_now_ns();
    check_eq("sched.poll_timeout", rc, 0);
    check("sched.poll_timeout_slept", t1 - t0 >= 19000000ULL && t1 - t0 < 20000000ULL + WAIT_BOUND_NS,
          "expected to sleep ~20 ms, slept %lu ns", (unsigned long)(t1 - t0));
    info("poll_slept_ns", "%lu", (unsigned long)(t1 - t0));

    /* Port 0 (never pending), 10 ms. */
    p.nr_ports = 1;
    set_xen_guest_handle(p.ports, ports);
    t0 = xen_now_ns();
    p.timeout = t0 + 10000000ULL;
    rc = HYPERVISOR_sched_op(SCHEDOP_poll, &p);
    t1 = xen_now_ns();
    check_eq("sched.poll_port0", rc, 0);
    check("sched.poll_port0_slept", t1 - t0 >= 9000000ULL,
          "expected to sleep ~10 ms, slept %lu ns", (unsigned long)(t1 - t0));

    /* A deadline already in the past returns at once. */
    p.timeout = 1;
    t0 = xen_now_ns();
    check_eq("sched.poll_past_deadline", HYPERVISOR_sched_op(SCHEDOP_poll, &p), 0);
    t1 = xen_now_ns();
    check("sched.poll_past_deadline_fast", t1 - t0 < WAIT_BOUND_NS, "took %lu ns",
          (unsigned long)(t1 - t0));

    p.timeout = xen_now_ns() + 10000000ULL;
    p.nr_ports = 129;        /* "fairly arbitrary limit" of 128 */
    check_eq("sched.poll_too_many_ports", HYPERVISOR_sched_op(SCHEDOP_poll, &p), EINVAL_);
    p.nr_ports = 1;
    ports[0] = 4096;         /* >= max_evtchns of the 2-level ABI */
    check_eq("sched.poll_bad_port", HYPERVISOR_sched_op(SCHEDOP_poll, &p), EINVAL_);
    set_xen_guest_handle(p.ports, BAD_PTR);
    check_eq("sched.poll_bad_ports_ptr", HYPERVISOR_sched_op(SCHEDOP_poll, &p), EFAULT_);
    check_eq("sched.poll_badptr", HYPERVISOR_sched_op(SCHEDOP_poll, BAD_PTR), EFAULT_);
}

static void test_watchdog(void)
{
    struct sched_watchdog w = { .id = 0, .timeout = 60 };
    long id1 = HYPERVISOR_sched_op(SCHEDOP_watchdog, &w);
    check_eq("sched.watchdog_create", id1, 1);
    long id2 = HYPERVISOR_sched_op(SCHEDOP_watchdog, &w);
    check_eq("sched.watchdog_create_second", id2, 2);
    check_eq("sched.watchdog_create_full", HYPERVISOR_sched_op(SCHEDOP_watchdog, &w), ENOSPC_);
    w.id = 1; w.timeout = 60;
    check_eq("sched.watchdog_feed", HYPERVISOR_sched_op(SCHEDOP_watchdog, &w), 0);
    w.id = 1; w.timeout = 0;
    check_eq("sched.watchdog_destroy", HYPERVISOR_sched_op(SCHEDOP_watchdog, &w), 0);
    check_eq("sched.watchdog_destroy_again", HYPERVISOR_sched_op(SCHEDOP_watchdog, &w), EINVAL_);
    w.id = 3; w.timeout = 0;
    check_eq("sched.watchdog_bad_id", HYPERVISOR_sched_op(SCHEDOP_watchdog, &w), EINVAL_);
    w.id = 2; w.timeout = 0;
    check_eq("sched.watchdog_destroy_second", HYPERVISOR_sched_op(SCHEDOP_watchdog, &w), 0);
    check_eq("sched.watchdog_badptr", HYPERVISOR_sched_op(SCHEDOP_watchdog, BAD_PTR), EFAULT_);
}

int guest_main(void)
{
    const char *how = cmdline_get("shutdown");
    const char *code = cmdline_get("code");
    if (!how) how = "poweroff";
    info("shutdown", "%s", how);

    check_eq("sched.yield", HYPERVISOR_sched_op(SCHEDOP_yield, NULL), 0);

    /* shutdown_code: records the reason a later shutdown will report. */
    int final = reason_of(how);
    int c = code ? reason_of(code) : (final >= 0 ? final : SHUTDOWN_crash);
    if (code || final >= 0) {
        struct sched_shutdown sc = { .reason = (unsigned)c };
        check_eq("sched.shutdown_code", HYPERVISOR_sched_op(SCHEDOP_shutdown_code, &sc), 0);
        info("shutdown_code", "%d", c);
    }
    check_eq("sched.shutdown_code_badptr", HYPERVISOR_sched_op(SCHEDOP_shutdown_code, BAD_PTR), EFAULT_);
    check_eq("sched.shutdown_badptr", HYPERVISOR_sched_op(SCHEDOP_shutdown, BAD_PTR), EFAULT_);

    /* remote_shutdown: lookup first (-ESRCH), then XSM_DM_PRIV (-EPERM). */
    struct sched_remote_shutdown rs = { .domain_id = NO_SUCH_DOMID, .reason = SHUTDOWN_poweroff };
    check_eq("sched.remote_shutdown_no_such_domain", HYPERVISOR_sched_op(SCHEDOP_remote_shutdown, &rs), ESRCH_);
    rs.domain_id = DOMID_SELF;   /* rcu_lock_domain_by_id() does not resolve DOMID_SELF */
    check_eq("sched.remote_shutdown_domid_self", HYPERVISOR_sched_op(SCHEDOP_remote_shutdown, &rs), ESRCH_);
    if (boot.domid_present && !boot.dom0) {
        rs.domain_id = boot.domid;
        check_eq("sched.remote_shutdown_self_denied", HYPERVISOR_sched_op(SCHEDOP_remote_shutdown, &rs), EPERM_);
    }
    check_eq("sched.remote_shutdown_badptr", HYPERVISOR_sched_op(SCHEDOP_remote_shutdown, BAD_PTR), EFAULT_);

    if (!boot.dom0) {
        struct sched_pin_override po = { .pcpu = 0 };
        check_eq("sched.pin_override_denied", HYPERVISOR_sched_op(SCHEDOP_pin_override, &po), EPERM_);
    }

    test_poll();
    test_watchdog();

    check_eq("sched.unknown_subop", HYPERVISOR_sched_op(99, NULL), ENOSYS_);
    check_eq("sched.unknown_subop_negative", HYPERVISOR_sched_op(-1, NULL), ENOSYS_);

    /* ---- the end, as requested ---- */
    if (!strcmp(how, "poweroff"))
        return 0;                       /* runtime: RESULT + poweroff */
    printf("RESULT %u %u\n", tests_passed, tests_failed);
    if (!strcmp(how, "watchdog")) {
        struct sched_watchdog w = { .id = 0, .timeout = 1 };
        long id = HYPERVISOR_sched_op(SCHEDOP_watchdog, &w);
        info("watchdog_armed", "%ld", id);
        block_forever();                /* never fed: Xen shuts us down */
    }
    if (!strcmp(how, "exception")) {
        volatile uint64_t *bad = BAD_PTR;
        (void)*bad;                     /* #PF -> runtime panic -> crash */
        halt_forever();
    }
    if (!strcmp(how, "hang"))
        block_forever();
    if (!strcmp(how, "clihlt"))
        halt_forever();
    if (!strcmp(how, "spin"))
        for (;;)
            asm volatile("cli; nop");
    if (final < 0) {
        info("bad_shutdown_option", "%s", how);
        shutdown(SHUTDOWN_crash);
    }
    shutdown((unsigned)final);
}
