/*
 * time: Xen's pvclock (vcpu_time_info in shared_info->vcpu_info[0]) and the
 * shared_info wallclock.
 *
 * Checks: the version protocol (even when stable), a sane mul/shift, system
 * time monotonic and advancing, agreeing with HVMOP_get_time (Xen's NOW())
 * in value and rate, the TSC rate implied by mul/shift matching the TSC
 * actually observed across a sleep, and a plausible wallclock.
 *
 * INFO keys (host side: compare with its own clocks):
 *   tsc_khz <n>            TSC frequency implied by tsc_to_system_mul/shift
 *   pvclock_flags <hex>
 *   system_time_ns <n>     pvclock system time when printed
 *   wallclock <unix_sec>.<nsec>   wc_sec/wc_nsec + system time = "now" (UTC);
 *                          the host should find it within a few seconds of
 *                          its own time.time()
 *   wallclock_utc <YYYY-MM-DD HH:MM:SS>
 *   boot_wallclock <sec>.<nsec>   raw wc_sec/wc_nsec
 *   rate_ppm <n>           pvclock vs HVMOP_get_time rate difference
 */
#include "guest.h"

#define MAX_SKEW_NS 100000000ULL  /* pvclock vs NOW(): both are Xen system time */

/* Another clock read between two pvclock reads (the tightest of a few tries:
 * a busy host may stall between any two instructions). */
struct clock_pair {
    uint64_t pv_before, other, pv_after;
    long rc;
};

static uint64_t spread(const struct clock_pair *p)
{
    return p->pv_after - p->pv_before;
}

static bool within(uint64_t a, uint64_t b, uint64_t tolerance)
{
    return (a > b ? a - b : b - a) <= tolerance;
}

static struct clock_pair pair_with(bool tsc)
{
    struct clock_pair best = { 0, 0, ~0ULL, 0 }, p;
    for (int i = 0; i < 5; i++) {
        p.pv_before = xen_now_ns();
        p.rc = tsc ? 0 : hvm_get_time(&p.other);
        if (tsc)
            p.other = rdtsc();
        p.pv_after = xen_now_ns();
        if (p.rc || i == 0 || spread(&p) < spread(&best))
            best = p;
        if (p.rc)
            break;
    }
    return best;
}

static struct clock_pair pair_with_hvm_get_time(void) { return pair_with(false); }
static struct clock_pair pair_with_tsc(void) { return pair_with(true); }

int guest_main(void)
{
    long rc = map_shared_info();
    check_eq("time.map_shared_info", rc, 0);
    if (rc)
        return 0;
    volatile struct vcpu_time_info *t = &shared_info->vcpu_info[0].time;

    uint32_t v1 = t->version;
    check("time.version_even", v1 != 0 && !(v1 & 1), "version %u", v1);
    check("time.mul_nonzero", t->tsc_to_system_mul != 0, "tsc_to_system_mul is 0");
    check_range("time.shift_sane", t->tsc_shift, -31, 31);
    uint64_t hz = (1000000000ULL << 32) / t->tsc_to_system_mul;
    hz = t->tsc_shift < 0 ? hz << -t->tsc_shift : hz >> t->tsc_shift;
    info("tsc_khz", "%lu", (unsigned long)(hz / 1000));
    info("pvclock_flags", "%#x", t->flags);
    check("time.tsc_freq_plausible", hz > 100000000ULL && hz < 20000000000ULL,
          "implied TSC frequency %lu Hz", (unsigned long)hz);

    /* Monotonic over many reads. */
    uint64_t prev = xen_now_ns(), first = prev;
    bool mono = true;
    for (int i = 0; i < 300; i++) {
        uint64_t now = xen_now_ns();
        if (now < prev) mono = false;
        prev = now;
    }
    check("time.monotonic", mono, "system time went backwards");
    check("time.nonzero", first > 0, "system time is 0");

    /* Value agrees with Xen's NOW() (HVMOP_get_time), and advances at its
     * rate and at the rate mul/shift imply for the TSC. Each reading is
     * bracketed by pvclock reads, so a host that stalls between two reads
     * widens the tolerance instead of failing the check. */
    struct clock_pair h0 = pair_with_hvm_get_time(), h1, c0 = pair_with_tsc(), c1;
    check_eq("time.hvm_get_time", h0.rc, 0);
    check("time.matches_hvm_get_time", h0.other + MAX_SKEW_NS >= h0.pv_before &&
          h0.other <= h0.pv_after + MAX_SKEW_NS,
          "HVMOP_get_time %lu outside pvclock's %lu..%lu", (unsigned long)h0.other,
          (unsigned long)h0.pv_before, (unsigned long)h0.pv_after);

    /* Advance over a ~200 ms sleep. */
    rc = sleep_until(h0.pv_after + 200000000ULL);
    h1 = pair_with_hvm_get_time();
    c1 = pair_with_tsc();
    uint64_t dpv = h1.pv_before - h0.pv_after, dhv = h1.other - h0.other;
    check("time.advances", dpv >= 190000000ULL && dpv < 200000000ULL + WAIT_BOUND_NS,
          "slept until +200 ms, system time advanced %lu ns", (unsigned long)dpv);
    uint64_t slack = spread(&h0) + spread(&h1);
    long ppm = (long)(((int64_t)dpv - (int64_t)dhv) * 1000000 / (int64_t)(dhv ? dhv : 1));
    info("rate_ppm", "%ld", ppm);
    check("time.rate_vs_hvm_get_time", within(dpv, dhv, dhv / 50 + slack),
          "pvclock advanced %lu ns while NOW() advanced %lu ns (+- %lu)", (unsigned long)dpv,
          (unsigned long)dhv, (unsigned long)(dhv / 50 + slack));
    /* TSC ticks observed vs ticks implied by mul/shift, over the same span. */
    uint64_t dpv_tsc = c1.pv_before - c0.pv_after, dtsc = c1.other - c0.other;
    uint64_t expect_ticks = dpv_tsc / 1000 * (hz / 1000) / 1000;
    uint64_t tick_slack = (spread(&c0) + spread(&c1)) / 1000 * (hz / 1000) / 1000;
    check("time.tsc_rate_consistent", within(dtsc, expect_ticks, expect_ticks / 50 + tick_slack),
          "%lu TSC ticks in %lu ns, mul/shift imply %lu", (unsigned long)dtsc,
          (unsigned long)dpv_tsc, (unsigned long)expect_ticks);

    /* set_timer_op: arm and cancel a one-shot timer. */
    check_eq("time.set_timer_op", HYPERVISOR_set_timer_op(xen_now_ns() + 1000000000ULL), 0);
    check_eq("time.set_timer_op_cancel", HYPERVISOR_set_timer_op(0), 0);

    /* Wallclock. */
    uint32_t wv = shared_info->wc_version;
    check("time.wc_version_even", !(wv & 1), "wc_version %u", wv);
    uint64_t wsec; uint32_t wnsec;
    xen_wallclock(&wsec, &wnsec);
    check("time.wc_nsec_range", wnsec < 1000000000u, "wc_nsec %u", wnsec);
    uint64_t now = xen_now_ns();
    uint64_t total_ns = (uint64_t)wnsec + now % 1000000000ULL;
    uint64_t sec = wsec + now / 1000000000ULL + total_ns / 1000000000ULL;
    uint32_t nsec = (uint32_t)(total_ns % 1000000000ULL);
    check("time.wallclock_plausible", sec > 1577836800ULL && sec < 4102444800ULL,
          "wallclock %lu is not within 2020..2100", (unsigned long)sec);
    char date[40];
    format_utc(sec, date, sizeof(date));
    info("system_time_ns", "%lu", (unsigned long)now);
    info("wallclock", "%lu.%09u", (unsigned long)sec, nsec);
    info("wallclock_utc", "%s", date);
    info("boot_wallclock", "%lu.%09u", (unsigned long)wsec, wnsec);
    return 0;
}
