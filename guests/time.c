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

    /* Value agrees with Xen's NOW() (HVMOP_get_time). */
    uint64_t hv0 = 0, pv0, hv1 = 0, pv1, tsc0, tsc1;
    pv0 = xen_now_ns();
    tsc0 = rdtsc();
    rc = hvm_get_time(&hv0);
    check_eq("time.hvm_get_time", rc, 0);
    long diff0 = (long)(pv0 - hv0);
    check("time.matches_hvm_get_time", diff0 > -100000000L && diff0 < 100000000L,
          "pvclock %lu vs HVMOP_get_time %lu (diff %ld ns)", (unsigned long)pv0,
          (unsigned long)hv0, diff0);

    /* Advance over a ~200 ms sleep, at the same rate as NOW() and the TSC. */
    rc = sleep_until(pv0 + 200000000ULL);
    pv1 = xen_now_ns();
    tsc1 = rdtsc();
    hvm_get_time(&hv1);
    uint64_t dpv = pv1 - pv0, dhv = hv1 - hv0, dtsc = tsc1 - tsc0;
    check("time.advances", dpv >= 190000000ULL && dpv < 10000000000ULL,
          "slept until +200 ms, system time advanced %lu ns", (unsigned long)dpv);
    long ppm = (long)(((int64_t)dpv - (int64_t)dhv) * 1000000 / (int64_t)(dhv ? dhv : 1));
    info("rate_ppm", "%ld", ppm);
    check("time.rate_vs_hvm_get_time", ppm > -20000 && ppm < 20000,
          "pvclock advanced %lu ns while NOW() advanced %lu ns", (unsigned long)dpv, (unsigned long)dhv);
    /* TSC ticks observed vs ticks implied by mul/shift for dpv ns. */
    uint64_t expect_ticks = dpv / 1000 * (hz / 1000) / 1000;
    long tppm = (long)(((int64_t)dtsc - (int64_t)expect_ticks) * 1000000 / (int64_t)(expect_ticks ? expect_ticks : 1));
    check("time.tsc_rate_consistent", tppm > -20000 && tppm < 20000,
          "%lu TSC ticks in %lu ns, mul/shift imply %lu", (unsigned long)dtsc,
          (unsigned long)dpv, (unsigned long)expect_ticks);

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
