/*
 * compat32: hypercalls with the 32-bit convention.
 *  1. Before long mode (compat32_early.S): 32-bit protected mode, paging off.
 *  2. In long mode: a far transfer into the 32-bit compat code segment
 *     (CS.L=0, runtime/entry.S compat_hypercall), hypercall from there,
 *     and back.
 * Xen 4.17 dispatches by the caller's mode (hvm_hypercall: mode 8 = 64-bit
 * regs, else 32-bit regs and the compat_* handlers with 32-bit struct
 * layouts, e.g. compat_memory_op's XENMEM_memory_map translation).
 *
 * INFO keys: compat32_early (printed by the 32-bit code itself),
 * compat32_compat_mode (printed from the compat segment), compat_virt_start.
 */
#include "guest.h"

extern uint32_t early32_found, early32_page_ok, early32_cr0, early32_version;
extern int32_t early32_console_rc, early32_extra_rc;
extern char early32_extra[16];

static struct e820 { uint64_t addr, size; uint32_t type; } __attribute__((packed)) m64[32], m32[32];

int guest_main(void)
{
    static char extra64[16], extra32[16];
    long rc;

    check_eq("compat32.early_found_xen", early32_found, boot.xen);
    check("compat32.early_paging_off", !(early32_cr0 & 0x80000000u) && (early32_cr0 & 1),
          "CR0 was %#x (PE must be set, PG clear)", early32_cr0);
    check_eq("compat32.early_hypercall_page", early32_page_ok, 1);
    check_eq("compat32.early_console_write", early32_console_rc, 0);
    check_eq("compat32.early_version", early32_version, boot.version);
    HYPERVISOR_xen_version(XENVER_extraversion, extra64);
    check("compat32.early_extraversion", early32_extra_rc == 0 && memcmp(early32_extra, extra64, 16) == 0,
          "rc %d, \"%.16s\" vs \"%.16s\"", early32_extra_rc, early32_extra, extra64);

    /* Compat (CS.L=0) code segment in long mode. */
    rc = compat_hypercall(__HYPERVISOR_xen_version, XENVER_version, 0, 0, 0, 0);
    check_eq("compat32.compat_version", rc, boot.version);
    static const char line[] = "INFO compat32_compat_mode hello from the compat code segment\n";
    rc = compat_hypercall(__HYPERVISOR_console_io, CONSOLEIO_write, sizeof(line) - 1,
                          (unsigned long)line, 0, 0);
    check_eq("compat32.compat_console_write", rc, 0);
    rc = compat_hypercall(__HYPERVISOR_xen_version, XENVER_extraversion, (unsigned long)extra32, 0, 0, 0);
    check("compat32.compat_extraversion", rc == 0 && memcmp(extra32, extra64, 16) == 0,
          "rc %ld, \"%.16s\" vs \"%.16s\"", rc, extra32, extra64);
    /* 0x70000000 is not mapped by our page tables: -EFAULT, sign-extended. */
    rc = compat_hypercall(__HYPERVISOR_console_io, CONSOLEIO_write, 8, 0x70000000, 0, 0);
    check_eq("compat32.compat_badptr", rc, EFAULT_);
    check_eq("compat32.compat_yield", compat_hypercall(__HYPERVISOR_sched_op, SCHEDOP_yield, 0, 0, 0, 0), 0);
    check_eq("compat32.compat_unknown_hypercall", compat_hypercall(1, 0, 0, 0, 0, 0), ENOSYS_);

    /* XENMEM_memory_map: 32-bit struct {uint32 nr_entries; uint32 buffer}. */
    struct xen_memory_map map = { .nr_entries = ARRAY_SIZE(m64) };
    set_xen_guest_handle(map.buffer, m64);
    long rc64 = HYPERVISOR_memory_op(XENMEM_memory_map, &map);
    static struct { uint32_t nr_entries; uint32_t buffer; } cmap;
    cmap.nr_entries = ARRAY_SIZE(m32);
    cmap.buffer = (uint32_t)(uintptr_t)m32;
    rc = compat_hypercall(__HYPERVISOR_memory_op, XENMEM_memory_map, (unsigned long)&cmap, 0, 0, 0);
    check_eq("compat32.compat_memory_map", rc, 0);
    check("compat32.compat_memory_map_matches", rc64 == 0 && cmap.nr_entries == map.nr_entries &&
          memcmp(m32, m64, map.nr_entries * sizeof(m64[0])) == 0,
          "64-bit: rc %ld, %u entries; compat: %u entries", rc64, map.nr_entries, cmap.nr_entries);

    domid_t self = DOMID_SELF;
    check_eq("compat32.compat_current_reservation",
             compat_hypercall(__HYPERVISOR_memory_op, XENMEM_current_reservation, (unsigned long)&self, 0, 0, 0),
             HYPERVISOR_memory_op(XENMEM_current_reservation, &self));

    /* XENMEM_add_to_physmap_batch and remove_from_physmap from 32-bit code: 32-bit handles
     * and 32-bit idxs/gpfns (compat_memory_op's translation). Grant frames, so the
     * runtime's shared_info stays where it is. */
    static uint8_t frame[4096] __attribute__((aligned(4096)));
    static uint32_t idxs[2] = { 0, 4096 }, gpfns[2];
    static int32_t errs[2] = { 99, 99 };
    gpfns[0] = gpfns[1] = (uint32_t)((uintptr_t)frame >> 12);
    struct { uint16_t domid, space, size, foreign; uint32_t idxs, gpfns, errs; } batch = {
        DOMID_SELF, XENMAPSPACE_grant_table, 2, 0,
        (uint32_t)(uintptr_t)idxs, (uint32_t)(uintptr_t)gpfns, (uint32_t)(uintptr_t)errs };
    rc = compat_hypercall(__HYPERVISOR_memory_op, XENMEM_add_to_physmap_batch,
                          (unsigned long)&batch, 0, 0, 0);
    check_eq("compat32.compat_add_to_physmap_batch", rc, 0);
    check("compat32.compat_batch_errs", errs[0] == 0 && errs[1] == EINVAL_,
          "errs %d %d", errs[0], errs[1]);
    struct { uint16_t domid; uint32_t gpfn; } remove = { DOMID_SELF, gpfns[0] };
    rc = compat_hypercall(__HYPERVISOR_memory_op, XENMEM_remove_from_physmap,
                          (unsigned long)&remove, 0, 0, 0);
    check_eq("compat32.compat_remove_from_physmap", rc, 0);
    rc = compat_hypercall(__HYPERVISOR_memory_op, XENMEM_remove_from_physmap,
                          (unsigned long)&remove, 0, 0, 0);
    check_eq("compat32.compat_remove_from_physmap_hole", rc, ENOENT_);

    /* platform_parameters from a 32-bit caller: the compat virt_start. */
    uint32_t vs = 0xdeadbeef;
    rc = compat_hypercall(__HYPERVISOR_xen_version, XENVER_platform_parameters, (unsigned long)&vs, 0, 0, 0);
    check_eq("compat32.compat_platform_parameters", rc, 0);
    info("compat_virt_start", "%#x", vs);

    /* Still fine in 64-bit mode afterwards. */
    check_eq("compat32.back_in_64bit", HYPERVISOR_xen_version(XENVER_version, NULL), boot.version);
    return 0;
}
