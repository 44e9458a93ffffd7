/*
 * privileged: the toolstack and platform hypercalls, as Xen 4.17 with its
 * default (dummy) XSM policy answers an HVM/PVH domain. Run as a domU and as
 * dom0 (SIF_INITDOMAIN); where the answers differ both are asserted.
 *
 * - sysctl (xen/common/sysctl.c), domctl (xen/common/domctl.c), platform_op
 *   (xen/arch/x86/platform_hypercall.c): the whole struct is copied in first
 *   (-EFAULT), then the interface version is checked (-EACCES), then XSM_PRIV
 *   (-EPERM for a domU). domctl looks its target domain up by id before the
 *   XSM check (-ESRCH; DOMID_SELF is not an id there), except getdomaininfo,
 *   which for a missing id means "the next domain from that id on" (4.17).
 *   As dom0: XEN_SYSCTL_physinfo, XEN_SYSCTL_getdomaininfolist and
 *   XEN_DOMCTL_getdomaininfo; unknown sub-op numbers are -ENOSYS.
 * - physdev_op (xen/arch/x86/hvm/hypercall.c hvm_physdev_op): the PIRQ sub-ops
 *   need XEN_X86_EMU_USE_PIRQ, which PVH never has, the PCI ones the hardware
 *   domain; every other sub-op is -ENOSYS. As dom0 the PCI ones read their
 *   argument (-EFAULT) and check the MMCONFIG flags (-EINVAL).
 * - mmuext_op (xen/arch/x86/mm.c do_mmuext_op): the continuation probe returns
 *   foreigndom; the ops are not range-checked for HVM; DOMID_SELF is an HVM
 *   page owner (-EINVAL); the caller's own id or a missing one is -ESRCH;
 *   DOMID_IO/DOMID_XEN are refused by XSM_TARGET (-EPERM) for a domU; for dom0
 *   an HVM caller may only pin/unpin (-EOPNOTSUPP) and a bad op is -EFAULT.
 * - xsm_op: the dummy policy has none (-ENOSYS). argo_op: not in a default
 *   build (CONFIG_ARGO is EXPERT-only: -ENOSYS).
 * - dm_op (xen/arch/x86/hvm/dm.c): more than 2 buffers -E2BIG, the buffer
 *   array is copied (-EFAULT), the target must be another existing domain
 *   (-ESRCH, itself -EPERM).
 * - hypfs_op (xen/common/hypfs.c): XSM_PRIV before anything (-EPERM); dom0's
 *   get_version is XEN_HYPFS_VERSION with all other arguments 0, else -EINVAL.
 * - xenpmu_op (xen/arch/x86/cpu/vpmu.c): vPMU off by default and every
 *   HVM/PVH domain has a vLAPIC: -EOPNOTSUPP before anything else.
 * A few calls are repeated from 32-bit compat mode.
 *
 * INFO keys: nr_cpus, total_pages, domains, dominfo_flags, dominfo_pages.
 */
#define __XEN_TOOLS__ 1
#include "guest.h"
#include <xen/sysctl.h>
#include <xen/domctl.h>
#include <xen/platform.h>
#include <xen/physdev.h>
#include <xen/hypfs.h>
#include <xen/pmu.h>
#include <xen/hvm/dm_op.h>

#define BAD32 0x70000000UL  /* unmapped, below 4 GiB: a bad pointer for compat calls */
#define NO_SUCH_CMD 9999
/* Xen-internal (xen/arch/x86/include/asm/mm.h): the top bit of a count marks
 * a continuation of a preempted mmu_update/mmuext_op. */
#define MMU_UPDATE_PREEMPTED (~(~0U >> 1))

static struct xen_sysctl sysctl;
static struct xen_domctl domctl;
static struct xen_platform_op platform;
static struct xen_domctl_getdomaininfo infos[4];
static uint8_t page[64];
static uint32_t done;

static bool dom0;

/* The expected result: `priv` for dom0, `unpriv` for a domU. */
static long as(long priv, long unpriv) { return dom0 ? priv : unpriv; }

static long do_sysctl(uint32_t cmd, uint32_t version)
{
    memset(&sysctl, 0, sizeof(sysctl));
    sysctl.cmd = cmd;
    sysctl.interface_version = version;
    return hypercall1(__HYPERVISOR_sysctl, &sysctl);
}

static long do_domctl(uint32_t cmd, uint32_t version, domid_t domid)
{
    memset(&domctl, 0, sizeof(domctl));
    domctl.cmd = cmd;
    domctl.interface_version = version;
    domctl.domain = domid;
    return hypercall1(__HYPERVISOR_domctl, &domctl);
}

static long do_platform(uint32_t cmd, uint32_t version)
{
    memset(&platform, 0, sizeof(platform));
    platform.cmd = cmd;
    platform.interface_version = version;
    return hypercall1(__HYPERVISOR_platform_op, &platform);
}

static void test_sysctl(void)
{
    const uint32_t v = XEN_SYSCTL_INTERFACE_VERSION;

    check_eq("privileged.sysctl_bad_pointer", hypercall1(__HYPERVISOR_sysctl, BAD_PTR), EFAULT_);
    check_eq("privileged.sysctl_old_version", do_sysctl(XEN_SYSCTL_physinfo, v - 1), EACCES_);
    check_eq("privileged.sysctl_new_version", do_sysctl(XEN_SYSCTL_physinfo, v + 1), EACCES_);
    check_eq("privileged.sysctl_unknown_cmd", do_sysctl(NO_SUCH_CMD, v), as(ENOSYS_, EPERM_));
    if (!dom0)
        check_eq("privileged.sysctl_readconsole", do_sysctl(XEN_SYSCTL_readconsole, v), EPERM_);

    long rc = do_sysctl(XEN_SYSCTL_physinfo, v);
    check_eq("privileged.sysctl_physinfo", rc, as(0, EPERM_));
    if (dom0 && rc == 0) {
        struct xen_sysctl_physinfo *pi = &sysctl.u.physinfo;
        check("privileged.physinfo_cpus", pi->nr_cpus >= 1 && pi->max_cpu_id == pi->nr_cpus - 1 &&
              pi->threads_per_core * pi->cores_per_socket >= 1,
              "nr_cpus %u max_cpu_id %u", pi->nr_cpus, pi->max_cpu_id);
        check("privileged.physinfo_memory", pi->total_pages > 0 && pi->free_pages <= pi->total_pages,
              "total %lu free %lu", (unsigned long)pi->total_pages, (unsigned long)pi->free_pages);
        check("privileged.physinfo_hvm", pi->capabilities & XEN_SYSCTL_PHYSCAP_hvm,
              "capabilities %#x", pi->capabilities);
        check_eq("privileged.physinfo_nodes", pi->nr_nodes, 1);
        info("nr_cpus", "%u", pi->nr_cpus);
        info("total_pages", "%lu", (unsigned long)pi->total_pages);
    }

    /* The domain list: every domain from first_domain on, up to max_domains. */
    memset(infos, 0x5a, sizeof(infos));
    memset(&sysctl, 0, sizeof(sysctl));
    sysctl.cmd = XEN_SYSCTL_getdomaininfolist;
    sysctl.interface_version = v;
    sysctl.u.getdomaininfolist.first_domain = 0;
    sysctl.u.getdomaininfolist.max_domains = 4;
    set_xen_guest_handle(sysctl.u.getdomaininfolist.buffer, infos);
    rc = hypercall1(__HYPERVISOR_sysctl, &sysctl);
    check_eq("privileged.sysctl_getdomaininfolist", rc, as(0, EPERM_));
    if (dom0 && rc == 0) {
        uint32_t n = sysctl.u.getdomaininfolist.num_domains;
        check("privileged.domainlist_self", n >= 1 && infos[0].domain == self_domid(),
              "num_domains %u, first domain %u (self %u)", n, infos[0].domain, self_domid());
        info("domains", "%u", n);
        sysctl.u.getdomaininfolist.first_domain = self_domid() + 1;
        check_eq("privileged.domainlist_after_self", hypercall1(__HYPERVISOR_sysctl, &sysctl), 0);
        check_eq("privileged.domainlist_after_self_count",
                 sysctl.u.getdomaininfolist.num_domains, n - 1);
        sysctl.u.getdomaininfolist.first_domain = 0;
        set_xen_guest_handle(sysctl.u.getdomaininfolist.buffer, BAD_PTR);
        check_eq("privileged.domainlist_bad_buffer", hypercall1(__HYPERVISOR_sysctl, &sysctl),
                 EFAULT_);
    }
}

static void test_domctl(void)
{
    const uint32_t v = XEN_DOMCTL_INTERFACE_VERSION;
    const domid_t self = self_domid();

    check_eq("privileged.domctl_bad_pointer", hypercall1(__HYPERVISOR_domctl, BAD_PTR), EFAULT_);
    check_eq("privileged.domctl_old_version", do_domctl(XEN_DOMCTL_getdomaininfo, v - 1, self),
             EACCES_);
    /* The domain is looked up before XSM: a missing one is -ESRCH for everyone. */
    check_eq("privileged.domctl_pause_missing", do_domctl(XEN_DOMCTL_pausedomain, v, NO_SUCH_DOMID),
             ESRCH_);
    check_eq("privileged.domctl_pause_domid_self",
             do_domctl(XEN_DOMCTL_pausedomain, v, DOMID_SELF), ESRCH_);
    check_eq("privileged.domctl_assign_invalid",
             do_domctl(XEN_DOMCTL_assign_device, v, DOMID_INVALID), ESRCH_);
    check_eq("privileged.domctl_unknown_cmd", do_domctl(NO_SUCH_CMD, v, self),
             as(ENOSYS_, EPERM_));
    if (!dom0) {
        check_eq("privileged.domctl_pause_self", do_domctl(XEN_DOMCTL_pausedomain, v, self), EPERM_);
        check_eq("privileged.domctl_createdomain", do_domctl(XEN_DOMCTL_createdomain, v, 0), EPERM_);
        check_eq("privileged.domctl_assign_dom_io",
                 do_domctl(XEN_DOMCTL_assign_device, v, DOMID_IO), EPERM_);
        check_eq("privileged.domctl_memory_mapping",
                 do_domctl(XEN_DOMCTL_memory_mapping, v, self), EPERM_);
    }

    /* getdomaininfo: a missing id is the next domain from there (after XSM). */
    check_eq("privileged.getdomaininfo_domid_self",
             do_domctl(XEN_DOMCTL_getdomaininfo, v, DOMID_SELF), as(EINVAL_, EPERM_));
    check_eq("privileged.getdomaininfo_none_after",
             do_domctl(XEN_DOMCTL_getdomaininfo, v, NO_SUCH_DOMID), as(ESRCH_, EPERM_));
    long rc = do_domctl(XEN_DOMCTL_getdomaininfo, v, self);
    check_eq("privileged.getdomaininfo_self", rc, as(0, EPERM_));
    if (dom0 && rc == 0) {
        struct xen_domctl_getdomaininfo *gi = &domctl.u.getdomaininfo;
        check("privileged.dominfo_domain", gi->domain == self && domctl.domain == self,
              "domain %u / %u, expected %u", gi->domain, domctl.domain, self);
        uint32_t want = XEN_DOMINF_hvm_guest | XEN_DOMINF_running;
        check("privileged.dominfo_flags", (gi->flags & want) == want &&
              !(gi->flags & (XEN_DOMINF_dying | XEN_DOMINF_shutdown | XEN_DOMINF_blocked)),
              "flags %#x", gi->flags);
        check("privileged.dominfo_vcpus", gi->nr_online_vcpus == 1 && gi->max_vcpu_id == 0,
              "online %u max_vcpu_id %u", gi->nr_online_vcpus, gi->max_vcpu_id);
        check("privileged.dominfo_pages", gi->tot_pages > 0 && gi->tot_pages <= gi->max_pages,
              "tot %lu max %lu", (unsigned long)gi->tot_pages, (unsigned long)gi->max_pages);
        info("dominfo_flags", "%#x", gi->flags);
        info("dominfo_pages", "%lu %lu", (unsigned long)gi->tot_pages,
             (unsigned long)gi->max_pages);
        /* Domain 0 names the first domain from 0 on. */
        check_eq("privileged.getdomaininfo_from_0", do_domctl(XEN_DOMCTL_getdomaininfo, v, 0), 0);
    }
}

static void test_platform_op(void)
{
    check_eq("privileged.platform_bad_pointer", hypercall1(__HYPERVISOR_platform_op, BAD_PTR),
             EFAULT_);
    check_eq("privileged.platform_old_version",
             do_platform(XENPF_get_cpuinfo, XENPF_INTERFACE_VERSION - 1), EACCES_);
    check_eq("privileged.platform_unknown_cmd", do_platform(NO_SUCH_CMD, XENPF_INTERFACE_VERSION),
             as(ENOSYS_, EPERM_));
    if (!dom0) {
        check_eq("privileged.platform_get_cpuinfo",
                 do_platform(XENPF_get_cpuinfo, XENPF_INTERFACE_VERSION), EPERM_);
        check_eq("privileged.platform_settime64",
                 do_platform(XENPF_settime64, XENPF_INTERFACE_VERSION), EPERM_);
    }
}

static void test_physdev(void)
{
    /* Filtered out for every PVH domain (no XEN_X86_EMU_USE_PIRQ), dom0 included. */
    static const int never[] = {
        PHYSDEVOP_map_pirq, PHYSDEVOP_unmap_pirq, PHYSDEVOP_eoi, PHYSDEVOP_irq_status_query,
        PHYSDEVOP_get_free_pirq, PHYSDEVOP_pirq_eoi_gmfn_v1, PHYSDEVOP_pirq_eoi_gmfn_v2,
        PHYSDEVOP_setup_gsi, PHYSDEVOP_set_iopl, PHYSDEVOP_set_iobitmap, PHYSDEVOP_apic_read,
        PHYSDEVOP_apic_write, PHYSDEVOP_alloc_irq_vector, PHYSDEVOP_manage_pci_add,
        PHYSDEVOP_restore_msi, PHYSDEVOP_restore_msi_ext, PHYSDEVOP_prepare_msix, NO_SUCH_CMD,
    };
    static const int hwdom[] = {
        PHYSDEVOP_pci_mmcfg_reserved, PHYSDEVOP_pci_device_add, PHYSDEVOP_pci_device_remove,
        PHYSDEVOP_dbgp_op,
    };
    char name[64];

    memset(page, 0, sizeof(page));
    for (unsigned i = 0; i < ARRAY_SIZE(never); i++) {
        snprintf(name, sizeof(name), "privileged.physdev_%d", never[i]);
        check_eq(name, hypercall2(__HYPERVISOR_physdev_op, never[i], page), ENOSYS_);
    }
    for (unsigned i = 0; i < ARRAY_SIZE(hwdom); i++) {
        snprintf(name, sizeof(name), "privileged.physdev_%d_bad_pointer", hwdom[i]);
        check_eq(name, hypercall2(__HYPERVISOR_physdev_op, hwdom[i], BAD_PTR), as(EFAULT_, ENOSYS_));
    }
    struct physdev_pci_mmcfg_reserved *mmcfg = (void *)page;
    mmcfg->flags = 2;  /* only XEN_PCI_MMCFG_RESERVED is defined */
    check_eq("privileged.physdev_mmcfg_bad_flags",
             hypercall2(__HYPERVISOR_physdev_op, PHYSDEVOP_pci_mmcfg_reserved, mmcfg),
             as(EINVAL_, ENOSYS_));
}

static void test_mmuext(void)
{
    static struct mmuext_op op;
    const unsigned self = self_domid();

    /* The continuation probe: the "foreigndom" argument comes back. */
    check_eq("privileged.mmuext_preempted_probe",
             hypercall5(__HYPERVISOR_mmuext_op, 0, MMU_UPDATE_PREEMPTED, 0, 1234, 0), 1234);
    op.cmd = MMUEXT_TLB_FLUSH_LOCAL;
    check_eq("privileged.mmuext_domid_self",
             hypercall5(__HYPERVISOR_mmuext_op, (unsigned long)&op, 1, 0, DOMID_SELF, 0), EINVAL_);
    check_eq("privileged.mmuext_bad_ops_unchecked",
             hypercall5(__HYPERVISOR_mmuext_op, (unsigned long)BAD_PTR, 1, 0, DOMID_SELF, 0),
             EINVAL_);
    check_eq("privileged.mmuext_zero_ops",
             hypercall5(__HYPERVISOR_mmuext_op, (unsigned long)&op, 0, 0, DOMID_SELF, 0), EINVAL_);
    check_eq("privileged.mmuext_own_id",
             hypercall5(__HYPERVISOR_mmuext_op, (unsigned long)&op, 1, 0, self, 0), ESRCH_);
    check_eq("privileged.mmuext_missing_domain",
             hypercall5(__HYPERVISOR_mmuext_op, (unsigned long)&op, 1, 0, NO_SUCH_DOMID, 0), ESRCH_);
    done = 77;
    check_eq("privileged.mmuext_dom_io",
             hypercall5(__HYPERVISOR_mmuext_op, (unsigned long)&op, 1, (unsigned long)&done,
                        DOMID_IO, 0), as(EOPNOTSUPP_, EPERM_));
    check_eq("privileged.mmuext_dom_io_done", done, as(0, 77));
    check_eq("privileged.mmuext_dom_xen_bad_ops",
             hypercall5(__HYPERVISOR_mmuext_op, (unsigned long)BAD_PTR, 1, 0, DOMID_XEN, 0),
             as(EFAULT_, EPERM_));
}

static void test_dm_op(void)
{
    static struct xen_dm_op_buf bufs[3];
    const unsigned self = self_domid();

    bufs[0].size = 0;
    check_eq("privileged.dm_op_too_many_bufs",
             hypercall3(__HYPERVISOR_dm_op, self, 3, bufs), E2BIG_);
    check_eq("privileged.dm_op_bad_bufs", hypercall3(__HYPERVISOR_dm_op, self, 1, BAD_PTR), EFAULT_);
    check_eq("privileged.dm_op_no_bufs_not_read",
             hypercall3(__HYPERVISOR_dm_op, self, 0, BAD_PTR), EPERM_);
    check_eq("privileged.dm_op_self", hypercall3(__HYPERVISOR_dm_op, self, 1, bufs), EPERM_);
    check_eq("privileged.dm_op_domid_self",
             hypercall3(__HYPERVISOR_dm_op, DOMID_SELF, 1, bufs), ESRCH_);
    check_eq("privileged.dm_op_missing",
             hypercall3(__HYPERVISOR_dm_op, NO_SUCH_DOMID, 1, bufs), ESRCH_);
}

static void test_misc(void)
{
    check_eq("privileged.xsm_op", hypercall1(__HYPERVISOR_xsm_op, page), ENOSYS_);
    check_eq("privileged.xsm_op_bad_pointer", hypercall1(__HYPERVISOR_xsm_op, BAD_PTR), ENOSYS_);
    check_eq("privileged.argo_op", hypercall5(__HYPERVISOR_argo_op, 0, 0, 0, 0, 0), ENOSYS_);

    check_eq("privileged.hypfs_get_version",
             hypercall5(__HYPERVISOR_hypfs_op, XEN_HYPFS_OP_get_version, 0, 0, 0, 0),
             as(XEN_HYPFS_VERSION, EPERM_));
    check_eq("privileged.hypfs_get_version_args",
             hypercall5(__HYPERVISOR_hypfs_op, XEN_HYPFS_OP_get_version, 0, 1, 0, 0),
             as(EINVAL_, EPERM_));
    if (!dom0) {
        check_eq("privileged.hypfs_read",
                 hypercall5(__HYPERVISOR_hypfs_op, XEN_HYPFS_OP_read, (unsigned long)"/", 2,
                            (unsigned long)page, sizeof(page)), EPERM_);
        check_eq("privileged.hypfs_unknown_cmd",
                 hypercall5(__HYPERVISOR_hypfs_op, 99, 0, 0, 0, 0), EPERM_);
    }

    static struct xen_pmu_params pmu = { .version = { .maj = XENPMU_VER_MAJ } };
    check_eq("privileged.xenpmu_mode_get", hypercall2(__HYPERVISOR_xenpmu_op, XENPMU_mode_get, &pmu),
             EOPNOTSUPP_);
    check_eq("privileged.xenpmu_init_bad_pointer",
             hypercall2(__HYPERVISOR_xenpmu_op, XENPMU_init, BAD_PTR), EOPNOTSUPP_);
    check_eq("privileged.xenpmu_unknown", hypercall2(__HYPERVISOR_xenpmu_op, 99, 0), EOPNOTSUPP_);
}

/* The same checks from 32-bit code: the layouts of these structs do not change. */
static void test_compat(void)
{
    do_sysctl(XEN_SYSCTL_physinfo, XEN_SYSCTL_INTERFACE_VERSION - 1);
    check_eq("privileged.compat_sysctl_old_version",
             compat_hypercall(__HYPERVISOR_sysctl, (unsigned long)&sysctl, 0, 0, 0, 0), EACCES_);
    check_eq("privileged.compat_sysctl_bad_pointer",
             compat_hypercall(__HYPERVISOR_sysctl, BAD32, 0, 0, 0, 0), EFAULT_);
    check_eq("privileged.compat_physdev_map_pirq",
             compat_hypercall(__HYPERVISOR_physdev_op, PHYSDEVOP_map_pirq, (unsigned long)page,
                              0, 0, 0), ENOSYS_);
    check_eq("privileged.compat_dm_op_too_many_bufs",
             compat_hypercall(__HYPERVISOR_dm_op, self_domid(), 3, (unsigned long)page, 0, 0),
             E2BIG_);
    check_eq("privileged.compat_dm_op_bad_bufs",
             compat_hypercall(__HYPERVISOR_dm_op, self_domid(), 2, BAD32, 0, 0), EFAULT_);
}

int guest_main(void)
{
    dom0 = boot.dom0;
    test_sysctl();
    test_domctl();
    test_platform_op();
    test_physdev();
    test_mmuext();
    test_dm_op();
    test_misc();
    test_compat();
    return 0;
}
