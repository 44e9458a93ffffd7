/*
 * hvm_param: HVMOP_get_param / HVMOP_set_param and other HVMOPs, as Xen 4.17
 * answers a PVH/HVM domU about itself (xen/arch/x86/hvm/hvm.c:
 * hvmop_{get,set}_param: copy -> -EFAULT, index >= HVM_NR_PARAMS -> -EINVAL,
 * domain lookup -> -ESRCH, then hvm_allow_{get,set}_param: parameters the
 * guest may not touch -> -EPERM; do_hvm_op default -> -ENOSYS).
 *
 * INFO keys: store_pfn, store_evtchn, console_pfn, console_evtchn,
 * callback_irq, hvm_time_ns.
 */
#include "guest.h"

static void expect_get(const char *name, unsigned idx, long want)
{
    uint64_t v;
    check_eq(name, hvm_get_param(DOMID_SELF, idx, &v), want);
}

static void expect_set(const char *name, unsigned idx, uint64_t val, long want)
{
    check_eq(name, hvm_set_param(DOMID_SELF, idx, val), want);
}

int guest_main(void)
{
    uint64_t v = ~0ULL;
    long rc;
    char name[64];

    /* Readable by the guest; the store's are 0 (no xenstore served). Every domain has a
     * console ring, as with xl: its parameters are checked by the console_ring guest. */
    static const struct { unsigned idx; const char *key; } zero[] = {
        { HVM_PARAM_STORE_PFN, "store_pfn" }, { HVM_PARAM_STORE_EVTCHN, "store_evtchn" },
    };
    static const struct { unsigned idx; const char *key; } console[] = {
        { HVM_PARAM_CONSOLE_PFN, "console_pfn" }, { HVM_PARAM_CONSOLE_EVTCHN, "console_evtchn" },
    };
    for (unsigned i = 0; i < ARRAY_SIZE(console); i++) {
        v = 0;
        snprintf(name, sizeof(name), "hvm_param.get_%s", console[i].key);
        check_eq(name, hvm_get_param(DOMID_SELF, console[i].idx, &v), 0);
        info(console[i].key, "%#lx", (unsigned long)v);
    }
    for (unsigned i = 0; i < ARRAY_SIZE(zero); i++) {
        v = ~0ULL;
        rc = hvm_get_param(DOMID_SELF, zero[i].idx, &v);
        snprintf(name, sizeof(name), "hvm_param.get_%s", zero[i].key);
        check_eq(name, rc, 0);
        snprintf(name, sizeof(name), "hvm_param.%s_is_zero", zero[i].key);
        check(name, v == 0, "expected 0 got %#lx", (unsigned long)v);
        info(zero[i].key, "%#lx", (unsigned long)v);
    }
    static const struct { unsigned idx; const char *name; } readable[] = {
        { HVM_PARAM_CALLBACK_IRQ, "hvm_param.get_callback_irq" },
        { HVM_PARAM_ACPI_IOPORTS_LOCATION, "hvm_param.get_acpi_ioports_location" },
        { HVM_PARAM_VM_GENERATION_ID_ADDR, "hvm_param.get_vm_generation_id_addr" },
        { HVM_PARAM_ALTP2M, "hvm_param.get_altp2m" },
        { HVM_PARAM_X87_FIP_WIDTH, "hvm_param.get_x87_fip_width" },
        { HVM_PARAM_VM86_TSS_SIZED, "hvm_param.get_vm86_tss_sized" },
    };
    for (unsigned i = 0; i < ARRAY_SIZE(readable); i++)
        expect_get(readable[i].name, readable[i].idx, 0);
    hvm_get_param(DOMID_SELF, HVM_PARAM_CALLBACK_IRQ, &v);
    info("callback_irq", "%#lx", (unsigned long)v);
    if (boot.domid_present) {
        uint64_t v2 = ~0ULL;
        rc = hvm_get_param(boot.domid, HVM_PARAM_STORE_PFN, &v2);
        check("hvm_param.get_own_domid", rc == 0 && v2 == 0, "rc %ld value %#lx", rc,
              (unsigned long)v2);
    }

    /* Toolstack/Xen-only parameters: -EPERM when a domain asks about itself. */
    static const struct { unsigned idx; const char *key; } forbidden[] = {
        { HVM_PARAM_IOREQ_PFN, "ioreq_pfn" }, { HVM_PARAM_BUFIOREQ_PFN, "bufioreq_pfn" },
        { HVM_PARAM_VIRIDIAN, "viridian" }, { HVM_PARAM_TIMER_MODE, "timer_mode" },
        { HVM_PARAM_HPET_ENABLED, "hpet_enabled" }, { HVM_PARAM_IDENT_PT, "ident_pt" },
        { HVM_PARAM_ACPI_S_STATE, "acpi_s_state" }, { HVM_PARAM_VPT_ALIGN, "vpt_align" },
        { HVM_PARAM_PAGING_RING_PFN, "paging_ring_pfn" },
        { HVM_PARAM_MONITOR_RING_PFN, "monitor_ring_pfn" },
        { HVM_PARAM_SHARING_RING_PFN, "sharing_ring_pfn" },
        { HVM_PARAM_TRIPLE_FAULT_REASON, "triple_fault_reason" },
        { HVM_PARAM_IOREQ_SERVER_PFN, "ioreq_server_pfn" },
        { HVM_PARAM_NR_IOREQ_SERVER_PAGES, "nr_ioreq_server_pages" },
        { HVM_PARAM_MCA_CAP, "mca_cap" },
    };
    for (unsigned i = 0; i < ARRAY_SIZE(forbidden); i++) {
        snprintf(name, sizeof(name), "hvm_param.get_%s_denied", forbidden[i].key);
        expect_get(name, forbidden[i].idx, EPERM_);
        snprintf(name, sizeof(name), "hvm_param.set_%s_denied", forbidden[i].key);
        expect_set(name, forbidden[i].idx, 0, EPERM_);
    }
    /* Readable but not writable by the guest. */
    expect_set("hvm_param.set_store_pfn_denied", HVM_PARAM_STORE_PFN, 0x1234, EPERM_);
    expect_set("hvm_param.set_console_pfn_denied", HVM_PARAM_CONSOLE_PFN, 0x1234, EPERM_);

    /* Writable by the guest. */
    expect_set("hvm_param.set_callback_irq_none", HVM_PARAM_CALLBACK_IRQ, 0, 0);
    uint64_t via = (2ULL << 56) | 0xf3;   /* HVM_PARAM_CALLBACK_TYPE_VECTOR, vector 0xf3 */
    expect_set("hvm_param.set_callback_irq_vector", HVM_PARAM_CALLBACK_IRQ, via, 0);
    v = 0;
    hvm_get_param(DOMID_SELF, HVM_PARAM_CALLBACK_IRQ, &v);
    check("hvm_param.callback_irq_readback", v == via, "expected %#lx got %#lx",
          (unsigned long)via, (unsigned long)v);
    expect_set("hvm_param.set_callback_irq_reset", HVM_PARAM_CALLBACK_IRQ, 0, 0);

    uint64_t se = 0, ce = 0;
    hvm_get_param(DOMID_SELF, HVM_PARAM_STORE_EVTCHN, &se);
    hvm_get_param(DOMID_SELF, HVM_PARAM_CONSOLE_EVTCHN, &ce);
    expect_set("hvm_param.set_store_evtchn", HVM_PARAM_STORE_EVTCHN, se, 0);
    expect_set("hvm_param.set_console_evtchn", HVM_PARAM_CONSOLE_EVTCHN, ce, 0);

    expect_set("hvm_param.set_x87_fip_width_8", HVM_PARAM_X87_FIP_WIDTH, 8, 0);
    v = 0;
    hvm_get_param(DOMID_SELF, HVM_PARAM_X87_FIP_WIDTH, &v);
    check_eq("hvm_param.x87_fip_width_readback", (long)v, 8);
    expect_set("hvm_param.set_x87_fip_width_bad", HVM_PARAM_X87_FIP_WIDTH, 5, EINVAL_);
    expect_set("hvm_param.set_x87_fip_width_0", HVM_PARAM_X87_FIP_WIDTH, 0, 0);

    expect_set("hvm_param.set_vm_generation_id_addr", HVM_PARAM_VM_GENERATION_ID_ADDR, 0x12345000, 0);
    v = 0;
    hvm_get_param(DOMID_SELF, HVM_PARAM_VM_GENERATION_ID_ADDR, &v);
    check_eq("hvm_param.vm_generation_id_addr_readback", (long)v, 0x12345000);

    /* Out of range -> -EINVAL (checked before the domain lookup). */
    expect_get("hvm_param.get_out_of_range", HVM_NR_PARAMS, EINVAL_);
    expect_get("hvm_param.get_out_of_range_huge", 0xffffffffu, EINVAL_);
    expect_set("hvm_param.set_out_of_range", HVM_NR_PARAMS, 0, EINVAL_);
    check_eq("hvm_param.get_out_of_range_bad_domid", hvm_get_param(NO_SUCH_DOMID, HVM_NR_PARAMS, &v), EINVAL_);

    /* No such domain -> -ESRCH. */
    check_eq("hvm_param.get_bad_domid", hvm_get_param(NO_SUCH_DOMID, HVM_PARAM_STORE_PFN, &v), ESRCH_);
    check_eq("hvm_param.set_bad_domid", hvm_set_param(NO_SUCH_DOMID, HVM_PARAM_CALLBACK_IRQ, 0), ESRCH_);

    /* Bad pointers. */
    check_eq("hvm_param.get_badptr", HYPERVISOR_hvm_op(HVMOP_get_param, BAD_PTR), EFAULT_);
    check_eq("hvm_param.set_badptr", HYPERVISOR_hvm_op(HVMOP_set_param, BAD_PTR), EFAULT_);

    /* HVMOP_get_time: Xen's NOW() in ns. */
    uint64_t now = 0;
    rc = hvm_get_time(&now);
    check("hvm_param.get_time", rc == 0 && now > 0, "rc %ld now %lu", rc, (unsigned long)now);
    info("hvm_time_ns", "%lu", (unsigned long)now);
    check_eq("hvm_param.get_time_badptr", HYPERVISOR_hvm_op(HVMOP_get_time, BAD_PTR), EFAULT_);

    /* HVMOP_set_evtchn_upcall_vector argument checks. */
    struct xen_hvm_evtchn_upcall_vector uv = { .vcpu = 0, .vector = 0x0f };
    check_eq("hvm_param.upcall_vector_too_low", HYPERVISOR_hvm_op(HVMOP_set_evtchn_upcall_vector, &uv), EINVAL_);
    uv.vcpu = 4096; uv.vector = 0xf3;
    check_eq("hvm_param.upcall_vector_bad_vcpu", HYPERVISOR_hvm_op(HVMOP_set_evtchn_upcall_vector, &uv), ENOENT_);

    /* Unknown HVMOPs. */
    check_eq("hvm_param.unknown_op", HYPERVISOR_hvm_op(99, NULL), ENOSYS_);
    check_eq("hvm_param.unknown_op_7", HYPERVISOR_hvm_op(7, NULL), ENOSYS_);
    return 0;
}
