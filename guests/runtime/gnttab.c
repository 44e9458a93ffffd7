/* Grant-table helpers (see gnttab.h for the rules they follow). */
#include "gnttab.h"

volatile grant_entry_v1_t *gnttab_v1;

long gnttab_setup(void *frames, unsigned nr)
{
    for (unsigned idx = 0; idx < nr; idx++) {
        struct xen_add_to_physmap a = {
            .domid = DOMID_SELF, .space = XENMAPSPACE_grant_table, .idx = idx,
            .gpfn = ((uint64_t)(uintptr_t)frames >> PAGE_SHIFT) + idx };
        long rc = HYPERVISOR_memory_op(XENMEM_add_to_physmap, &a);
        if (rc)
            return rc;
    }
    gnttab_v1 = (volatile grant_entry_v1_t *)frames;
    return 0;
}

void gnttab_grant(grant_ref_t ref, domid_t domid, uint64_t gfn, uint16_t flags)
{
    gnttab_v1[ref].domid = domid;
    gnttab_v1[ref].frame = (uint32_t)gfn;
    barrier();  /* x86 keeps stores in order: the compiler must too */
    gnttab_v1[ref].flags = flags;
}

uint16_t gnttab_busy(grant_ref_t ref)
{
    return gnttab_v1[ref].flags & (GTF_reading | GTF_writing);
}

bool gnttab_end_access(grant_ref_t ref)
{
    uint16_t flags = gnttab_v1[ref].flags;
    do {
        if (flags & (GTF_reading | GTF_writing))
            return false;
    } while (!__atomic_compare_exchange_n(&gnttab_v1[ref].flags, &flags, 0, false,
                                          __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return true;
}

int16_t gnttab_map(domid_t dom, grant_ref_t ref, uint64_t gpa, bool readonly,
                   grant_handle_t *handle)
{
    struct gnttab_map_grant_ref op = {
        .host_addr = gpa, .ref = ref, .dom = dom,
        .flags = GNTMAP_host_map | (readonly ? GNTMAP_readonly : 0) };
    op.status = 99;
    long rc = HYPERVISOR_grant_table_op(GNTTABOP_map_grant_ref, &op, 1);
    *handle = op.handle;
    return rc ? GNTTAB_CALL_FAILED : op.status;
}

int16_t gnttab_unmap(uint64_t gpa, grant_handle_t handle)
{
    struct gnttab_unmap_grant_ref op = { .host_addr = gpa, .handle = handle };
    op.status = 99;
    long rc = HYPERVISOR_grant_table_op(GNTTABOP_unmap_grant_ref, &op, 1);
    return rc ? GNTTAB_CALL_FAILED : op.status;
}
