/*
 * multicall: __HYPERVISOR_multicall (xen/common/multicall.c do_multicall,
 * HVM dispatch through the hvm64 hypercall table).
 *
 * Semantics relied on (Xen 4.17): each entry's result goes to its `result`
 * field (a debug Xen scribbles 0xAA over the rest of the entry, so only
 * `result` is read back); a failing entry does not stop the batch; the
 * multicall itself returns 0; a nested multicall entry gets -EINVAL
 * ("reentry is disallowed"); an entry for a hypercall an HVM guest does not
 * have gets -ENOSYS; an unreadable list -> -EFAULT (entries before the bad
 * one have run); zero entries -> 0 without touching the list.
 */
#include "guest.h"

static uint8_t page[4096] ALIGNED(4096);

static void set(multicall_entry_t *e, unsigned long op, unsigned long a0, unsigned long a1,
                unsigned long a2)
{
    memset(e, 0, sizeof(*e));
    e->op = op;
    e->args[0] = a0;
    e->args[1] = a1;
    e->args[2] = a2;
    e->result = 0x5151515151515151UL;
}

int guest_main(void)
{
    static multicall_entry_t mc[8], inner[1];
    static char extra[16], extra_direct[16];
    static const char line[] = "INFO multicall_console written from inside a multicall\n";
    domid_t self = DOMID_SELF;
    long ver = HYPERVISOR_xen_version(XENVER_version, NULL);
    long cur = HYPERVISOR_memory_op(XENMEM_current_reservation, &self);
    HYPERVISOR_xen_version(XENVER_extraversion, extra_direct);

    set(&mc[0], __HYPERVISOR_xen_version, XENVER_version, 0, 0);
    set(&mc[1], __HYPERVISOR_xen_version, XENVER_extraversion, (unsigned long)extra, 0);
    set(&mc[2], __HYPERVISOR_sched_op, SCHEDOP_yield, 0, 0);
    set(&mc[3], __HYPERVISOR_console_io, CONSOLEIO_write, sizeof(line) - 1, (unsigned long)line);
    set(&mc[4], __HYPERVISOR_memory_op, XENMEM_current_reservation, (unsigned long)&self, 0);
    long rc = HYPERVISOR_multicall(mc, 5);
    check_eq("multicall.batch", rc, 0);
    check_eq("multicall.batch_version", mc[0].result, ver);
    check_eq("multicall.batch_extraversion", mc[1].result, 0);
    check("multicall.batch_extraversion_content", memcmp(extra, extra_direct, 16) == 0,
          "got \"%.16s\" expected \"%.16s\"", extra, extra_direct);
    check_eq("multicall.batch_yield", mc[2].result, 0);
    check_eq("multicall.batch_console", mc[3].result, 0);
    check_eq("multicall.batch_reservation", mc[4].result, cur);

    /* A failing call in the middle does not stop the rest. */
    set(&mc[0], __HYPERVISOR_xen_version, XENVER_version, 0, 0);
    set(&mc[1], __HYPERVISOR_xen_version, XENVER_extraversion, (unsigned long)BAD_PTR, 0);
    set(&mc[2], __HYPERVISOR_xen_version, 12345, 0, 0);
    set(&mc[3], 1 /* mmu_update: PV only */, 0, 0, 0);
    set(&mc[4], 100 /* past the table */, 0, 0, 0);
    set(&mc[5], __HYPERVISOR_xen_version, XENVER_version, 0, 0);
    rc = HYPERVISOR_multicall(mc, 6);
    check_eq("multicall.failing_entry", rc, 0);
    check_eq("multicall.failing_entry_first", mc[0].result, ver);
    check_eq("multicall.failing_entry_efault", mc[1].result, EFAULT_);
    check_eq("multicall.failing_entry_enosys_subop", mc[2].result, ENOSYS_);
    check_eq("multicall.failing_entry_pv_only", mc[3].result, ENOSYS_);
    check_eq("multicall.failing_entry_past_table", mc[4].result, ENOSYS_);
    check_eq("multicall.failing_entry_last", mc[5].result, ver);

    /* Nested multicall is refused. */
    set(&inner[0], __HYPERVISOR_xen_version, XENVER_version, 0, 0);
    set(&mc[0], __HYPERVISOR_multicall, (unsigned long)inner, 1, 0);
    set(&mc[1], __HYPERVISOR_xen_version, XENVER_version, 0, 0);
    rc = HYPERVISOR_multicall(mc, 2);
    check_eq("multicall.nested", rc, 0);
    check_eq("multicall.nested_refused", mc[0].result, EINVAL_);
    check("multicall.nested_not_run", inner[0].result == 0x5151515151515151UL,
          "inner entry result changed to %#lx", (unsigned long)inner[0].result);
    check_eq("multicall.nested_after", mc[1].result, ver);

    check_eq("multicall.badptr", HYPERVISOR_multicall(BAD_PTR, 2), EFAULT_);
    check_eq("multicall.zero_entries", HYPERVISOR_multicall(mc, 0), 0);
    check_eq("multicall.zero_entries_badptr", HYPERVISOR_multicall(BAD_PTR, 0), 0);

    /* A list whose second entry sits on an unmapped page: the first runs,
     * then -EFAULT. */
    uint64_t va = ALIAS_BASE + 0x30000;
    if (map_4k(va, virt_to_phys(page), PTE_P | PTE_W) == 0) {
        unmap_4k(va + 4096);
        multicall_entry_t *e = (void *)(va + 4096 - sizeof(multicall_entry_t));
        set(e, __HYPERVISOR_xen_version, XENVER_version, 0, 0);
        rc = HYPERVISOR_multicall(e, 2);
        check_eq("multicall.list_crosses_into_hole", rc, EFAULT_);
        check_eq("multicall.list_crosses_into_hole_first_ran", e->result, ver);
    }
    return 0;
}
