/*
 * console: __HYPERVISOR_console_io.
 *
 * Xen 4.17 (xen/drivers/char/console.c do_console_io, xsm_console_io in
 * xen/include/xsm/dummy.h): pyxen lets every domain write (as a Xen debug
 * build does: CONFIG_VERBOSE_DEBUG makes CONSOLEIO_write XSM_HOOK), while any
 * other sub-op, CONSOLEIO_read included, stays XSM_PRIV: -EPERM for a domU,
 * allowed for dom0 (unknown sub-op -> -ENOSYS, read count > INT_MAX -> -E2BIG).
 *
 * INFO keys: console_line (a line written through the plain path; the host
 * should see "INFO console_line hello from CONSOLEIO_write").
 */
#include "guest.h"

static uint8_t page[4096] ALIGNED(4096);

int guest_main(void)
{
    static const char line[] = "INFO console_line hello from CONSOLEIO_write\n";
    long rc;

    rc = HYPERVISOR_console_io(CONSOLEIO_write, sizeof(line) - 1, line);
    check_eq("console.write", rc, 0);

    /* A line written in three pieces (Xen buffers a domU's output until '\n'). */
    rc = HYPERVISOR_console_io(CONSOLEIO_write, 5, "INFO ");
    rc |= HYPERVISOR_console_io(CONSOLEIO_write, 13, "console_split");
    rc |= HYPERVISOR_console_io(CONSOLEIO_write, 20, " one line, 3 writes\n");
    check_eq("console.write_pieces", rc, 0);

    /* Longer than Xen's 128-byte copy chunk. */
    static char longline[400];
    int n = snprintf(longline, sizeof(longline), "INFO console_long ");
    for (; n < 300; n++) longline[n] = (char)('a' + n % 26);
    longline[n++] = '\n';
    check_eq("console.write_long", HYPERVISOR_console_io(CONSOLEIO_write, n, longline), 0);

    /* Control bytes: Xen strips a domU's non-printable bytes (ESC, BEL, C1, CR) before its
     * console shows them; the host should see "INFO console_clean a[2Jbc<TAB>tab". */
    static const char dirty[] = "INFO console_clean a\x1b[2Jb\x07\x9b" "c\ttab\r\n";
    check_eq("console.write_control_bytes",
             HYPERVISOR_console_io(CONSOLEIO_write, sizeof(dirty) - 1, dirty), 0);

    check_eq("console.write_zero_len", HYPERVISOR_console_io(CONSOLEIO_write, 0, line), 0);
    check_eq("console.write_zero_len_badptr", HYPERVISOR_console_io(CONSOLEIO_write, 0, BAD_PTR), 0);
    check_eq("console.write_badptr", HYPERVISOR_console_io(CONSOLEIO_write, 10, BAD_PTR), EFAULT_);

    /* A huge count starting one byte before an unmapped page: the very first
     * copy crosses into the hole -> -EFAULT (nothing printed but at most an
     * empty line). */
    uint64_t va = ALIAS_BASE + 0x10000;
    page[4095] = '\n';
    if (map_4k(va, virt_to_phys(page), PTE_P | PTE_W) == 0) {
        unmap_4k(va + 4096);
        check_eq("console.write_huge_count",
                 HYPERVISOR_console_io(CONSOLEIO_write, 0xffffffffu, (void *)(va + 4095)), EFAULT_);
        check_eq("console.write_huge_count_2g",
                 HYPERVISOR_console_io(CONSOLEIO_write, 0x80000000u, (void *)(va + 4095)), EFAULT_);
    } else {
        test_fail("console.write_huge_count", "could not build the test mapping");
    }

    static char rbuf[64];
    if (!boot.dom0) {
        check_eq("console.read_denied", HYPERVISOR_console_io(CONSOLEIO_read, sizeof(rbuf), rbuf), EPERM_);
        check_eq("console.read_denied_badptr", HYPERVISOR_console_io(CONSOLEIO_read, 16, BAD_PTR), EPERM_);
        check_eq("console.unknown_subop", HYPERVISOR_console_io(7, 0, rbuf), EPERM_);
        check_eq("console.unknown_subop_negative", HYPERVISOR_console_io(-1, 0, rbuf), EPERM_);
    } else {
        rc = HYPERVISOR_console_io(CONSOLEIO_read, sizeof(rbuf), rbuf);
        check_range("console.read_dom0", rc, 0, sizeof(rbuf));
        check_eq("console.read_dom0_e2big", HYPERVISOR_console_io(CONSOLEIO_read, 0x80000000u, rbuf), E2BIG_);
        check_eq("console.unknown_subop", HYPERVISOR_console_io(7, 0, rbuf), ENOSYS_);
    }
    return 0;
}
