/*
 * vcpu: __HYPERVISOR_vcpu_op (xen/common/domain.c do_vcpu_op, map_vcpu_info;
 * x86 arch_do_vcpu_op for the rest).
 *
 * Semantics relied on (Xen 4.17): vcpuid >= max_vcpus -> -ENOENT before the
 * sub-op is looked at; register_vcpu_info: offset must leave room for a
 * 64-byte vcpu_info in the page and be 8-byte aligned (-EINVAL), gfn must be
 * RAM (-EINVAL), only once per vcpu (-EINVAL); register_runstate_memory_area
 * returns 0 and writes the current runstate at once (the area is refreshed
 * on every context switch); get_runstate_info copies the live runstate;
 * is_up -> 1 for a running vcpu; unknown sub-op -> -ENOSYS.
 *
 * INFO keys: runstate_running_ns, runstate_blocked_ns.
 */
#include "guest.h"

static uint8_t vi_page[4096] ALIGNED(4096);
static struct vcpu_runstate_info area ALIGNED(64);

static long reg_vcpu_info(uint64_t gfn, unsigned offset)
{
    struct vcpu_register_vcpu_info r = { .mfn = gfn, .offset = offset };
    return HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_info, 0, &r);
}

static uint64_t total(const struct vcpu_runstate_info *r)
{
    return r->time[0] + r->time[1] + r->time[2] + r->time[3];
}

int guest_main(void)
{
    long rc;

    check_eq("vcpu.is_up_vcpu0", HYPERVISOR_vcpu_op(VCPUOP_is_up, 0, NULL), 1);
    check_eq("vcpu.is_up_bad_vcpu", HYPERVISOR_vcpu_op(VCPUOP_is_up, 4096, NULL), ENOENT_);
    check_eq("vcpu.is_up_vcpu_huge", HYPERVISOR_vcpu_op(VCPUOP_is_up, 0xffffffffu, NULL), ENOENT_);
    check_eq("vcpu.unknown_subop", HYPERVISOR_vcpu_op(99, 0, NULL), ENOSYS_);
    check_eq("vcpu.unknown_subop_bad_vcpu", HYPERVISOR_vcpu_op(99, 4096, NULL), ENOENT_);

    /* get_runstate_info: running, and the times grow. */
    struct vcpu_runstate_info r1, r2;
    memset(&r1, 0xff, sizeof(r1));
    rc = HYPERVISOR_vcpu_op(VCPUOP_get_runstate_info, 0, &r1);
    check_eq("vcpu.get_runstate_info", rc, 0);
    check_eq("vcpu.get_runstate_info_running", r1.state, RUNSTATE_running);
    check_eq("vcpu.yield", HYPERVISOR_sched_op(SCHEDOP_yield, NULL), 0);
    HYPERVISOR_vcpu_op(VCPUOP_get_runstate_info, 0, &r2);
    check("vcpu.get_runstate_info_grows", total(&r2) > total(&r1) && r2.time[RUNSTATE_running] > 0,
          "total %lu -> %lu, running %lu", (unsigned long)total(&r1), (unsigned long)total(&r2),
          (unsigned long)r2.time[RUNSTATE_running]);
    check_eq("vcpu.get_runstate_info_badptr", HYPERVISOR_vcpu_op(VCPUOP_get_runstate_info, 0, BAD_PTR), EFAULT_);
    check_eq("vcpu.get_runstate_info_bad_vcpu", HYPERVISOR_vcpu_op(VCPUOP_get_runstate_info, 4096, &r1), ENOENT_);

    /* register_runstate_memory_area: written at once, refreshed on switches. */
    memset(&area, 0xff, sizeof(area));
    struct vcpu_register_runstate_memory_area ra;
    set_xen_guest_handle(ra.addr.h, &area);
    rc = HYPERVISOR_vcpu_op(VCPUOP_register_runstate_memory_area, 0, &ra);
    check_eq("vcpu.register_runstate_area", rc, 0);
    check_eq("vcpu.runstate_area_running", ((volatile struct vcpu_runstate_info *)&area)->state, RUNSTATE_running);
    check("vcpu.runstate_area_filled", area.state_entry_time != ~0ULL && area.time[RUNSTATE_running] != ~0ULL,
          "area not written: entry %#lx running %#lx", (unsigned long)area.state_entry_time,
          (unsigned long)area.time[RUNSTATE_running]);
    uint64_t blocked0 = area.time[RUNSTATE_blocked];
    if (map_shared_info() == 0) {
        /* Block ~30 ms: the blocked time grows, by no more than the time that passed
         * (a busy host may stall us before the poll, so not by "about 30 ms"). */
        uint64_t t0 = xen_now_ns(), t1;
        while ((t1 = xen_now_ns()) < t0 + 30000000ULL)   /* a poll may end early (Xen) */
            sleep_until(t0 + 30000000ULL);
        volatile struct vcpu_runstate_info *va = &area;
        uint64_t grew = va->time[RUNSTATE_blocked] - blocked0;
        check_eq("vcpu.runstate_area_running_after_block", va->state, RUNSTATE_running);
        check("vcpu.runstate_area_blocked_time", grew > 0 && grew <= t1 - t0 + 1000000ULL,
              "blocked time %lu -> %lu ns over a SCHEDOP_poll of %lu ns", (unsigned long)blocked0,
              (unsigned long)va->time[RUNSTATE_blocked], (unsigned long)(t1 - t0));
        info("runstate_running_ns", "%lu", (unsigned long)va->time[RUNSTATE_running]);
        info("runstate_blocked_ns", "%lu", (unsigned long)va->time[RUNSTATE_blocked]);
    }
    check_eq("vcpu.register_runstate_area_badptr",
             HYPERVISOR_vcpu_op(VCPUOP_register_runstate_memory_area, 0, BAD_PTR), EFAULT_);
    check_eq("vcpu.register_runstate_area_bad_vcpu",
             HYPERVISOR_vcpu_op(VCPUOP_register_runstate_memory_area, 4096, &ra), ENOENT_);

    /* register_vcpu_info: the failures first (they register nothing). */
    uint64_t gfn = pfn_of(vi_page);
    check_eq("vcpu.register_vcpu_info_misaligned", reg_vcpu_info(gfn, 4), EINVAL_);
    check_eq("vcpu.register_vcpu_info_crosses_page", reg_vcpu_info(gfn, 4096 - 32), EINVAL_);
    check_eq("vcpu.register_vcpu_info_offset_past_page", reg_vcpu_info(gfn, 8192), EINVAL_);
    check_eq("vcpu.register_vcpu_info_not_ram", reg_vcpu_info((boot.ram_top >> PAGE_SHIFT) + 0x10000, 0), EINVAL_);
    check_eq("vcpu.register_vcpu_info_badptr", HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_info, 0, BAD_PTR), EFAULT_);
    check_eq("vcpu.register_vcpu_info_bad_vcpu",
             HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_info, 4096, &(struct vcpu_register_vcpu_info){ .mfn = gfn }), ENOENT_);

    unsigned off = 4096 - 64;      /* last slot that fits */
    memset(vi_page, 0, sizeof(vi_page));
    rc = reg_vcpu_info(gfn, off);
    check_eq("vcpu.register_vcpu_info", rc, 0);
    if (rc == 0) {
        volatile struct vcpu_info *vi = (void *)(vi_page + off);
        check("vcpu.vcpu_info_time_published", vi->time.version != 0 && !(vi->time.version & 1) &&
              vi->time.tsc_to_system_mul != 0,
              "version %u mul %u", vi->time.version, vi->time.tsc_to_system_mul);
        uint64_t t = xen_system_time_ns((const struct vcpu_time_info *)&vi->time);
        check("vcpu.vcpu_info_time_sane", t > 0, "system time %lu", (unsigned long)t);
    }
    check_eq("vcpu.register_vcpu_info_twice", reg_vcpu_info(gfn, 0), EINVAL_);
    /* register_vcpu_time_memory_area: a pvclock copy where we ask; a bad address is
     * accepted and simply not written (guest_handle_okay is always true for HVM). */
    static struct vcpu_time_info area;
    struct vcpu_register_time_memory_area t = { 0 };
    t.addr.v = &area;
    check_eq("vcpu.register_time_area", HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_time_memory_area, 0, &t), 0);
    uint64_t t1 = xen_system_time_ns(&area);
    check("vcpu.time_area_filled", area.version % 2 == 0 && area.version && area.tsc_to_system_mul && t1,
          "version %u mul %u time %lu", area.version, area.tsc_to_system_mul, (unsigned long)t1);
    sleep_until(xen_now_ns() + 2000000);
    check("vcpu.time_area_advances", xen_system_time_ns(&area) > t1, "no progress");
    t.addr.p = (uint64_t)(uintptr_t)BAD_PTR;
    check_eq("vcpu.register_time_area_badptr", HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_time_memory_area, 0, &t), 0);
    return 0;
}
