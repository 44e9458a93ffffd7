/*
 * version: every XENVER_* sub-op of __HYPERVISOR_xen_version, good and bad
 * input, as Xen 4.17 answers an unprivileged PVH/HVM domU
 * (xen/common/kernel.c do_xen_version + xen/include/xsm/dummy.h
 * xsm_xen_version). As dom0 (SIF_INITDOMAIN) the denied sub-ops succeed.
 *
 * INFO keys: xen_version, extraversion, compiler, compile_by, compile_domain,
 * compile_date, capabilities, changeset, virt_start, features, guest_handle,
 * xen_commandline, build_id_size.
 */
#include "guest.h"

#define CANARY 0x5a

static bool untouched(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != CANARY)
            return false;
    return true;
}

static bool terminated(const char *s, size_t n) { return strnlen(s, n) < n; }

int guest_main(void)
{
    static uint8_t buf[2048];
    long rc;

    /* XENVER_version: major<<16 | minor, same as CPUID leaf base+1. */
    rc = HYPERVISOR_xen_version(XENVER_version, NULL);
    check("version.version", rc > 0 && (uint32_t)rc == boot.version,
          "expected %#x (CPUID) got %#lx", boot.version, rc);
    info("xen_version", "%ld.%ld", rc >> 16, rc & 0xffff);
    rc = HYPERVISOR_xen_version(XENVER_version, BAD_PTR);
    check_eq("version.version_ignores_arg", rc, boot.version);

    /* extraversion: 16 bytes copied, NUL-terminated. */
    memset(buf, CANARY, sizeof(buf));
    rc = HYPERVISOR_xen_version(XENVER_extraversion, buf);
    check_eq("version.extraversion", rc, 0);
    check("version.extraversion_terminated", terminated((char *)buf, XEN_EXTRAVERSION_LEN),
          "no NUL within %d bytes", (int)XEN_EXTRAVERSION_LEN);
    check("version.extraversion_size", untouched(buf + XEN_EXTRAVERSION_LEN, 16),
          "bytes written past the %d-byte xen_extraversion_t", (int)XEN_EXTRAVERSION_LEN);
    info("extraversion", "%.16s", (char *)buf);

    /* compile_info */
    memset(buf, CANARY, sizeof(buf));
    xen_compile_info_t *ci = (void *)buf;
    rc = HYPERVISOR_xen_version(XENVER_compile_info, ci);
    check_eq("version.compile_info", rc, 0);
    check("version.compile_info_terminated",
          terminated(ci->compiler, 64) && terminated(ci->compile_by, 16) &&
          terminated(ci->compile_domain, 32) && terminated(ci->compile_date, 32),
          "a field is not NUL-terminated");
    check("version.compile_info_size", untouched(buf + sizeof(*ci), 16),
          "bytes written past xen_compile_info_t");
    info("compiler", "%.64s", ci->compiler);
    info("compile_by", "%.16s", ci->compile_by);
    info("compile_domain", "%.32s", ci->compile_domain);
    info("compile_date", "%.32s", ci->compile_date);

    /* capabilities */
    memset(buf, CANARY, sizeof(buf));
    rc = HYPERVISOR_xen_version(XENVER_capabilities, buf);
    check_eq("version.capabilities", rc, 0);
    bool has_hvm64 = false;
    for (const char *p = (char *)buf; terminated((char *)buf, 1024) && *p; p++)
        if (strncmp(p, "hvm-3.0-x86_64", 14) == 0)
            has_hvm64 = true;
    check("version.capabilities_hvm64", has_hvm64, "\"hvm-3.0-x86_64\" missing from \"%.200s\"",
          (char *)buf);
    check("version.capabilities_size", untouched(buf + XEN_CAPABILITIES_INFO_LEN, 16),
          "bytes written past the 1024-byte xen_capabilities_info_t");
    info("capabilities", "%.1024s", (char *)buf);

    /* changeset */
    memset(buf, CANARY, sizeof(buf));
    rc = HYPERVISOR_xen_version(XENVER_changeset, buf);
    check_eq("version.changeset", rc, 0);
    check("version.changeset_terminated", terminated((char *)buf, 64), "no NUL within 64 bytes");
    check("version.changeset_size", untouched(buf + 64, 16), "bytes written past 64");
    info("changeset", "%.64s", (char *)buf);

    /* platform_parameters: HYPERVISOR_VIRT_START of the 64-bit ABI. */
    xen_platform_parameters_t pp = { 0 };
    rc = HYPERVISOR_xen_version(XENVER_platform_parameters, &pp);
    check_eq("version.platform_parameters", rc, 0);
    check("version.platform_parameters_virt_start", pp.virt_start == 0xffff800000000000UL,
          "expected 0xffff800000000000 got %#lx", (unsigned long)pp.virt_start);
    info("virt_start", "%#lx", (unsigned long)pp.virt_start);

    /* get_features, submap 0: what 4.17 sets for a translated HVM guest. */
    xen_feature_info_t fi = { .submap_idx = 0 };
    rc = HYPERVISOR_xen_version(XENVER_get_features, &fi);
    check_eq("version.get_features", rc, 0);
    uint32_t want = (1u << XENFEAT_writable_page_tables) |
                    (1u << XENFEAT_auto_translated_physmap) |
                    (1u << XENFEAT_hvm_callback_vector) |
                    (1u << XENFEAT_hvm_safe_pvclock) |
                    (1u << XENFEAT_memory_op_vnode_supported) |
                    (1u << XENFEAT_not_direct_mapped);
    if (boot.dom0)
        want |= 1u << XENFEAT_dom0;
    check("version.get_features_submap0", fi.submap == want,
          "expected %#x got %#x", want, fi.submap);
    check("version.get_features_dom0_bit", !!(fi.submap & (1u << XENFEAT_dom0)) == boot.dom0,
          "XENFEAT_dom0 is %s but SIF_INITDOMAIN is %s",
          fi.submap & (1u << XENFEAT_dom0) ? "set" : "clear", boot.dom0 ? "set" : "clear");
    info("features", "%#x", fi.submap);
    fi.submap_idx = 1;
    check_eq("version.get_features_submap1", HYPERVISOR_xen_version(XENVER_get_features, &fi), EINVAL_);
    fi.submap_idx = 0xffffffff;
    check_eq("version.get_features_submap_huge", HYPERVISOR_xen_version(XENVER_get_features, &fi), EINVAL_);

    /* pagesize: NULL handle -> PAGE_SIZE; any other handle -> -EINVAL. */
    check_eq("version.pagesize", HYPERVISOR_xen_version(XENVER_pagesize, NULL), 4096);
    check_eq("version.pagesize_nonnull", HYPERVISOR_xen_version(XENVER_pagesize, buf), EINVAL_);

    /* guest_handle: the 16-byte domain handle (UUID). */
    memset(buf, CANARY, sizeof(buf));
    rc = HYPERVISOR_xen_version(XENVER_guest_handle, buf);
    check_eq("version.guest_handle", rc, 0);
    check("version.guest_handle_size", untouched(buf + 16, 16), "bytes written past 16");
    info("guest_handle", "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
         buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7], buf[8], buf[9],
         buf[10], buf[11], buf[12], buf[13], buf[14], buf[15]);

    /* commandline: denied for a domU -> "<denied>" (9 bytes incl. NUL). */
    memset(buf, CANARY, sizeof(buf));
    rc = HYPERVISOR_xen_version(XENVER_commandline, buf);
    check_eq("version.commandline", rc, 0);
    if (!boot.dom0) {
        check("version.commandline_denied", memcmp(buf, "<denied>", 9) == 0,
              "expected \"<denied>\" got \"%.32s\"", (char *)buf);
        check("version.commandline_denied_size", untouched(buf + 9, 16),
              "more than strlen(\"<denied>\")+1 bytes written");
    } else {
        check("version.commandline_terminated", terminated((char *)buf, 1024), "no NUL in 1024");
        info("xen_commandline", "%.1024s", (char *)buf);
    }

    /* build_id: -EPERM for a domU, whatever the argument. */
    if (!boot.dom0) {
        check_eq("version.build_id_denied_null", HYPERVISOR_xen_version(XENVER_build_id, NULL), EPERM_);
        xen_build_id_t *bid = (void *)buf;
        bid->len = 1024 - sizeof(*bid);
        check_eq("version.build_id_denied", HYPERVISOR_xen_version(XENVER_build_id, bid), EPERM_);
        check_eq("version.build_id_denied_badptr", HYPERVISOR_xen_version(XENVER_build_id, BAD_PTR), EPERM_);
    } else {
        rc = HYPERVISOR_xen_version(XENVER_build_id, NULL);
        info("build_id_size", "%ld", rc);
        xen_build_id_t *bid = (void *)buf;
        bid->len = 0;
        check_eq("version.build_id_len0", HYPERVISOR_xen_version(XENVER_build_id, bid), EINVAL_);
    }

    /* Unknown sub-ops. */
    check_eq("version.unknown_11", HYPERVISOR_xen_version(11, buf), ENOSYS_);
    check_eq("version.unknown_64", HYPERVISOR_xen_version(64, buf), ENOSYS_);
    check_eq("version.unknown_negative", HYPERVISOR_xen_version(-1, buf), ENOSYS_);

    /* Bad pointers: every sub-op that copies to/from the guest. */
    static const struct { int cmd; const char *name; } bad[] = {
        { XENVER_extraversion, "version.badptr_extraversion" },
        { XENVER_compile_info, "version.badptr_compile_info" },
        { XENVER_capabilities, "version.badptr_capabilities" },
        { XENVER_changeset, "version.badptr_changeset" },
        { XENVER_platform_parameters, "version.badptr_platform_parameters" },
        { XENVER_get_features, "version.badptr_get_features" },
        { XENVER_guest_handle, "version.badptr_guest_handle" },
        { XENVER_commandline, "version.badptr_commandline" },
    };
    for (unsigned i = 0; i < ARRAY_SIZE(bad); i++)
        check_eq(bad[i].name, HYPERVISOR_xen_version(bad[i].cmd, BAD_PTR), EFAULT_);
    check_eq("version.badptr_pagesize", HYPERVISOR_xen_version(XENVER_pagesize, BAD_PTR), EINVAL_);
    return 0;
}
