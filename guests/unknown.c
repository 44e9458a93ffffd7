/*
 * unknown: hypercall numbers an HVM guest does not have get -ENOSYS
 * (Xen 4.17 xen/include/hypercall-defs.c hvm64 column; numbers at or past
 * NR_hypercalls (64) -> -ENOSYS; the hypercall page has 128 stubs).
 */
#include "guest.h"

int guest_main(void)
{
    /* PV-only or removed hypercalls, unused numbers, arch slots. */
    static const unsigned nrs[] = {
        __HYPERVISOR_set_trap_table, __HYPERVISOR_mmu_update, __HYPERVISOR_set_gdt,
        __HYPERVISOR_stack_switch, __HYPERVISOR_set_callbacks, __HYPERVISOR_fpu_taskswitch,
        __HYPERVISOR_sched_op_compat, __HYPERVISOR_set_debugreg, __HYPERVISOR_get_debugreg,
        __HYPERVISOR_update_descriptor, 11, __HYPERVISOR_update_va_mapping,
        __HYPERVISOR_event_channel_op_compat, __HYPERVISOR_physdev_op_compat,
        __HYPERVISOR_update_va_mapping_otherdomain,
        __HYPERVISOR_set_segment_base, __HYPERVISOR_nmi_op, __HYPERVISOR_callback_op,
        __HYPERVISOR_xenoprof_op, __HYPERVISOR_kexec_op, __HYPERVISOR_tmem_op,
        43, 44, 45, 46, 47, __HYPERVISOR_arch_0, 50, 51, 52, 53, 54, 55, 56, 60, 63,
        64, 65, 100, 127,
    };
    char name[64];
    for (unsigned i = 0; i < ARRAY_SIZE(nrs); i++) {
        unsigned nr = nrs[i];
        snprintf(name, sizeof(name), "unknown.hypercall_%u", nr);
        if (boot.xen && hypercall_page[nr * 32] == 0xc3) {
            test_fail(name, "hypercall page slot %u is not filled (still ret)", nr);
            continue;
        }
        /* Arguments that would be harmful if the call did run. */
        check_eq(name, hypercall5(nr, 0, 0, 0, 0, 0), ENOSYS_);
    }
    /* Xen fills every slot but __HYPERVISOR_iret, which is `ud2` for HVM
     * (hvm hypercall page init): calling it would be #UD, so only look. */
    if (boot.xen)
        check("unknown.iret_slot_is_ud2", hypercall_page[__HYPERVISOR_iret * 32] == 0x0f &&
              hypercall_page[__HYPERVISOR_iret * 32 + 1] == 0x0b,
              "slot %d starts %02x %02x, expected ud2 (0f 0b)", __HYPERVISOR_iret,
              hypercall_page[__HYPERVISOR_iret * 32], hypercall_page[__HYPERVISOR_iret * 32 + 1]);

    /* Known hypercall, unknown sub-op, for contrast: also -ENOSYS. */
    check_eq("unknown.grant_table_unknown_subop", HYPERVISOR_grant_table_op(99, NULL, 0), ENOSYS_);
    check_eq("unknown.physdev_unknown_subop", hypercall2(__HYPERVISOR_physdev_op, 99, 0), ENOSYS_);
    check_eq("unknown.event_channel_unknown_subop", HYPERVISOR_event_channel_op(99, NULL), ENOSYS_);
    return 0;
}
