/*
 * demo: what a newcomer sees from `pyxen demo`. A friendly tour of what a
 * PVH guest learns from Xen: version, extraversion, capabilities, its domid,
 * the memory map, command line and modules from hvm_start_info, and the
 * wallclock / system time read from shared_info.
 *
 * INFO keys: xen_version, extraversion, capabilities, domid, dom0, cmdline,
 * memmap (one per entry), modules, module (one per module), wallclock,
 * system_time_ns.
 */
#include "runtime.h"

static const char *memtype(uint32_t t)
{
    switch (t) {
    case XEN_HVM_MEMMAP_TYPE_RAM: return "RAM";
    case XEN_HVM_MEMMAP_TYPE_RESERVED: return "reserved";
    case XEN_HVM_MEMMAP_TYPE_ACPI: return "ACPI";
    case XEN_HVM_MEMMAP_TYPE_NVS: return "NVS";
    case XEN_HVM_MEMMAP_TYPE_UNUSABLE: return "unusable";
    case XEN_HVM_MEMMAP_TYPE_DISABLED: return "disabled";
    case XEN_HVM_MEMMAP_TYPE_PMEM: return "pmem";
    }
    return "?";
}

static void show_modules(void)
{
    struct hvm_start_info *si = boot.start_info;
    unsigned n = si && si->magic == XEN_HVM_START_MAGIC_VALUE ? si->nr_modules : 0;
    printf("  modules:      %u\n", n);
    info("modules", "%u", n);
    if (!n || !si->modlist_paddr)
        return;
    struct hvm_modlist_entry *m = (void *)(uintptr_t)si->modlist_paddr;
    for (unsigned i = 0; i < n; i++) {
        char preview[64];
        const uint8_t *p = (const uint8_t *)(uintptr_t)m[i].paddr;
        size_t len = m[i].size < 32 ? m[i].size : 32, k = 0;
        bool printable = m[i].paddr + len <= 0x40000000ULL;
        for (size_t j = 0; printable && j < len; j++) {
            uint8_t c = p[j];
            if (c == '\n' || c == '\r' || c == '\t') c = ' ';
            if (c < 0x20 || c > 0x7e) { printable = j > 0 && c == 0; break; }
            preview[k++] = (char)c;
        }
        preview[k] = '\0';
        const char *mcmd = m[i].cmdline_paddr ? (const char *)(uintptr_t)m[i].cmdline_paddr : "";
        printf("    [%u] at %#lx, %lu bytes%s%s%s%s%s\n", i, (unsigned long)m[i].paddr,
               (unsigned long)m[i].size, printable ? ": \"" : "", printable ? preview : "",
               printable ? "\"" : "", *mcmd ? "  cmdline: " : "", mcmd);
        info("module", "%u %#lx %lu %s", i, (unsigned long)m[i].paddr,
             (unsigned long)m[i].size, printable ? preview : "-");
    }
}

int guest_main(void)
{
    printf("\n");
    printf("  pyxen guest kit demo: a tiny PVH kernel talking to Xen's ABI\n");
    printf("  ------------------------------------------------------------\n");

    struct hvm_start_info *si = boot.start_info;
    if (si && si->magic == XEN_HVM_START_MAGIC_VALUE) {
        printf("  start info:   at %p, version %u, flags %#x\n", (void *)si, si->version, si->flags);
        printf("  command line: \"%s\"\n", boot.cmdline);
        info("cmdline", "%s", boot.cmdline);
        printf("  memory map:   %u entries\n", si->memmap_entries);
        struct hvm_memmap_table_entry *m = (void *)(uintptr_t)si->memmap_paddr;
        uint64_t ram = 0;
        for (uint32_t i = 0; si->memmap_paddr && i < si->memmap_entries; i++) {
            printf("    %#012lx-%#012lx %-8s (%lu KiB)\n", (unsigned long)m[i].addr,
                   (unsigned long)(m[i].addr + m[i].size - 1), memtype(m[i].type),
                   (unsigned long)(m[i].size >> 10));
            info("memmap", "%#lx %#lx %u", (unsigned long)m[i].addr,
                 (unsigned long)m[i].size, m[i].type);
            if (m[i].type == XEN_HVM_MEMMAP_TYPE_RAM)
                ram += m[i].size;
        }
        printf("  RAM:          %lu MiB\n", (unsigned long)(ram >> 20));
        show_modules();
    } else {
        printf("  start info:   missing or bad magic\n");
    }

    if (!boot.xen) {
        printf("  No Xen signature in CPUID: running without a Xen hypervisor.\n");
        info("xen", "absent");
        return 0;
    }

    long ver = HYPERVISOR_xen_version(XENVER_version, NULL);
    static char extra[XEN_EXTRAVERSION_LEN], caps[XEN_CAPABILITIES_INFO_LEN];
    static xen_changeset_info_t chg;
    HYPERVISOR_xen_version(XENVER_extraversion, extra);
    HYPERVISOR_xen_version(XENVER_capabilities, caps);
    HYPERVISOR_xen_version(XENVER_changeset, chg);
    printf("  hypervisor:   Xen %ld.%ld%s (CPUID leaves at %#x, hypercall MSR %#x)\n",
           ver >> 16, ver & 0xffff, extra, boot.cpuid_base, boot.hypercall_msr);
    printf("  capabilities: %s\n", caps);
    printf("  changeset:    %s\n", chg);
    info("xen_version", "%ld.%ld", ver >> 16, ver & 0xffff);
    info("extraversion", "%s", extra);
    info("capabilities", "%s", caps);

    if (boot.domid_present)
        printf("  domain:       %u%s\n", boot.domid, boot.dom0 ? " (initial domain)" : "");
    else
        printf("  domain:       (domid not advertised in CPUID)%s\n", boot.dom0 ? " initial domain" : "");
    info("domid", "%d", boot.domid_present ? (int)boot.domid : -1);
    info("dom0", "%d", boot.dom0 ? 1 : 0);

    long rc = map_shared_info();
    check_eq("demo.map_shared_info", rc, 0);
    if (rc == 0) {
        uint64_t wsec; uint32_t wnsec;
        xen_wallclock(&wsec, &wnsec);
        uint64_t now = xen_now_ns();
        uint64_t t = wsec + (wnsec + now % 1000000000ULL) / 1000000000ULL + now / 1000000000ULL;
        char date[40];
        format_utc(t, date, sizeof(date));
        printf("  wallclock:    %s UTC\n", date);
        printf("  system time:  %lu.%09lu s since the domain was built\n",
               (unsigned long)(now / 1000000000ULL), (unsigned long)(now % 1000000000ULL));
        info("wallclock", "%lu", (unsigned long)t);
        info("system_time_ns", "%lu", (unsigned long)now);
    }
    printf("  Goodbye from the demo guest.\n\n");
    return 0;
}
