/*
 * evtchn: __HYPERVISOR_event_channel_op, every sub-op with good and bad
 * input, and delivery through the 2-level bitmaps and the upcall vector.
 *
 * Semantics (Xen 4.17, xen/common/event_channel.c unless said otherwise):
 *  - port 0 is ECS_RESERVED: valid, status "closed", close/send -EINVAL.
 *  - ports are valid a bucket at a time; an invalid port is -EINVAL
 *    (port_is_valid), a valid free one is "closed" for status and -EINVAL
 *    for close/send/bind_vcpu.
 *  - alloc_unbound: rcu_lock_domain_by_any_id(dom) -> -ESRCH; remote_dom is
 *    not checked; DOMID_SELF is stored as our domid. No free port ->
 *    -ENOSPC (get_free_port; xl's default max_event_channels=1023, so ports
 *    1..1023).
 *  - bind_interdomain: -ESRCH for no such remote domain; remote port not
 *    valid, not unbound, or unbound for another domain -> -EINVAL. Binding
 *    always sets the new local port pending ("We may have lost
 *    notifications on the remote unbound port").
 *  - bind_virq: virq >= NR_VIRQS -> -EINVAL; a global virq with vcpu != 0
 *    -> -EINVAL (before the vcpu lookup); no such vcpu -> -ENOENT; bound
 *    already -> -EEXIST. A domU may bind a global VIRQ (e.g. VIRQ_CONSOLE):
 *    4.17 has no "handler domain" check (that -EBUSY came in 2025).
 *  - bind_ipi: no such vcpu -> -ENOENT.
 *  - bind_pirq for an HVM/PVH domU: pirq >= d->nr_pirqs -> -EINVAL; the
 *    -EPERM permission check is for PV only (!is_hvm_domain), and no
 *    pirq_guest_bind is done for HVM, so it succeeds (ECS_PIRQ) and a
 *    second bind of the same pirq is -EEXIST. nr_pirqs = nr_static_irqs
 *    (>= 16 GSIs) + extra_domU_irqs (32) (xen/common/domain.c domain_create).
 *  - close: interdomain -> the peer becomes unbound for our domain.
 *    evtchn_free clears the pending bit and resets notify_vcpu_id to 0.
 *  - send: interdomain -> peer pending; ipi -> itself pending; unbound ->
 *    0, dropped; virq/pirq/free/reserved -> -EINVAL.
 *  - status: -ESRCH no such domain, -EINVAL invalid port.
 *  - bind_vcpu: no such vcpu -> -ENOENT (first); invalid port -> -EINVAL;
 *    per-vCPU VIRQ (VIRQ_TIMER) and IPI -> -EINVAL; global VIRQ, unbound,
 *    interdomain (and pirq) -> ok.
 *  - unmask (event_2l.c evtchn_2l_unmask): test_and_clear the mask bit; if
 *    it WAS set and the port is pending, set the selector bit and mark the
 *    upcall pending. If the mask bit was already clear nothing is raised.
 *  - set_pending (event_2l.c): pending bit; if unmasked: selector bit, and
 *    evtchn_upcall_pending on its 0->1 transition.
 *  - reset(DOMID_SELF): closes every port; EVTCHNOP_reset_cont with no
 *    reset in progress -> -EBUSY (evtchn_reset: i = !resuming ... ? : 0).
 *  - unknown sub-op -> -ENOSYS. FIFO sub-ops while 2-level (evtchn_fifo.c
 *    covers the FIFO ABI): init_control for no such vCPU -> -ENOENT,
 *    expand_array before init_control -> -EOPNOTSUPP, set_priority on a
 *    valid port -> -ENOSYS (the 2-level port ops have no set_priority).
 *
 * cmdline: upcall=callback (default: HVM_PARAM_CALLBACK_IRQ vector) |
 *          percpu (HVMOP_set_evtchn_upcall_vector)
 * INFO keys: upcall_mode, max_port (the last port alloc_unbound gave before
 *   -ENOSPC), ports_allocated, pirq_port, upcalls, spurious.
 */
#include "guest.h"
#include "evtchn.h"

static unsigned domid;            /* our numeric domid (DOMID_SELF if unknown) */
static unsigned nr_vcpus;
static volatile uint64_t cnt[8];  /* delivery counters, one per test handler */

static void count_handler(evtchn_port_t port, void *arg)
{
    (*(volatile uint64_t *)arg)++;
}

static bool wait_cnt(unsigned i, uint64_t target)
{
    return wait_for_count(&cnt[i], target, now_ns() + WAIT_BOUND_NS);
}

static void settle(uint64_t ns)
{
    block_until(now_ns() + ns);
}

static void expect_status(const char *name, evtchn_port_t port, uint32_t status, uint32_t vcpu)
{
    struct evtchn_status st;
    long rc = evtchn_status(DOMID_SELF, port, &st);
    check(name, rc == 0 && st.status == status && st.vcpu == vcpu,
          "port %u: rc %ld status %u vcpu %u, expected status %u vcpu %u", port, rc,
          st.status, st.vcpu, status, vcpu);
}

static long raw_op(int cmd, void *arg) { return HYPERVISOR_event_channel_op(cmd, arg); }

/* ---------------------------------------------------------------- */
static void test_unbound_and_interdomain(void)
{
    evtchn_port_t p1 = 0, p2 = 0, p3 = 0, px = 0;
    struct evtchn_status st;
    long rc;

    rc = evtchn_alloc_unbound(DOMID_SELF, DOMID_SELF, &p1);
    check("evtchn.alloc_unbound", rc == 0 && p1 > 0 && p1 < NR_PORTS_2L, "rc %ld port %u", rc, p1);
    rc = evtchn_status(DOMID_SELF, p1, &st);
    check("evtchn.status_unbound", rc == 0 && st.status == EVTCHNSTAT_unbound && st.vcpu == 0,
          "rc %ld status %u vcpu %u", rc, st.status, st.vcpu);
    if (boot.domid_present)
        check_eq("evtchn.status_unbound_remote_is_own_domid", st.u.unbound.dom, domid);
    check_eq("evtchn.alloc_unbound_no_such_domain",
             evtchn_alloc_unbound(NO_SUCH_DOMID, DOMID_SELF, NULL), ESRCH_);
    check_eq("evtchn.alloc_unbound_badptr", raw_op(EVTCHNOP_alloc_unbound, BAD_PTR), EFAULT_);
    if (boot.domid_present) {
        evtchn_port_t q = 0;
        rc = evtchn_alloc_unbound(domid, DOMID_SELF, &q);
        check("evtchn.alloc_unbound_own_domid", rc == 0 && q > 0, "rc %ld port %u", rc, q);
        if (rc == 0)
            evtchn_close(q);
    }
    /* remote_dom is not validated: an unbound port for a domain that does
     * not exist (yet) is fine. */
    rc = evtchn_alloc_unbound(DOMID_SELF, NO_SUCH_DOMID, &px);
    check_eq("evtchn.alloc_unbound_remote_not_checked", rc, 0);
    if (rc == 0) {
        evtchn_status(DOMID_SELF, px, &st);
        check_eq("evtchn.status_unbound_remote_dom", st.u.unbound.dom, NO_SUCH_DOMID);
    }

    /* Loopback: bind our own unbound port. With interrupts off, see that the
     * new local port comes out pending, then let the upcall deliver it. */
    evtchn_set_handler(p1, count_handler, (void *)&cnt[1]);
    uint64_t f = irq_save();
    rc = evtchn_bind_interdomain(DOMID_SELF, p1, &p2);
    bool pend = rc == 0 && evtchn_is_pending(p2);
    if (rc == 0)
        evtchn_set_handler(p2, count_handler, (void *)&cnt[2]);
    irq_restore(f);
    check("evtchn.bind_interdomain_loopback", rc == 0 && p2 > 0 && p2 != p1, "rc %ld port %u", rc, p2);
    check("evtchn.bind_interdomain_sets_local_pending", pend, "new local port %u not pending", p2);
    check("evtchn.bind_interdomain_pending_delivered", wait_cnt(2, 1), "handler of %u ran %lu times",
          p2, (unsigned long)cnt[2]);
    check_eq("evtchn.bind_interdomain_remote_not_pending", cnt[1], 0);

    rc = evtchn_status(DOMID_SELF, p1, &st);
    check("evtchn.status_interdomain", rc == 0 && st.status == EVTCHNSTAT_interdomain &&
          st.u.interdomain.port == p2 && (!boot.domid_present || st.u.interdomain.dom == domid),
          "rc %ld status %u dom %u port %u (expected port %u)", rc, st.status,
          st.u.interdomain.dom, st.u.interdomain.port, p2);
    rc = evtchn_status(DOMID_SELF, p2, &st);
    check("evtchn.status_interdomain_peer", rc == 0 && st.status == EVTCHNSTAT_interdomain &&
          st.u.interdomain.port == p1, "rc %ld status %u port %u (expected %u)", rc, st.status,
          st.u.interdomain.port, p1);

    check_eq("evtchn.send_interdomain", evtchn_send(p1), 0);
    check("evtchn.send_interdomain_delivers_peer", wait_cnt(2, 2), "peer handler ran %lu times",
          (unsigned long)cnt[2]);
    check_eq("evtchn.send_interdomain_not_self", cnt[1], 0);
    check_eq("evtchn.send_interdomain_reverse", evtchn_send(p2), 0);
    check("evtchn.send_interdomain_reverse_delivers", wait_cnt(1, 1), "handler ran %lu times",
          (unsigned long)cnt[1]);

    /* bind_interdomain errors. */
    evtchn_port_t dummy;
    check_eq("evtchn.bind_interdomain_already_bound", evtchn_bind_interdomain(DOMID_SELF, p1, &dummy), EINVAL_);
    check_eq("evtchn.bind_interdomain_port0", evtchn_bind_interdomain(DOMID_SELF, 0, &dummy), EINVAL_);
    check_eq("evtchn.bind_interdomain_invalid_port", evtchn_bind_interdomain(DOMID_SELF, 4095, &dummy), EINVAL_);
    check_eq("evtchn.bind_interdomain_huge_port", evtchn_bind_interdomain(DOMID_SELF, 0xffffffffu, &dummy), EINVAL_);
    if (px)
        check_eq("evtchn.bind_interdomain_unbound_for_other_domain",
                 evtchn_bind_interdomain(DOMID_SELF, px, &dummy), EINVAL_);
    check_eq("evtchn.bind_interdomain_no_such_domain",
             evtchn_bind_interdomain(NO_SUCH_DOMID, p1, &dummy), ESRCH_);
    check_eq("evtchn.bind_interdomain_badptr", raw_op(EVTCHNOP_bind_interdomain, BAD_PTR), EFAULT_);
    if (boot.domid_present) {
        /* Our numeric domid works like DOMID_SELF. */
        evtchn_port_t u = 0, v = 0;
        evtchn_alloc_unbound(DOMID_SELF, DOMID_SELF, &u);
        rc = evtchn_bind_interdomain(domid, u, &v);
        check_eq("evtchn.bind_interdomain_own_domid", rc, 0);
        evtchn_close(v);
        evtchn_close(u);
    }

    /* Close one end: the other goes back to unbound, for our domain. */
    check_eq("evtchn.close_interdomain", evtchn_close(p2), 0);
    rc = evtchn_status(DOMID_SELF, p1, &st);
    check("evtchn.close_interdomain_leaves_peer_unbound",
          rc == 0 && st.status == EVTCHNSTAT_unbound && (!boot.domid_present || st.u.unbound.dom == domid),
          "rc %ld status %u dom %u", rc, st.status, st.u.unbound.dom);
    expect_status("evtchn.status_closed_after_close", p2, EVTCHNSTAT_closed, 0);

    /* Send on an unbound port: accepted and dropped. */
    uint64_t before = cnt[1];
    check_eq("evtchn.send_unbound", evtchn_send(p1), 0);
    settle(20000000ULL);
    check("evtchn.send_unbound_dropped", cnt[1] == before && !evtchn_is_pending(p1),
          "handler ran %lu -> %lu, pending %d", (unsigned long)before, (unsigned long)cnt[1],
          evtchn_is_pending(p1));

    /* The unbound end can be bound again; then close the other side. */
    rc = evtchn_bind_interdomain(DOMID_SELF, p1, &p3);
    check_eq("evtchn.bind_interdomain_again", rc, 0);
    settle(5000000ULL);             /* let the bind's pending notification go */
    check_eq("evtchn.close_interdomain_other_end", evtchn_close(p1), 0);
    expect_status("evtchn.close_other_end_leaves_unbound", p3, EVTCHNSTAT_unbound, 0);
    check_eq("evtchn.close_unbound", evtchn_close(p3), 0);
    expect_status("evtchn.status_closed_after_close_unbound", p3, EVTCHNSTAT_closed, 0);
    if (px)
        evtchn_close(px);
}

/* ---------------------------------------------------------------- */
static void test_virq(void)
{
    evtchn_port_t pd = 0, pc = 0, dummy;
    struct evtchn_status st;
    long rc;

    check_eq("evtchn.bind_virq_timer_twice", evtchn_bind_virq(VIRQ_TIMER, 0, &dummy), EEXIST_);
    rc = evtchn_bind_virq(VIRQ_DEBUG, 0, &pd);
    check("evtchn.bind_virq_debug", rc == 0 && pd > 0, "rc %ld port %u", rc, pd);
    rc = evtchn_status(DOMID_SELF, pd, &st);
    check("evtchn.status_virq", rc == 0 && st.status == EVTCHNSTAT_virq && st.u.virq == VIRQ_DEBUG &&
          st.vcpu == 0, "rc %ld status %u virq %u vcpu %u", rc, st.status, st.u.virq, st.vcpu);
    check_eq("evtchn.bind_virq_debug_twice", evtchn_bind_virq(VIRQ_DEBUG, 0, &dummy), EEXIST_);
    check_eq("evtchn.send_virq_port", evtchn_send(pd), EINVAL_);

    /* A global VIRQ binds on vCPU 0 only. */
    rc = evtchn_bind_virq(VIRQ_CONSOLE, 0, &pc);
    check_eq("evtchn.bind_virq_global_console", rc, 0);
    if (rc == 0) {
        rc = evtchn_status(DOMID_SELF, pc, &st);
        check("evtchn.status_virq_global", rc == 0 && st.status == EVTCHNSTAT_virq &&
              st.u.virq == VIRQ_CONSOLE, "rc %ld status %u virq %u", rc, st.status, st.u.virq);
        check_eq("evtchn.bind_vcpu_global_virq", evtchn_bind_vcpu(pc, 0), 0);
    }
    check_eq("evtchn.bind_virq_global_vcpu1", evtchn_bind_virq(VIRQ_CONSOLE, 1, &dummy), EINVAL_);
    check_eq("evtchn.bind_virq_global_bad_vcpu", evtchn_bind_virq(VIRQ_DOM_EXC, 4096, &dummy), EINVAL_);
    check_eq("evtchn.bind_virq_arch_vcpu1", evtchn_bind_virq(VIRQ_ARCH_0, 1, &dummy), EINVAL_);
    check_eq("evtchn.bind_virq_bad_vcpu", evtchn_bind_virq(VIRQ_TIMER, 4096, &dummy), ENOENT_);
    check_eq("evtchn.bind_virq_debug_bad_vcpu", evtchn_bind_virq(VIRQ_DEBUG, 4096, &dummy), ENOENT_);
    check_eq("evtchn.bind_virq_out_of_range", evtchn_bind_virq(NR_VIRQS, 0, &dummy), EINVAL_);
    check_eq("evtchn.bind_virq_negative", evtchn_bind_virq(0xffffffffu, 0, &dummy), EINVAL_);
    check_eq("evtchn.bind_virq_badptr", raw_op(EVTCHNOP_bind_virq, BAD_PTR), EFAULT_);

    /* A per-vCPU VIRQ cannot move to another vCPU. */
    check_eq("evtchn.bind_vcpu_timer_virq", evtchn_bind_vcpu(evtchn_cpu[0].timer_port, 0), EINVAL_);

    /* Close and bind again. */
    check_eq("evtchn.close_virq", evtchn_close(pd), 0);
    expect_status("evtchn.status_closed_after_close_virq", pd, EVTCHNSTAT_closed, 0);
    rc = evtchn_bind_virq(VIRQ_DEBUG, 0, &pd);
    check_eq("evtchn.bind_virq_after_close", rc, 0);
    if (rc == 0)
        evtchn_close(pd);
    if (pc)
        check_eq("evtchn.close_virq_global", evtchn_close(pc), 0);
}

/* ---------------------------------------------------------------- */
static void test_ipi_and_masking(void)
{
    evtchn_port_t pi = 0, dummy;
    long rc;

    rc = evtchn_bind_ipi(0, &pi);
    check("evtchn.bind_ipi", rc == 0 && pi > 0, "rc %ld port %u", rc, pi);
    if (rc)
        return;
    expect_status("evtchn.status_ipi", pi, EVTCHNSTAT_ipi, 0);
    check_eq("evtchn.bind_ipi_bad_vcpu", evtchn_bind_ipi(4096, &dummy), ENOENT_);
    check_eq("evtchn.bind_ipi_badptr", raw_op(EVTCHNOP_bind_ipi, BAD_PTR), EFAULT_);
    check_eq("evtchn.bind_vcpu_ipi", evtchn_bind_vcpu(pi, 0), EINVAL_);

    evtchn_set_handler(pi, count_handler, (void *)&cnt[3]);
    check_eq("evtchn.send_ipi", evtchn_send(pi), 0);
    check("evtchn.ipi_delivered", wait_cnt(3, 1), "IPI handler ran %lu times", (unsigned long)cnt[3]);

    /* The 2-level bitmaps, bit for bit, with interrupts off. */
    volatile struct vcpu_info *vi = evtchn_cpu[0].vi;
    uint64_t f = irq_save();
    rc = evtchn_send(pi);
    bool pend = evtchn_is_pending(pi), sel = evtchn_sel_is_set(0, pi);
    uint8_t up = vi->evtchn_upcall_pending;
    irq_restore(f);
    check("evtchn.send_sets_pending_bit", rc == 0 && pend, "rc %ld pending %d", rc, pend);
    check("evtchn.send_sets_selector_bit", sel, "evtchn_pending_sel bit %u not set", pi / 64);
    check_eq("evtchn.send_sets_upcall_pending", up, 1);
    check("evtchn.upcall_runs_handler", wait_cnt(3, 2), "handler ran %lu times", (unsigned long)cnt[3]);
    check("evtchn.upcall_clears_bits", !evtchn_is_pending(pi) && !vi->evtchn_upcall_pending,
          "pending %d upcall_pending %u after the upcall", evtchn_is_pending(pi), vi->evtchn_upcall_pending);

    /* Masked: the pending bit is set but no selector/upcall, no delivery. */
    evtchn_mask(pi);
    f = irq_save();
    rc = evtchn_send(pi);
    pend = evtchn_is_pending(pi);
    sel = evtchn_sel_is_set(0, pi);
    up = vi->evtchn_upcall_pending;
    irq_restore(f);
    check_eq("evtchn.send_masked", rc, 0);
    check("evtchn.masked_sets_pending_only", pend && !sel && !up,
          "pending %d selector %d upcall_pending %u", pend, sel, up);
    settle(20000000ULL);
    check_eq("evtchn.masked_not_delivered", cnt[3], 2);
    check_eq("evtchn.unmask", evtchn_unmask(pi), 0);
    check("evtchn.unmask_delivers_pending", wait_cnt(3, 3), "handler ran %lu times after unmask",
          (unsigned long)cnt[3]);
    check("evtchn.unmask_clears_mask_bit", !evtchn_is_masked(pi), "mask bit still set");

    /* Unmask re-raises only if it found the mask bit set: clear it locally
     * first, and EVTCHNOP_unmask has nothing to do (evtchn_2l_unmask:
     * test_and_clear(mask) && pending && !test_and_set(sel)). Checked with
     * interrupts off: no selector bit, no upcall_pending. */
    f = irq_save();
    evtchn_mask(pi);
    evtchn_send(pi);
    evtchn_unmask_local(pi);
    rc = evtchn_unmask(pi);
    pend = evtchn_is_pending(pi);
    sel = evtchn_sel_is_set(0, pi);
    up = vi->evtchn_upcall_pending;
    evtchn_clear_pending(pi);
    irq_restore(f);
    check_eq("evtchn.unmask_after_local_clear", rc, 0);
    check("evtchn.unmask_after_local_clear_no_upcall", pend && !sel && !up,
          "pending %d selector %d upcall_pending %u (expected 1 0 0)", pend, sel, up);

    check_eq("evtchn.unmask_invalid_port", evtchn_unmask(4095), EINVAL_);
    check_eq("evtchn.unmask_huge_port", evtchn_unmask(0xffffffffu), EINVAL_);
    check_eq("evtchn.unmask_port0", evtchn_unmask(0), 0);
    check_eq("evtchn.unmask_badptr", raw_op(EVTCHNOP_unmask, BAD_PTR), EFAULT_);

    check_eq("evtchn.close_ipi", evtchn_close(pi), 0);
    check_eq("evtchn.send_closed_port", evtchn_send(pi), EINVAL_);
    check_eq("evtchn.close_closed_port", evtchn_close(pi), EINVAL_);
    expect_status("evtchn.status_closed_after_close_ipi", pi, EVTCHNSTAT_closed, 0);
}

/* ---------------------------------------------------------------- */
static void test_misc_errors(void)
{
    struct evtchn_status st;

    check_eq("evtchn.send_port0", evtchn_send(0), EINVAL_);
    check_eq("evtchn.send_invalid_port", evtchn_send(4095), EINVAL_);
    check_eq("evtchn.send_huge_port", evtchn_send(0xffffffffu), EINVAL_);
    check_eq("evtchn.send_badptr", raw_op(EVTCHNOP_send, BAD_PTR), EFAULT_);
    check_eq("evtchn.close_port0", evtchn_close(0), EINVAL_);
    check_eq("evtchn.close_invalid_port", evtchn_close(4095), EINVAL_);
    check_eq("evtchn.close_badptr", raw_op(EVTCHNOP_close, BAD_PTR), EFAULT_);
    expect_status("evtchn.status_port0_reserved_is_closed", 0, EVTCHNSTAT_closed, 0);
    check_eq("evtchn.status_invalid_port", evtchn_status(DOMID_SELF, 4095, &st), EINVAL_);
    check_eq("evtchn.status_huge_port", evtchn_status(DOMID_SELF, 0xffffffffu, &st), EINVAL_);
    check_eq("evtchn.status_no_such_domain", evtchn_status(NO_SUCH_DOMID, 1, &st), ESRCH_);
    check_eq("evtchn.status_badptr", raw_op(EVTCHNOP_status, BAD_PTR), EFAULT_);
    if (boot.domid_present) {
        long rc = evtchn_status(domid, 0, &st);
        check("evtchn.status_own_domid", rc == 0 && st.status == EVTCHNSTAT_closed, "rc %ld status %u",
              rc, st.status);
    }

    /* bind_vcpu: the vcpu is looked up first. */
    evtchn_port_t u = 0;
    evtchn_alloc_unbound(DOMID_SELF, DOMID_SELF, &u);
    check_eq("evtchn.bind_vcpu_unbound", evtchn_bind_vcpu(u, 0), 0);
    check_eq("evtchn.bind_vcpu_bad_vcpu", evtchn_bind_vcpu(u, 4096), ENOENT_);
    check_eq("evtchn.bind_vcpu_bad_vcpu_bad_port", evtchn_bind_vcpu(4095, 4096), ENOENT_);
    check_eq("evtchn.bind_vcpu_invalid_port", evtchn_bind_vcpu(4095, 0), EINVAL_);
    check_eq("evtchn.bind_vcpu_port0", evtchn_bind_vcpu(0, 0), EINVAL_);
    check_eq("evtchn.bind_vcpu_badptr", raw_op(EVTCHNOP_bind_vcpu, BAD_PTR), EFAULT_);
    if (nr_vcpus >= 2) {
        check_eq("evtchn.bind_vcpu_to_vcpu1", evtchn_bind_vcpu(u, 1), 0);
        expect_status("evtchn.status_after_bind_vcpu", u, EVTCHNSTAT_unbound, 1);
        /* Closing resets the notify vCPU: the same port comes back on vCPU 0. */
        evtchn_close(u);
        evtchn_port_t again = 0;
        evtchn_alloc_unbound(DOMID_SELF, DOMID_SELF, &again);
        check("evtchn.close_resets_notify_vcpu", again == u, "got port %u, expected %u again", again, u);
        expect_status("evtchn.status_notify_vcpu_reset", again, EVTCHNSTAT_unbound, 0);
        u = again;
    } else {
        info("bind_vcpu_vcpu1", "skipped (1 vCPU; run with --vcpus 2)");
    }
    check_eq("evtchn.close_after_bind_vcpu", evtchn_close(u), 0);
    check_eq("evtchn.bind_vcpu_free_port", evtchn_bind_vcpu(u, 0), EINVAL_);

    /* FIFO sub-ops while the domain stays 2-level (evtchn_fifo.c tests the FIFO ABI; a
     * successful init_control would switch this guest to it), and unknown sub-ops. */
    struct evtchn_init_control ic = { .vcpu = MAX_VCPUS + 100 };
    struct evtchn_expand_array ea = { 0 };
    struct evtchn_set_priority sp = { .port = 1, .priority = 1 };
    check_eq("evtchn.fifo_init_control_bad_vcpu", raw_op(EVTCHNOP_init_control, &ic), ENOENT_);
    check_eq("evtchn.fifo_expand_array_before_init", raw_op(EVTCHNOP_expand_array, &ea),
             EOPNOTSUPP_);
    check_eq("evtchn.fifo_set_priority_2level", raw_op(EVTCHNOP_set_priority, &sp), ENOSYS_);
    check_eq("evtchn.unknown_subop", raw_op(99, NULL), ENOSYS_);
    check_eq("evtchn.unknown_subop_negative", raw_op(-1, NULL), ENOSYS_);
    struct evtchn_reset r = { .dom = DOMID_SELF };
    check_eq("evtchn.reset_cont_not_in_progress", raw_op(EVTCHNOP_reset_cont, &r), EBUSY_);
    r.dom = NO_SUCH_DOMID;
    check_eq("evtchn.reset_no_such_domain", raw_op(EVTCHNOP_reset, &r), ESRCH_);
    check_eq("evtchn.reset_badptr", raw_op(EVTCHNOP_reset, BAD_PTR), EFAULT_);
}

/* ---------------------------------------------------------------- */
static void test_pirq(void)
{
    evtchn_port_t pp = 0, dummy;
    struct evtchn_status st;
    long rc = evtchn_bind_pirq(1, 0, &pp);
    check("evtchn.bind_pirq_hvm", rc == 0 && pp > 0, "rc %ld port %u (Xen 4.17 HVM domU: no "
          "permission check, ECS_PIRQ)", rc, pp);
    if (rc == 0) {
        info("pirq_port", "%u", pp);
        rc = evtchn_status(DOMID_SELF, pp, &st);
        check("evtchn.status_pirq", rc == 0 && st.status == EVTCHNSTAT_pirq && st.u.pirq == 1,
              "rc %ld status %u pirq %u", rc, st.status, st.u.pirq);
        check_eq("evtchn.bind_pirq_twice", evtchn_bind_pirq(1, 0, &dummy), EEXIST_);
        check_eq("evtchn.send_pirq_port", evtchn_send(pp), EINVAL_);
        check_eq("evtchn.close_pirq", evtchn_close(pp), 0);
        expect_status("evtchn.status_closed_after_close_pirq", pp, EVTCHNSTAT_closed, 0);
    }
    check_eq("evtchn.bind_pirq_out_of_range", evtchn_bind_pirq(100000, 0, &dummy), EINVAL_);
    check_eq("evtchn.bind_pirq_negative", evtchn_bind_pirq(0xffffffffu, 0, &dummy), EINVAL_);
    check_eq("evtchn.bind_pirq_badptr", raw_op(EVTCHNOP_bind_pirq, BAD_PTR), EFAULT_);
}

/* ---------------------------------------------------------------- */
static void test_exhaustion_and_reset(void)
{
    evtchn_port_t p = 0, last = 0;
    unsigned n = 0;
    long rc;

    for (;;) {
        rc = evtchn_alloc_unbound(DOMID_SELF, DOMID_SELF, &p);
        if (rc)
            break;
        last = p;
        if (++n > NR_PORTS_2L)
            break;
    }
    info("ports_allocated", "%u", n);
    info("max_port", "%u", last);
    check_eq("evtchn.exhaustion_enospc", rc, ENOSPC_);
    check_eq("evtchn.exhaustion_last_port", last, 1023);
    evtchn_port_t dummy;
    check_eq("evtchn.exhaustion_bind_ipi", evtchn_bind_ipi(0, &dummy), ENOSPC_);
    check_eq("evtchn.exhaustion_bind_virq", evtchn_bind_virq(VIRQ_DEBUG, 0, &dummy), ENOSPC_);
    expect_status("evtchn.status_port_1023", 1023, EVTCHNSTAT_unbound, 0);
    check_eq("evtchn.status_port_1024", evtchn_status(DOMID_SELF, 1024, &(struct evtchn_status){0}), EINVAL_);

    /* Reset closes everything (our VIRQ_TIMER too). */
    rc = evtchn_reset(DOMID_SELF);
    check_eq("evtchn.reset", rc, 0);
    expect_status("evtchn.reset_closes_ports", 1023, EVTCHNSTAT_closed, 0);
    rc = evtchn_alloc_unbound(DOMID_SELF, DOMID_SELF, &p);
    check("evtchn.reset_frees_all", rc == 0 && p == 1, "rc %ld first free port %u (expected 1)", rc, p);
    if (rc == 0)
        evtchn_close(p);
    check_eq("evtchn.rebind_timer_after_reset", evtchn_rebind_timer(), 0);
}

int guest_main(void)
{
    const char *mode = cmdline_get("upcall");
    enum upcall_mode m = (mode && !strcmp(mode, "percpu")) ? UPCALL_PERCPU_VECTOR : UPCALL_CALLBACK_VECTOR;
    info("upcall_mode", "%s", m == UPCALL_PERCPU_VECTOR ? "percpu" : "callback");
    long rc = evtchn_init(m);
    check_eq("evtchn.init", rc, 0);
    if (rc)
        return 0;
    domid = boot.domid_present ? boot.domid : DOMID_SELF;
    nr_vcpus = smp_nr_vcpus();
    info("vcpus", "%u", nr_vcpus);

    test_unbound_and_interdomain();
    test_virq();
    test_ipi_and_masking();
    test_misc_errors();
    test_pirq();
    test_exhaustion_and_reset();

    info("upcalls", "%lu", (unsigned long)evtchn_cpu[0].upcalls);
    info("spurious", "%lu", (unsigned long)evtchn_cpu[0].spurious);
    irq_disable();
    return 0;
}
