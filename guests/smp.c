/*
 * smp: secondary vCPUs (needs `pyxen run --vcpus 2`): VCPUOP_initialise with
 * a 64-bit vcpu_hvm_context, up/down/is_up, runstate of another vCPU, IPIs
 * through event channels, per-vCPU timers, bind_vcpu, register_vcpu_info
 * and a runstate area for vCPU 1.
 *
 * Semantics (Xen 4.17):
 *  - xen/common/domain.c do_vcpu_op: vcpu >= max_vcpus -> -ENOENT;
 *    VCPUOP_up: not initialised -> -EINVAL, else clear _VPF_down and wake
 *    (resuming where it was, context kept); VCPUOP_down: 0 (the last vCPU
 *    going down powers the domain off); VCPUOP_is_up: !_VPF_down;
 *    set/stop_singleshot_timer: other vCPU -> -EINVAL; set_periodic_timer
 *    may target any vCPU (armed when that vCPU is next scheduled);
 *    register_vcpu_info (map_vcpu_info) may target any vCPU: copies the old
 *    vcpu_info, then sets evtchn_upcall_pending and every
 *    evtchn_pending_sel bit ("Mark everything as being pending");
 *    register_runstate_memory_area for another vCPU writes its current
 *    runstate at once (vcpu_runstate_get) and on each of its context switches.
 *  - xen/arch/x86/domain.c arch_initialise_vcpu: copy_from_guest (-EFAULT),
 *    then v->is_initialised ? -EEXIST : arch_set_info_hvm_guest.
 *  - xen/arch/x86/hvm/domain.c arch_set_info_hvm_guest: pad != 0, unknown
 *    mode -> -EINVAL; 64B: non-canonical rip, CR0.PG clear, CR4.PAE clear,
 *    EFER.LME clear, CR4 bits outside hvm_cr4_guest_valid_bits, EFER
 *    rejected by hvm_efer_valid -> -EINVAL; 32B: segment checks
 *    (check_segment: null CS -> -EINVAL), pad1/pad2 != 0 -> -EINVAL. On
 *    success the vCPU is initialised but still down (_VPF_down); 64B starts
 *    with CS = 64-bit code (selector 0), GDTR/IDTR unset, TR = busy TSS.
 *  - xen/common/event_channel.c: bind_ipi/bind_virq for another vCPU;
 *    bind_vcpu moves unbound/interdomain ports (not IPIs, not VIRQ_TIMER).
 *  - CPUID 0x40000x04: EBX = vcpu id when XEN_HVM_CPUID_VCPU_ID_PRESENT.
 *
 * cmdline: pings=<n> (IPI round trips, default 50),
 *          end=vcpu_down: after RESULT, take vCPU 1 and then vCPU 0 down
 *          (Xen: "Last vcpu going down" -> SHUTDOWN_poweroff).
 * INFO keys: vcpus, ipi_roundtrip_ns <median>, ipi_roundtrip_p99_ns,
 *   send_to_upcall_ns <median> <p99> (vCPU 0 send -> vCPU 1 handler, pvclock
 *   on both), vcpu1_runstate_<state>_ns, vcpu1_periodic_ticks.
 */
#include "guest.h"
#include "evtchn.h"

#define MS 1000000ULL
#define MAX_PINGS 1000

/* ---- shared between vCPU 0 and vCPU 1 ---- */
enum { CMD_NONE, CMD_WHOAMI, CMD_SPIN, CMD_TIMER, CMD_DOWN_SELF };
static volatile unsigned cmd;
static volatile uint64_t cmd_seq, done_seq;
static volatile uint64_t acks, pongs, b_hits;
static volatile bool spin_stop, spinning;
static volatile unsigned ap_smp_id, ap_cpuid_vcpu, b_cpu;
static volatile long ap_rc;
static volatile uint64_t ap_timer_before, ap_timer_after;
static volatile uint64_t recv_ns[MAX_PINGS];
static volatile unsigned ping_cpu[MAX_PINGS];
static volatile uint64_t ping_idx;
static evtchn_port_t ping1, pong0, kick1, ack0;

static uint8_t vi_page[4096] ALIGNED(4096);
static struct vcpu_runstate_info rs_area ALIGNED(64);

/* ---- handlers ---- */
static void ping_handler(evtchn_port_t port, void *arg)      /* on vCPU 1 */
{
    uint64_t i = ping_idx;
    if (i < MAX_PINGS) {
        recv_ns[i] = now_ns();
        ping_cpu[i] = smp_id();
    }
    ping_idx = i + 1;
    evtchn_send(pong0);
}
static void pong_handler(evtchn_port_t port, void *arg) { pongs++; }     /* vCPU 0 */
static void kick_handler(evtchn_port_t port, void *arg) { }              /* vCPU 1 */
static void ack_handler(evtchn_port_t port, void *arg) { acks++; }       /* vCPU 0 */
static void b_handler(evtchn_port_t port, void *arg)
{
    b_cpu = smp_id();
    b_hits++;
    if (smp_id() != 0)
        evtchn_send(ack0);
}

/* ---- vCPU 1 ---- */
static void ap_run(unsigned c)
{
    switch (c) {
    case CMD_WHOAMI: {
        ap_smp_id = smp_id();
        uint32_t a, b, cc, d;
        ap_cpuid_vcpu = 0xffffffff;
        if (boot.cpuid_max_leaf >= boot.cpuid_base + 4) {
            cpuid(boot.cpuid_base + 4, 0, &a, &b, &cc, &d);
            if (a & XEN_HVM_CPUID_VCPU_ID_PRESENT)
                ap_cpuid_vcpu = b;
        }
        break;
    }
    case CMD_SPIN:
        spinning = true;
        evtchn_send(ack0);
        while (!spin_stop)
            cpu_relax();
        spinning = false;
        break;
    case CMD_TIMER:
        ap_timer_before = evtchn_cpu[smp_id()].timer_events;
        block_until(now_ns() + 10 * MS);        /* this vCPU's own timer */
        ap_timer_after = evtchn_cpu[smp_id()].timer_events;
        break;
    case CMD_DOWN_SELF:
        ap_rc = vcpu_down(smp_id());            /* returns once vCPU 0 ups us */
        break;
    }
}

static void ap_loop(unsigned cpu)
{
    evtchn_send(ack0);          /* "started" */
    irq_disable();
    for (;;) {
        uint64_t seq = cmd_seq;
        if (seq != done_seq) {
            unsigned c = cmd;
            irq_enable();
            ap_run(c);
            irq_disable();
            done_seq = seq;
            evtchn_send(ack0);
            continue;
        }
        safe_halt_cli();
    }
}

/* ---- vCPU 0 helpers ---- */
static bool ap_command(unsigned c, unsigned nacks)
{
    uint64_t target = acks + nacks;
    cmd = c;
    barrier();
    cmd_seq++;
    evtchn_send(kick1);
    return wait_for_count(&acks, target, now_ns() + WAIT_BOUND_NS);
}

static const char *state_name(int s)
{
    static const char *n[] = { "running", "runnable", "blocked", "offline" };
    return s >= 0 && s < 4 ? n[s] : "?";
}

static void expect_runstate(const char *name, int want)
{
    struct vcpu_runstate_info r;
    long rc = -1;
    /* The state may take a moment to settle (e.g. running -> blocked). */
    uint64_t end = now_ns() + WAIT_BOUND_NS;
    do {
        memset(&r, 0xff, sizeof(r));
        rc = vcpu_runstate(1, &r);
        if (rc == 0 && r.state == want)
            break;
        block_until(now_ns() + 2 * MS);
    } while (now_ns() < end);
    check(name, rc == 0 && r.state == want, "rc %ld state %d (%s), expected %s", rc, r.state,
          state_name(r.state), state_name(want));
}

static long init_ctx(unsigned vcpu, vcpu_hvm_context_t *ctx)
{
    return HYPERVISOR_vcpu_op(VCPUOP_initialise, vcpu, ctx);
}

static void test_bad_contexts(void)
{
    vcpu_hvm_context_t c;
#define BAD(name, mutate)                                       \
    do {                                                        \
        smp_make_context(1, NULL, &c);                          \
        mutate;                                                 \
        check_eq("smp.initialise_" name, init_ctx(1, &c), EINVAL_); \
    } while (0)
    BAD("bad_mode", c.mode = 2);
    BAD("pad_nonzero", c.pad = 1);
    BAD("rip_noncanonical", c.cpu_regs.x86_64.rip = 0x0000800000000000ULL);
    BAD("cr0_no_pg", c.cpu_regs.x86_64.cr0 &= ~0x80000000ULL);
    BAD("cr4_no_pae", c.cpu_regs.x86_64.cr4 &= ~0x20ULL);
    BAD("efer_no_lme", c.cpu_regs.x86_64.efer &= ~0x100ULL);
    BAD("cr4_reserved_bit", c.cpu_regs.x86_64.cr4 |= 1ULL << 63);
    BAD("efer_reserved_bit", c.cpu_regs.x86_64.efer |= 1ULL << 63);
    /* 32-bit mode: a null CS and non-zero padding are refused. */
    BAD("32b_null_cs", { memset(&c.cpu_regs, 0, sizeof(c.cpu_regs)); c.mode = VCPU_HVM_MODE_32B; });
    BAD("32b_pad1", {
        memset(&c.cpu_regs, 0, sizeof(c.cpu_regs));
        c.mode = VCPU_HVM_MODE_32B;
        c.cpu_regs.x86_32.cs_ar = 0xc9b; c.cpu_regs.x86_32.cs_limit = ~0u;
        c.cpu_regs.x86_32.ss_ar = 0xc93; c.cpu_regs.x86_32.ss_limit = ~0u;
        c.cpu_regs.x86_32.tr_ar = 0x8b; c.cpu_regs.x86_32.tr_limit = 0x67;
        c.cpu_regs.x86_32.pad1 = 1;
    });
#undef BAD
    smp_make_context(1, NULL, &c);
    check_eq("smp.initialise_badptr", HYPERVISOR_vcpu_op(VCPUOP_initialise, 1, BAD_PTR), EFAULT_);
    check_eq("smp.initialise_bad_vcpu", init_ctx(4096, &c), ENOENT_);
    check_eq("smp.initialise_vcpu0_exists", init_ctx(0, &c), EEXIST_);
    check_eq("smp.is_up_after_bad_contexts", vcpu_is_up(1), 0);
    check_eq("smp.up_after_bad_contexts", vcpu_up(1), EINVAL_);
}

static void pingpong(unsigned n, const char *prefix, bool report)
{
    static uint64_t rt[MAX_PINGS], ow[MAX_PINGS];
    unsigned got = 0, on_vcpu1 = 0, negative = 0;
    if (n > MAX_PINGS)
        n = MAX_PINGS;
    ping_idx = 0;
    HYPERVISOR_set_timer_op(now_ns() + 30000 * MS);   /* backstop only */
    for (unsigned i = 0; i < n; i++) {
        uint64_t t0;
        uint64_t round_trip = ping_and_wait(ping1, &pongs, WAIT_BOUND_NS, &t0);
        if (!round_trip)
            break;
        rt[got] = round_trip;
        int64_t d = (int64_t)(recv_ns[i] - t0);
        if (d < 0)
            negative++;
        ow[got] = d < 0 ? 0 : (uint64_t)d;
        if (ping_cpu[i] == 1)
            on_vcpu1++;
        got++;
    }
    HYPERVISOR_set_timer_op(0);
    char name[64];
    snprintf(name, sizeof(name), "smp.%s_all_answered", prefix);
    check(name, got == n, "%u of %u pings answered", got, n);
    snprintf(name, sizeof(name), "smp.%s_handled_on_vcpu1", prefix);
    check(name, on_vcpu1 == got, "%u of %u pings handled on vCPU 1", on_vcpu1, got);
    if (!report || !got)
        return;
    sort_u64(rt, got);
    sort_u64(ow, got);
    info("ipi_roundtrip_ns", "%lu", (unsigned long)percentile_u64(rt, got, 50));
    info("ipi_roundtrip_p99_ns", "%lu", (unsigned long)percentile_u64(rt, got, 99));
    info("send_to_upcall_ns", "%lu %lu", (unsigned long)percentile_u64(ow, got, 50),
         (unsigned long)percentile_u64(ow, got, 99));
    info("ipi_samples", "%u", got);
    if (negative)
        info("send_to_upcall_negative_samples", "%u", negative);
}

static void test_runstate_area(void)
{
    struct vcpu_register_runstate_memory_area ra;
    /* vCPU 1 is on its way back to hlt after its last command: on a busy host it may
     * still be running. The area must show the state it is in, so wait for blocked. */
    expect_runstate("smp.vcpu1_blocked_before_area", RUNSTATE_blocked);
    memset(&rs_area, 0xff, sizeof(rs_area));
    set_xen_guest_handle(ra.addr.h, &rs_area);
    check_eq("smp.register_runstate_area_vcpu1",
             HYPERVISOR_vcpu_op(VCPUOP_register_runstate_memory_area, 1, &ra), 0);
    volatile struct vcpu_runstate_info *a = &rs_area;
    check("smp.runstate_area_vcpu1_written", a->state == RUNSTATE_blocked,
          "state %d (%s), expected blocked", a->state, state_name(a->state));
    uint64_t e0 = a->state_entry_time;
    pingpong(3, "ipi_runstate_area", false);
    block_until(now_ns() + 5 * MS);
    check("smp.runstate_area_vcpu1_updated", a->state_entry_time != e0 && a->state_entry_time != ~0ULL &&
          a->state == RUNSTATE_blocked, "state_entry_time %lu -> %lu, state %d", (unsigned long)e0,
          (unsigned long)a->state_entry_time, a->state);
}

static void test_bind_vcpu(void)
{
    evtchn_port_t a = 0, b = 0;
    struct evtchn_status st;
    evtchn_alloc_unbound(DOMID_SELF, DOMID_SELF, &a);
    long rc = evtchn_bind_interdomain(DOMID_SELF, a, &b);
    check_eq("smp.loopback_bind", rc, 0);
    if (rc)
        return;
    block_until(now_ns() + 5 * MS);     /* the bind's own pending notification */
    evtchn_set_handler(b, b_handler, NULL);
    check_eq("smp.bind_vcpu_to_vcpu1", evtchn_bind_vcpu(b, 1), 0);
    evtchn_status(DOMID_SELF, b, &st);
    check_eq("smp.bind_vcpu_status_vcpu1", st.vcpu, 1);
    uint64_t a0 = acks, h0 = b_hits;
    check_eq("smp.bind_vcpu_send", evtchn_send(a), 0);
    bool ok = wait_for_count(&acks, a0 + 1, now_ns() + WAIT_BOUND_NS);
    check("smp.bind_vcpu_delivers_on_vcpu1", ok && b_hits == h0 + 1 && b_cpu == 1,
          "handler ran %lu times, last on vCPU %u", (unsigned long)(b_hits - h0), b_cpu);
    check_eq("smp.bind_vcpu_back_to_vcpu0", evtchn_bind_vcpu(b, 0), 0);
    h0 = b_hits;
    evtchn_send(a);
    ok = wait_for_count(&b_hits, h0 + 1, now_ns() + WAIT_BOUND_NS);
    check("smp.bind_vcpu_delivers_on_vcpu0", ok && b_cpu == 0, "handler ran %lu times, last on vCPU %u",
          (unsigned long)(b_hits - h0), b_cpu);
    check_eq("smp.bind_vcpu_ipi_refused", evtchn_bind_vcpu(ping1, 0), EINVAL_);
    evtchn_close(b);
    evtchn_close(a);
}

static void test_register_vcpu_info(void)
{
    /* vCPU 1 is down. Register a vcpu_info for it from vCPU 0, as Linux does
     * for CPUs it has not brought up. */
    struct vcpu_register_vcpu_info r = { .mfn = pfn_of(vi_page), .offset = 128 };
    memset(vi_page, 0, sizeof(vi_page));
    uint64_t ping_before = ping_idx;
    evtchn_send(ping1);                 /* pending for the offline vCPU 1 */
    long rc = HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_info, 1, &r);
    check_eq("smp.register_vcpu_info_vcpu1", rc, 0);
    if (rc)
        return;
    volatile struct vcpu_info *nv = (void *)(vi_page + 128);
    check("smp.register_vcpu_info_marks_pending", nv->evtchn_upcall_pending == 1 &&
          nv->evtchn_pending_sel == ~0UL, "upcall_pending %u pending_sel %#lx (Xen: 1, all ones)",
          nv->evtchn_upcall_pending, (unsigned long)nv->evtchn_pending_sel);
    check("smp.register_vcpu_info_copies_time", nv->time.version != 0 && nv->time.tsc_to_system_mul != 0,
          "time version %u mul %u", nv->time.version, nv->time.tsc_to_system_mul);
    check_eq("smp.register_vcpu_info_vcpu1_twice", HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_info, 1, &r), EINVAL_);
    evtchn_cpu[1].vi = nv;
    check_eq("smp.ping_while_down_not_handled", ping_idx, ping_before);

    /* Up again: vCPU 1 resumes in its loop, takes the pending upcall (the
     * ping sent while it was down) through the new vcpu_info. */
    uint64_t p0 = pongs;
    uint64_t a0 = acks;
    check_eq("smp.up_after_register", vcpu_up(1), 0);
    check("smp.event_while_down_delivered_after_up", wait_for_count(&pongs, p0 + 1, now_ns() + WAIT_BOUND_NS),
          "the ping sent while vCPU 1 was down was not answered after VCPUOP_up");
    check("smp.resumes_after_up", wait_for_count(&acks, a0 + 1, now_ns() + WAIT_BOUND_NS),
          "vCPU 1 did not finish the command it was running when taken down");
    volatile struct vcpu_info *old = &shared_info->vcpu_info[1];
    old->evtchn_upcall_pending = 0;
    old->evtchn_pending_sel = 0;
    pingpong(5, "ipi_after_register_vcpu_info", false);
    check("smp.legacy_vcpu_info_unused_after_register", old->evtchn_upcall_pending == 0 &&
          old->evtchn_pending_sel == 0, "shared_info vcpu_info[1]: upcall_pending %u sel %#lx",
          old->evtchn_upcall_pending, (unsigned long)old->evtchn_pending_sel);
}

int guest_main(void)
{
    long rc = evtchn_init(UPCALL_CALLBACK_VECTOR);
    check_eq("smp.evtchn_init", rc, 0);
    if (rc)
        return 0;
    const char *s = cmdline_get("pings");
    unsigned npings = s ? (unsigned)strtoul(s, NULL, 0) : 50;
    s = cmdline_get("end");
    bool end_down = s && !strcmp(s, "vcpu_down");
    unsigned nr = smp_nr_vcpus();
    info("vcpus", "%u", nr);
    if (!check("smp.vcpus", nr >= 2, "the domain has %u vCPU(s): run with --vcpus 2", nr))
        return 0;

    check_eq("smp.is_up_vcpu0", vcpu_is_up(0), 1);
    check_eq("smp.is_up_vcpu1_before", vcpu_is_up(1), 0);
    check_eq("smp.is_up_bad_vcpu", vcpu_is_up(nr), ENOENT_);
    expect_runstate("smp.runstate_vcpu1_offline_before", RUNSTATE_offline);
    check_eq("smp.up_before_initialise", vcpu_up(1), EINVAL_);
    test_bad_contexts();

    /* IPI ports for vCPU 1, bound from vCPU 0 before it runs. */
    check_eq("smp.bind_ipi_vcpu1", evtchn_bind_ipi(1, &ping1), 0);
    check_eq("smp.bind_ipi_vcpu1_kick", evtchn_bind_ipi(1, &kick1), 0);
    check_eq("smp.bind_ipi_vcpu0", evtchn_bind_ipi(0, &pong0), 0);
    evtchn_bind_ipi(0, &ack0);
    evtchn_set_handler(ping1, ping_handler, NULL);
    evtchn_set_handler(kick1, kick_handler, NULL);
    evtchn_set_handler(pong0, pong_handler, NULL);
    evtchn_set_handler(ack0, ack_handler, NULL);

    rc = smp_initialise(1, ap_loop);
    check_eq("smp.initialise_vcpu1", rc, 0);
    if (rc)
        return 0;
    check_eq("smp.is_up_after_initialise", vcpu_is_up(1), 0);
    check_eq("smp.initialise_twice", smp_initialise(1, ap_loop), EEXIST_);
    uint64_t a0 = acks;
    check_eq("smp.up_vcpu1", vcpu_up(1), 0);
    if (!check("smp.vcpu1_started", wait_for_count(&acks, a0 + 1, now_ns() + WAIT_BOUND_NS),
               "vCPU 1 did not report in within 5 s"))
        return 0;
    check_eq("smp.is_up_vcpu1", vcpu_is_up(1), 1);
    check_eq("smp.up_when_up", vcpu_up(1), 0);

    /* Who is vCPU 1? */
    if (ap_command(CMD_WHOAMI, 1)) {
        check_eq("smp.vcpu1_smp_id", ap_smp_id, 1);
        if (ap_cpuid_vcpu != 0xffffffffu)
            check_eq("smp.vcpu1_cpuid_vcpu_id", ap_cpuid_vcpu, 1);
    } else {
        test_fail("smp.vcpu1_command", "no answer to a command");
    }
    struct evtchn_status st;
    evtchn_status(DOMID_SELF, evtchn_cpu[1].timer_port, &st);
    check("smp.virq_timer_bound_on_vcpu1", evtchn_cpu[1].timer_port && st.status == EVTCHNSTAT_virq &&
          st.vcpu == 1 && st.u.virq == VIRQ_TIMER, "port %u status %u vcpu %u virq %u",
          evtchn_cpu[1].timer_port, st.status, st.vcpu, st.u.virq);

    /* Runstate of vCPU 1 seen from vCPU 0. */
    expect_runstate("smp.runstate_vcpu1_blocked", RUNSTATE_blocked);
    spin_stop = false;
    a0 = acks;
    cmd = CMD_SPIN;
    barrier();
    cmd_seq++;
    evtchn_send(kick1);
    if (wait_for_count(&acks, a0 + 1, now_ns() + WAIT_BOUND_NS) && spinning)
        expect_runstate("smp.runstate_vcpu1_running", RUNSTATE_running);
    else
        test_fail("smp.runstate_vcpu1_running", "vCPU 1 did not start spinning");
    spin_stop = true;
    wait_for_count(&acks, a0 + 2, now_ns() + WAIT_BOUND_NS);

    /* IPIs: ping-pong; this is also the latency figure. */
    pingpong(npings, "ipi_pingpong", true);

    /* vCPU 1's own timer fires on vCPU 1. */
    if (ap_command(CMD_TIMER, 1))
        check("smp.vcpu1_timer", ap_timer_after > ap_timer_before, "VIRQ_TIMER events on vCPU 1: %lu -> %lu",
              (unsigned long)ap_timer_before, (unsigned long)ap_timer_after);
    check_eq("smp.singleshot_other_vcpu", vcpu_set_singleshot(1, now_ns() + 10 * MS, 0), EINVAL_);
    check_eq("smp.stop_singleshot_other_vcpu", vcpu_stop_singleshot(1), EINVAL_);
    /* Periodic timer of another vCPU: allowed; it runs once vCPU 1 is scheduled.
     * Counted against the time it was armed for, as this vCPU measured it
     * (at most one tick per period, the first maybe at once): how many come
     * depends on the host's load, so only "some, and never too many". */
    uint64_t t0 = evtchn_cpu[1].timer_events, t_arm = now_ns();
    check_eq("smp.periodic_other_vcpu", vcpu_set_periodic(1, 10 * MS), 0);
    pingpong(1, "ipi_periodic", false);
    uint64_t give_up = now_ns() + WAIT_BOUND_NS;  /* vCPU 1's ticks do not wake us: look */
    while (evtchn_cpu[1].timer_events - t0 < 5 && now_ns() < give_up)
        block_until(now_ns() + 10 * MS);
    check_eq("smp.stop_periodic_other_vcpu", vcpu_stop_periodic(1), 0);
    uint64_t t_stop = now_ns();
    uint64_t nt = evtchn_cpu[1].timer_events - t0, most = (t_stop - t_arm) / (10 * MS) + 1;
    info("vcpu1_periodic_ticks", "%lu %lu", (unsigned long)nt, (unsigned long)(t_stop - t_arm));
    check("smp.periodic_other_vcpu_ticks", nt >= 5 && nt <= most,
          "%lu ticks on vCPU 1 in %lu ns at 100 Hz (5..%lu)", (unsigned long)nt,
          (unsigned long)(t_stop - t_arm), (unsigned long)most);

    test_bind_vcpu();
    test_runstate_area();

    /* Down from vCPU 0, while vCPU 1 is running (spinning): it is
     * descheduled and its runstate becomes offline. */
    spin_stop = false;
    a0 = acks;
    cmd = CMD_SPIN;
    barrier();
    cmd_seq++;
    evtchn_send(kick1);
    if (!wait_for_count(&acks, a0 + 1, now_ns() + WAIT_BOUND_NS))
        test_fail("smp.spin_before_down", "vCPU 1 did not start spinning");
    check_eq("smp.down_vcpu1", vcpu_down(1), 0);
    check_eq("smp.is_up_after_down", vcpu_is_up(1), 0);
    expect_runstate("smp.runstate_vcpu1_offline_after_down", RUNSTATE_offline);
    /* The area is refreshed when vCPU 1 itself stops running (as Xen does at its context
     * switch), just after the state that get_runstate_info reports: allow it that moment. */
    for (uint64_t end = now_ns() + WAIT_BOUND_NS;
         *(volatile int *)&rs_area.state != RUNSTATE_offline && now_ns() < end;)
        block_until(now_ns() + 1 * MS);
    check("smp.runstate_area_vcpu1_offline", rs_area.state == RUNSTATE_offline, "area state %d (%s)",
          rs_area.state, state_name(rs_area.state));
    check_eq("smp.down_twice", vcpu_down(1), 0);
    check_eq("smp.initialise_after_down", smp_initialise(1, ap_loop), EEXIST_);
    spin_stop = true;           /* seen once vCPU 1 is up again */

    test_register_vcpu_info();

    /* vCPU 1 takes itself down; VCPUOP_up resumes it inside that hypercall. */
    a0 = acks;
    cmd = CMD_DOWN_SELF;
    barrier();
    cmd_seq++;
    evtchn_send(kick1);
    uint64_t end = now_ns() + WAIT_BOUND_NS;
    while (vcpu_is_up(1) == 1 && now_ns() < end)
        block_until(now_ns() + 2 * MS);
    check_eq("smp.down_self", vcpu_is_up(1), 0);
    check_eq("smp.up_after_down_self", vcpu_up(1), 0);
    check("smp.down_self_resumes", wait_for_count(&acks, a0 + 1, now_ns() + WAIT_BOUND_NS) && ap_rc == 0,
          "vCPU 1 did not finish its VCPUOP_down (rc %ld)", ap_rc);

    struct vcpu_runstate_info r;
    if (vcpu_runstate(1, &r) == 0) {
        info("vcpu1_runstate_running_ns", "%lu", (unsigned long)r.time[RUNSTATE_running]);
        info("vcpu1_runstate_runnable_ns", "%lu", (unsigned long)r.time[RUNSTATE_runnable]);
        info("vcpu1_runstate_blocked_ns", "%lu", (unsigned long)r.time[RUNSTATE_blocked]);
        info("vcpu1_runstate_offline_ns", "%lu", (unsigned long)r.time[RUNSTATE_offline]);
        check("smp.vcpu1_runstate_times", r.time[RUNSTATE_running] > 0 && r.time[RUNSTATE_blocked] > 0 &&
              r.time[RUNSTATE_offline] > 0, "running %lu blocked %lu offline %lu",
              (unsigned long)r.time[RUNSTATE_running], (unsigned long)r.time[RUNSTATE_blocked],
              (unsigned long)r.time[RUNSTATE_offline]);
    }

    /* Xen quirk: VCPUOP_down of a vCPU blocked in HLT leaves its runstate
     * "blocked" (vcpu_sleep_nosync only turns *runnable* into offline; the
     * descheduled vCPU keeps VPF_blocked). The next event unblocks it:
     * vcpu_wake of a vCPU that is not runnable and no longer blocked turns
     * blocked into offline (xen/common/sched/core.c). */
    expect_runstate("smp.runstate_vcpu1_blocked_again", RUNSTATE_blocked);
    check_eq("smp.down_blocked_vcpu1", vcpu_down(1), 0);
    block_until(now_ns() + 20 * MS);
    struct vcpu_runstate_info rb;
    vcpu_runstate(1, &rb);
    check("smp.runstate_down_while_blocked_stays_blocked", rb.state == RUNSTATE_blocked,
          "state %d (%s), Xen 4.17: blocked", rb.state, state_name(rb.state));
    evtchn_send(kick1);
    expect_runstate("smp.runstate_down_blocked_then_event_offline", RUNSTATE_offline);

    if (end_down) {
        irq_disable();
        printf("RESULT %u %u\n", tests_passed, tests_failed);
        long r0 = vcpu_down(0);         /* Xen: the last vCPU going down powers off */
        info("vcpu_down_last_returned", "%ld", r0);
        shutdown(SHUTDOWN_poweroff);
    }
    irq_disable();
    return 0;
}
