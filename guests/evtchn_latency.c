/*
 * evtchn_latency: issue 4's benchmark guest (needs `--vcpus 2`).
 *
 * vCPU 0 sends on an IPI port bound to vCPU 1 (EVTCHNOP_send); vCPU 1, idle
 * in `sti; hlt`, takes the upcall and its handler reads the pvclock, then
 * answers on a port bound to vCPU 0. Each sample is
 *   send_to_upcall = (vCPU 1 handler's pvclock) - (vCPU 0's pvclock just
 *                    before EVTCHNOP_send)
 * and the round trip as vCPU 0 sees it. Both clocks are Xen system time
 * (vcpu_time_info), so the difference is meaningful across vCPUs.
 *
 * cmdline: samples=<n> (default 200, max 4000), warmup=<n> (default 10),
 *          upcall=callback (default) | percpu
 * INFO keys (host: take the medians; compare against a reference):
 *   send_to_upcall_ns <median> <p99>
 *   send_to_upcall_median_ns / _p99_ns / _min_ns / _max_ns
 *   roundtrip_median_ns / roundtrip_p99_ns
 *   samples <n>, negative_samples <n> (clock skew between vCPUs, clamped to 0)
 * TEST: evtchn_latency.vcpus, .vcpu1_up, .all_answered, .on_vcpu1
 */
#include "guest.h"
#include "evtchn.h"

#define MS 1000000ULL
#define MAX_SAMPLES 4000

static evtchn_port_t ping1, pong0;
static volatile uint64_t pongs, recv_ns, recv_cpu_ok, started;
static uint64_t one_way[MAX_SAMPLES], round_trip[MAX_SAMPLES];

static void ping_handler(evtchn_port_t port, void *arg)   /* vCPU 1 */
{
    recv_ns = now_ns();
    if (smp_id() == 1)
        recv_cpu_ok++;
    evtchn_send(pong0);
}

static void pong_handler(evtchn_port_t port, void *arg) { pongs++; }   /* vCPU 0 */

static void ap_idle(unsigned cpu)
{
    started = 1;
    evtchn_send(pong0);
    /* return: the runtime parks the vCPU in sti;hlt */
}

int guest_main(void)
{
    const char *s;
    unsigned samples = 200, warmup = 10;
    if ((s = cmdline_get("samples")))
        samples = (unsigned)strtoul(s, NULL, 0);
    if ((s = cmdline_get("warmup")))
        warmup = (unsigned)strtoul(s, NULL, 0);
    if (samples > MAX_SAMPLES)
        samples = MAX_SAMPLES;
    s = cmdline_get("upcall");
    enum upcall_mode mode = (s && !strcmp(s, "percpu")) ? UPCALL_PERCPU_VECTOR : UPCALL_CALLBACK_VECTOR;

    long rc = evtchn_init(mode);
    check_eq("evtchn_latency.evtchn_init", rc, 0);
    if (rc)
        return 0;
    info("upcall_mode", "%s", mode == UPCALL_PERCPU_VECTOR ? "percpu" : "callback");
    unsigned nr = smp_nr_vcpus();
    if (!check("evtchn_latency.vcpus", nr >= 2, "the domain has %u vCPU(s): run with --vcpus 2", nr))
        return 0;

    evtchn_bind_ipi(1, &ping1);
    evtchn_bind_ipi(0, &pong0);
    evtchn_set_handler(ping1, ping_handler, NULL);
    evtchn_set_handler(pong0, pong_handler, NULL);
    rc = smp_initialise(1, ap_idle);
    if (rc == 0)
        rc = vcpu_up(1);
    bool up = rc == 0 && wait_for_count(&pongs, 1, now_ns() + WAIT_BOUND_NS);
    if (!check("evtchn_latency.vcpu1_up", up, "rc %ld, vCPU 1 did not report in", rc))
        return 0;
    block_until(now_ns() + 5 * MS);      /* let vCPU 1 reach hlt */

    unsigned got = 0, negative = 0;
    uint64_t ok0 = 0;
    HYPERVISOR_set_timer_op(now_ns() + 600000 * MS);     /* backstop only */
    for (unsigned i = 0; i < warmup + samples; i++) {
        if (i == warmup)
            ok0 = recv_cpu_ok;
        uint64_t t0;
        uint64_t rt = ping_and_wait(ping1, &pongs, WAIT_BOUND_NS, &t0);
        if (!rt)
            break;
        if (i < warmup)
            continue;
        int64_t d = (int64_t)(recv_ns - t0);
        if (d < 0)
            negative++;
        one_way[got] = d < 0 ? 0 : (uint64_t)d;
        round_trip[got] = rt;
        got++;
    }
    HYPERVISOR_set_timer_op(0);
    check("evtchn_latency.all_answered", got == samples, "%u of %u samples", got, samples);
    check("evtchn_latency.on_vcpu1", recv_cpu_ok - ok0 == got, "%lu of %u pings handled on vCPU 1",
          (unsigned long)(recv_cpu_ok - ok0), got);
    if (got) {
        sort_u64(one_way, got);
        sort_u64(round_trip, got);
        uint64_t med = percentile_u64(one_way, got, 50), p99 = percentile_u64(one_way, got, 99);
        info("samples", "%u", got);
        info("send_to_upcall_ns", "%lu %lu", (unsigned long)med, (unsigned long)p99);
        info("send_to_upcall_median_ns", "%lu", (unsigned long)med);
        info("send_to_upcall_p99_ns", "%lu", (unsigned long)p99);
        info("send_to_upcall_min_ns", "%lu", (unsigned long)one_way[0]);
        info("send_to_upcall_max_ns", "%lu", (unsigned long)one_way[got - 1]);
        info("roundtrip_median_ns", "%lu", (unsigned long)percentile_u64(round_trip, got, 50));
        info("roundtrip_p99_ns", "%lu", (unsigned long)percentile_u64(round_trip, got, 99));
        info("negative_samples", "%u", negative);
    }
    irq_disable();
    return 0;
}
