/*
 * pagetables: hypercall buffers are guest-virtual; the hypervisor walks our
 * page tables (Xen 4.17: copy_{to,from}_guest -> hvm_copy_*_guest_linear,
 * failures -> -EFAULT, write access checked against the PTE with CR0.WP).
 *
 * Cases: a 4 KiB alias mapping (above 1 GiB) onto a buffer, a 2 MiB alias
 * mapping, an unmapped VA, a mapped VA whose frame is beyond the end of RAM,
 * a non-canonical address, a buffer straddling a mapped and an unmapped
 * page, and a read-only mapping (fine to read from, -EFAULT to write to).
 */
#include "guest.h"

static uint8_t buf[3][4096] ALIGNED(4096);

#define VA_4K   (ALIAS_BASE + 0x100000)     /* 4 KiB pages */
#define VA_2M   (0x80000000ULL)             /* one 2 MiB page */
#define VA_RO   (ALIAS_BASE + 0x180000)

int guest_main(void)
{
    static char direct[16];
    long rc;
    HYPERVISOR_xen_version(XENVER_extraversion, direct);

    /* 4 KiB alias: write through the alias, read through the identity map. */
    if (map_4k(VA_4K, virt_to_phys(buf[0]), PTE_P | PTE_W)) {
        test_fail("pagetables.map_4k", "no page-table pool left");
        return 0;
    }
    unmap_4k(VA_4K + 4096);
    static const char msg[] = "INFO pagetables_4k written through a 4 KiB alias mapping\n";
    memcpy(buf[0] + 100, msg, sizeof(msg) - 1);
    rc = HYPERVISOR_console_io(CONSOLEIO_write, sizeof(msg) - 1, (void *)(VA_4K + 100));
    check_eq("pagetables.console_via_4k_alias", rc, 0);
    memset(buf[0], 0, 64);
    rc = HYPERVISOR_xen_version(XENVER_extraversion, (void *)(VA_4K + 16));
    check_eq("pagetables.xen_version_via_4k_alias", rc, 0);
    check("pagetables.xen_version_via_4k_alias_content", memcmp(buf[0] + 16, direct, 16) == 0,
          "identity view of the buffer has \"%.16s\", expected \"%.16s\"", (char *)buf[0] + 16, direct);

    /* 2 MiB alias of the 2 MiB region holding buf[1]. */
    uint64_t pa = virt_to_phys(buf[1]);
    if (map_2m(VA_2M, pa & ~0x1fffffULL, PTE_P | PTE_W) == 0) {
        void *alias = (void *)(VA_2M + (pa & 0x1fffff));
        memset(buf[1], 0, 64);
        rc = HYPERVISOR_xen_version(XENVER_extraversion, alias);
        check_eq("pagetables.xen_version_via_2m_alias", rc, 0);
        check("pagetables.xen_version_via_2m_alias_content", memcmp(buf[1], direct, 16) == 0,
              "identity view has \"%.16s\"", (char *)buf[1]);
        static const char m2[] = "INFO pagetables_2m written through a 2 MiB alias mapping\n";
        memcpy(buf[1] + 200, m2, sizeof(m2) - 1);
        check_eq("pagetables.console_via_2m_alias",
                 HYPERVISOR_console_io(CONSOLEIO_write, sizeof(m2) - 1, (char *)alias + 200), 0);
    }

    /* Unmapped VA. */
    check_eq("pagetables.unmapped_read", HYPERVISOR_console_io(CONSOLEIO_write, 8, BAD_PTR), EFAULT_);
    check_eq("pagetables.unmapped_write", HYPERVISOR_xen_version(XENVER_extraversion, BAD_PTR), EFAULT_);
    check_eq("pagetables.unmapped_4k_slot_read",
             HYPERVISOR_console_io(CONSOLEIO_write, 8, (void *)(VA_4K + 4096)), EFAULT_);

    /* Mapped VA, but the frame is not RAM (well above the top of RAM). */
    uint64_t beyond = (boot.ram_top + 0x4000000ULL) & ~0xfffULL;
    uint64_t va_beyond = ALIAS_BASE + 0x140000;
    map_4k(va_beyond, beyond, PTE_P | PTE_W);
    check_eq("pagetables.beyond_ram_read", HYPERVISOR_console_io(CONSOLEIO_write, 8, (void *)va_beyond), EFAULT_);
    check_eq("pagetables.beyond_ram_write", HYPERVISOR_xen_version(XENVER_extraversion, (void *)va_beyond), EFAULT_);

    /* Non-canonical addresses. */
    check_eq("pagetables.noncanonical_read",
             HYPERVISOR_console_io(CONSOLEIO_write, 8, (void *)0x0000800000000000ULL), EFAULT_);
    check_eq("pagetables.noncanonical_write",
             HYPERVISOR_xen_version(XENVER_extraversion, (void *)0x8000000000001000ULL), EFAULT_);

    /* Straddling the end of the 4 KiB alias into the unmapped next page. */
    memcpy(buf[0] + 4096 - 8, "INFO x\n\n", 8);
    check_eq("pagetables.straddle_read",
             HYPERVISOR_console_io(CONSOLEIO_write, 16, (void *)(VA_4K + 4096 - 8)), EFAULT_);
    check_eq("pagetables.straddle_write",
             HYPERVISOR_xen_version(XENVER_extraversion, (void *)(VA_4K + 4096 - 8)), EFAULT_);
    check_eq("pagetables.straddle_exact_fit",
             HYPERVISOR_xen_version(XENVER_extraversion, (void *)(VA_4K + 4096 - 16)), 0);

    /* Read-only mapping: readable by Xen, not writable (CR0.WP=1). */
    map_4k(VA_RO, virt_to_phys(buf[2]), PTE_P);
    static const char m3[] = "INFO pagetables_ro read through a read-only mapping\n";
    memcpy(buf[2], m3, sizeof(m3) - 1);
    check_eq("pagetables.readonly_read", HYPERVISOR_console_io(CONSOLEIO_write, sizeof(m3) - 1, (void *)VA_RO), 0);
    check_eq("pagetables.readonly_write", HYPERVISOR_xen_version(XENVER_extraversion, (void *)VA_RO), EFAULT_);

    /* The identity map itself, for completeness: a kernel buffer. */
    check_eq("pagetables.identity_2m", HYPERVISOR_xen_version(XENVER_extraversion, direct), 0);
    return 0;
}
