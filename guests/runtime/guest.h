/* Small helpers shared by the test guests. */
#ifndef PYXEN_GUEST_HELPERS_H
#define PYXEN_GUEST_HELPERS_H
#include "runtime.h"

/* A canonical virtual address that nothing maps (PML4 slot 224). */
#define BAD_PTR ((void *)0x0000700000000000ULL)
/* A domid that does not exist (below DOMID_FIRST_RESERVED). */
#define NO_SUCH_DOMID 0x7fefU
/* Virtual window above the identity-mapped first GiB for test aliases. */
#define ALIAS_BASE 0x40000000ULL
/* Xen encodes a continuation start in cmd bits 6+ (xen/include/xen/hypercall.h). */
#define MEMOP_EXTENT_SHIFT 6

static inline unsigned self_domid(void)
{
    return boot.domid_present ? boot.domid : DOMID_SELF;
}

/* Block in SCHEDOP_poll (no ports) until system time `deadline_ns`. */
static inline long sleep_until(uint64_t deadline_ns)
{
    struct sched_poll p = { .nr_ports = 0, .timeout = deadline_ns };
    set_xen_guest_handle(p.ports, NULL);
    return HYPERVISOR_sched_op(SCHEDOP_poll, &p);
}

static inline long hvm_get_time(uint64_t *now)
{
    struct xen_hvm_get_time t = { 0 };
    long rc = HYPERVISOR_hvm_op(HVMOP_get_time, &t);
    *now = t.now;
    return rc;
}
#endif
