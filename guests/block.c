/*
 * block: SCHEDOP_block, SCHEDOP_poll on ports, `sti; hlt`, and an idle
 * mode for measuring the CPU a blocked guest uses.
 *
 * Semantics (Xen 4.17: xen/common/sched/core.c, xen/arch/x86/hvm/hvm.c and irq.c):
 *  - SCHEDOP_block = vcpu_block_enable_events: clears
 *    vcpu_info.evtchn_upcall_mask, sets _VPF_blocked, and stays runnable
 *    only if local_events_need_delivery(). For an HVM vCPU that is
 *    hvm_local_events_need_delivery: an upcall pending AND deliverable
 *    (EFLAGS.IF=1, hvm_interrupt_blocked). A new event (upcall_pending
 *    0->1: vcpu_mark_events_pending -> hvm_assert_evtchn_irq -> vcpu_kick)
 *    wakes it. NB: with IF=0 and the upcall already pending, Xen blocks
 *    until something else kicks the vCPU -- not tested (it would hang).
 *  - SCHEDOP_poll (do_poll): returns 0 at once if events need delivery or a
 *    listed port is pending (masked or not: evtchn_port_is_pending);
 *    otherwise sleeps until a listed port becomes pending
 *    (evtchn_2l_set_pending -> evtchn_check_pollers, even when masked),
 *    the absolute timeout passes (0: none), or the vCPU is kicked by an
 *    upcall-raising event on any port (vcpu_unblock).
 *  - HLT with IF=1 (hvm_hlt) = SCHEDOP_block; it returns when the upcall is
 *    delivered.
 *
 * cmdline: idle=<seconds>: skip the tests; block (sti;hlt, one timer at the
 *   end, nothing else armed) for that long, then RESULT and poweroff. The
 *   host measures that a blocked guest uses (almost) no CPU.
 *   idle_how=hlt (default) | block (SCHEDOP_block) | poll (SCHEDOP_poll with
 *   a timeout, no ports) | spin (never blocks: a busy loop of `pause` and
 *   pvclock reads, for measuring CPU caps and weights from outside)
 * INFO keys: block_slept_ns, poll_slept_ns, poll_woken_after_ns,
 *   hlt_slept_ns, idle_seconds, idle_how, idle_slept_ns, idle_wakeups.
 */
#include "guest.h"
#include "evtchn.h"

#define MS 1000000ULL

static volatile uint64_t timer_hits, ipi_hits;
static evtchn_port_t tp;        /* the library's VIRQ_TIMER port */
static volatile struct vcpu_info *vi;

static void timer_handler(evtchn_port_t port, void *arg) { timer_hits++; }
static void ipi_handler(evtchn_port_t port, void *arg) { ipi_hits++; }

static bool slept_about(uint64_t dt, uint64_t want)
{
    return dt + MS >= want && dt < want + WAIT_BOUND_NS;
}

/* How far ahead a timer that must end a block is armed. */
#define LEAD (100 * MS)

/*
 * Arm the timer LEAD ahead, with interrupts off, for a block that only this timer ends.
 * If the host deschedules this vCPU past the deadline before it blocks, the event comes
 * first and the block has nothing left to wake it (Xen's semantics: a guest that blocks
 * with IF=0 and the upcall already pending sleeps until something else kicks it). So if a
 * fifth of the lead is spent before the caller can block, let this timer fire, take its
 * upcall, and arm again. Returns the arming time; *hits the handler count before it.
 */
static uint64_t arm_for_block(uint64_t *hits)
{
    for (;;) {
        irq_disable();
        *hits = timer_hits;
        uint64_t t0 = now_ns();
        HYPERVISOR_set_timer_op(t0 + LEAD);
        if (now_ns() - t0 < LEAD / 5)
            return t0;
        vi->evtchn_upcall_mask = 0;
        irq_enable();
        wait_for_count(&timer_hits, *hits + 1, now_ns() + WAIT_BOUND_NS);
    }
}

static void test_sched_block(void)
{
    uint64_t t0, t1, h0;
    long rc;

    /* IF=0: SCHEDOP_block sleeps until the timer's event, which stays
     * pending (no upcall with interrupts off); it clears upcall_mask. */
    t0 = arm_for_block(&h0);
    vi->evtchn_upcall_mask = 1;
    rc = sched_block();
    t1 = now_ns();
    uint8_t mask = vi->evtchn_upcall_mask, up = vi->evtchn_upcall_pending;
    bool pend = evtchn_is_pending(tp);
    uint64_t h1 = timer_hits;
    irq_enable();
    check_eq("block.sched_block", rc, 0);
    check("block.sched_block_waits_for_event", slept_about(t1 - t0, LEAD),
          "returned after %lu ns, timer was %lu ns ahead", (unsigned long)(t1 - t0),
          (unsigned long)LEAD);
    info("block_slept_ns", "%lu", (unsigned long)(t1 - t0));
    check_eq("block.sched_block_clears_upcall_mask", mask, 0);
    check("block.sched_block_event_pending_if0", pend && up == 1 && h1 == h0,
          "timer port pending %d, upcall_pending %u, handler ran %lu times with IF=0", pend, up,
          (unsigned long)(h1 - h0));
    check("block.sched_block_upcall_after_sti", wait_for_count(&timer_hits, h0 + 1, now_ns() + WAIT_BOUND_NS),
          "no upcall after sti");

    /* IF=1: the upcall is delivered as the hypercall returns. */
    t0 = arm_for_block(&h0);
    irq_enable();
    rc = sched_block();
    t1 = now_ns();
    check_eq("block.sched_block_if1", rc, 0);
    check("block.sched_block_if1_waits", slept_about(t1 - t0, LEAD), "returned after %lu ns",
          (unsigned long)(t1 - t0));
    check("block.sched_block_if1_upcall", wait_for_count(&timer_hits, h0 + 1, now_ns() + WAIT_BOUND_NS),
          "timer handler did not run");
}

static void test_poll(evtchn_port_t pi, evtchn_port_t pu)
{
    uint64_t t0, t1, h0;
    long rc;
    evtchn_port_t ports[2];

    /* Timeout, on a port that never fires. */
    evtchn_mask(pu);
    ports[0] = pu;
    t0 = now_ns();
    rc = sched_poll(ports, 1, t0 + 20 * MS);
    t1 = now_ns();
    check_eq("block.poll_timeout", rc, 0);
    check("block.poll_timeout_slept", slept_about(t1 - t0, 20 * MS), "slept %lu ns, timeout 20 ms",
          (unsigned long)(t1 - t0));
    info("poll_slept_ns", "%lu", (unsigned long)(t1 - t0));

    /* Already pending (masked: no upcall) -> at once. */
    evtchn_mask(pi);
    evtchn_send(pi);
    ports[0] = pi;
    t0 = now_ns();
    rc = sched_poll(ports, 1, t0 + 2 * WAIT_BOUND_NS);
    t1 = now_ns();
    check("block.poll_pending_returns_at_once", rc == 0 && t1 - t0 < WAIT_BOUND_NS, "rc %ld after %lu ns",
          rc, (unsigned long)(t1 - t0));
    /* ... also when it is the second of two ports. */
    ports[0] = pu;
    ports[1] = pi;
    t0 = now_ns();
    rc = sched_poll(ports, 2, t0 + 2 * WAIT_BOUND_NS);
    t1 = now_ns();
    check("block.poll_second_port_pending", rc == 0 && t1 - t0 < WAIT_BOUND_NS, "rc %ld after %lu ns",
          rc, (unsigned long)(t1 - t0));
    evtchn_clear_pending(pi);
    evtchn_unmask(pi);

    /* A masked polled port becoming pending wakes the poller (no upcall). */
    h0 = timer_hits;
    uint64_t up0 = evtchn_cpu[0].upcalls;
    evtchn_mask(tp);
    ports[0] = pu;
    ports[1] = tp;
    t0 = now_ns();
    HYPERVISOR_set_timer_op(t0 + 20 * MS);
    rc = sched_poll(ports, 2, t0 + 2 * WAIT_BOUND_NS);
    t1 = now_ns();
    bool pend = evtchn_is_pending(tp);
    check_eq("block.poll_wait", rc, 0);
    check("block.poll_woken_by_polled_port", slept_about(t1 - t0, 20 * MS) && pend,
          "returned after %lu ns (timer 20 ms, timeout 20 s), port pending %d",
          (unsigned long)(t1 - t0), pend);
    info("poll_woken_after_ns", "%lu", (unsigned long)(t1 - t0));
    check("block.poll_masked_port_no_upcall", timer_hits == h0 && evtchn_cpu[0].upcalls == up0,
          "handler ran %lu times, %lu upcalls", (unsigned long)(timer_hits - h0),
          (unsigned long)(evtchn_cpu[0].upcalls - up0));
    evtchn_unmask(tp);          /* pending: Xen re-raises it -> upcall */
    check("block.unmask_after_poll_delivers", wait_for_count(&timer_hits, h0 + 1, now_ns() + WAIT_BOUND_NS),
          "no upcall after EVTCHNOP_unmask of the pending timer port");

    /* No timeout (0): only the port ends it. */
    evtchn_mask(tp);
    ports[0] = tp;
    t0 = now_ns();
    HYPERVISOR_set_timer_op(t0 + 20 * MS);
    rc = sched_poll(ports, 1, 0);
    t1 = now_ns();
    check("block.poll_no_timeout", rc == 0 && slept_about(t1 - t0, 20 * MS), "rc %ld after %lu ns",
          rc, (unsigned long)(t1 - t0));
    evtchn_clear_pending(tp);
    evtchn_unmask(tp);

    /* Any upcall-raising event kicks a poller awake (IF=0 so the event is not
     * delivered before the poll): the timer port is unmasked but not polled. */
    ports[0] = pu;
    t0 = arm_for_block(&h0);
    rc = sched_poll(ports, 1, t0 + 2 * WAIT_BOUND_NS);
    t1 = now_ns();
    irq_enable();
    check("block.poll_woken_by_other_event", rc == 0 && slept_about(t1 - t0, LEAD),
          "rc %ld after %lu ns (event at %lu ns, timeout 20 s)", rc, (unsigned long)(t1 - t0),
          (unsigned long)LEAD);
    wait_for_count(&timer_hits, h0 + 1, now_ns() + WAIT_BOUND_NS);

    check_eq("block.poll_too_many_ports", sched_poll(ports, 129, now_ns() + MS), EINVAL_);
    ports[0] = NR_PORTS_2L;
    check_eq("block.poll_port_out_of_range", sched_poll(ports, 1, now_ns() + MS), EINVAL_);
    check_eq("block.poll_bad_ports_ptr", sched_poll(BAD_PTR, 1, now_ns() + MS), EFAULT_);
}

static void test_hlt(void)
{
    uint64_t h0 = timer_hits, t0 = now_ns(), t1;
    HYPERVISOR_set_timer_op(t0 + 20 * MS);
    irq_disable();
    while (timer_hits == h0)
        safe_halt_cli();        /* sti; hlt: wakes when the upcall is delivered */
    t1 = now_ns();
    irq_enable();
    check("block.hlt_wakes_on_upcall", slept_about(t1 - t0, 20 * MS), "hlt loop ended after %lu ns",
          (unsigned long)(t1 - t0));
    info("hlt_slept_ns", "%lu", (unsigned long)(t1 - t0));

    /* An event that is already pending when sti;hlt runs is not lost. */
    evtchn_port_t pi = 0;
    if (evtchn_bind_ipi(0, &pi) == 0) {
        uint64_t i0 = ipi_hits;
        evtchn_set_handler(pi, ipi_handler, NULL);
        irq_disable();
        evtchn_send(pi);            /* upcall pending while IF=0 */
        HYPERVISOR_set_timer_op(now_ns() + 2 * WAIT_BOUND_NS);   /* backstop */
        t0 = now_ns();
        safe_halt_cli();
        t1 = now_ns();
        irq_enable();
        HYPERVISOR_set_timer_op(0);
        check("block.hlt_pending_event_not_lost", ipi_hits == i0 + 1 && t1 - t0 < WAIT_BOUND_NS,
              "ipi handler ran %lu times, hlt took %lu ns", (unsigned long)(ipi_hits - i0),
              (unsigned long)(t1 - t0));
        evtchn_close(pi);
    }
}

static void idle_mode(uint64_t seconds, const char *how)
{
    info("idle_seconds", "%lu", (unsigned long)seconds);
    info("idle_how", "%s", how);
    uint64_t up0 = evtchn_cpu[0].upcalls;
    uint64_t t0 = now_ns(), end = t0 + seconds * 1000 * MS, t1;
    uint64_t wakeups = 0;
    if (!strcmp(how, "spin")) {
        while ((t1 = now_ns()) < end)
            cpu_relax();        /* `pause`: busy, but a polite spinner */
    } else if (!strcmp(how, "poll")) {
        while ((t1 = now_ns()) < end) {
            sleep_until(end);
            wakeups++;
        }
    } else if (!strcmp(how, "block")) {
        irq_disable();
        while ((t1 = now_ns()) < end) {
            HYPERVISOR_set_timer_op(end);
            sched_block();
            irq_enable();       /* take the timer's upcall */
            irq_disable();
            wakeups++;
        }
        irq_enable();
    } else {
        irq_disable();
        while ((t1 = now_ns()) < end) {
            HYPERVISOR_set_timer_op(end);
            safe_halt_cli();
            wakeups++;
        }
        irq_enable();
    }
    t1 = now_ns();
    info("idle_slept_ns", "%lu", (unsigned long)(t1 - t0));
    info("idle_wakeups", "%lu", (unsigned long)wakeups);
    info("idle_upcalls", "%lu", (unsigned long)(evtchn_cpu[0].upcalls - up0));
    check("block.idle_slept", t1 - t0 >= seconds * 1000 * MS, "slept %lu ns of %lu s",
          (unsigned long)(t1 - t0), (unsigned long)seconds);
}

int guest_main(void)
{
    long rc = evtchn_init(UPCALL_CALLBACK_VECTOR);
    check_eq("block.evtchn_init", rc, 0);
    if (rc)
        return 0;
    tp = evtchn_cpu[0].timer_port;
    vi = evtchn_cpu[0].vi;
    evtchn_set_handler(tp, timer_handler, NULL);

    const char *idle = cmdline_get("idle");   /* NB: cmdline_get's buffer is static */
    if (idle) {
        uint64_t seconds = strtoul(idle, NULL, 0);
        char how[16] = "hlt";
        const char *h = cmdline_get("idle_how");
        if (h)
            snprintf(how, sizeof(how), "%s", h);
        idle_mode(seconds, how);
        irq_disable();
        return 0;
    }

    evtchn_port_t pi = 0, pu = 0;
    check_eq("block.bind_ipi", evtchn_bind_ipi(0, &pi), 0);
    evtchn_set_handler(pi, ipi_handler, NULL);
    check_eq("block.alloc_unbound", evtchn_alloc_unbound(DOMID_SELF, DOMID_SELF, &pu), 0);

    test_sched_block();
    test_poll(pi, pu);
    test_hlt();
    irq_disable();
    return 0;
}
