/*
 * grant_table: __HYPERVISOR_grant_table_op (xen/common/grant_table.c,
 * xen/arch/x86/hvm/hypercall.c hvm_grant_table_op) for an HVM domU, v1 by
 * default, v2 with the cmdline word `version=2`.
 *
 * Semantics relied on (Xen 4.17):
 *  - HVM guests reach only query_size, setup_table, set_version, get_version,
 *    copy, map/unmap_grant_ref and swap_grant_ref; every other sub-op (and any
 *    cmd with continuation bits) is -ENOSYS. count >= 2^31 is -EINVAL.
 *  - setup_table/query_size: count != 1 -EINVAL; bad op pointer -EFAULT;
 *    per-op problems are in op.status with rc 0 (bad domain, more frames than
 *    max_grant_frames, unwritable frame_list -> GNTST_bad_virt_addr). The
 *    frame list holds each frame's gfn, or ~0 for a frame not in the physmap.
 *  - set_version: 1 or 2 else -EINVAL; version written back; -EBUSY while a
 *    grant above the 8 reserved ones is in use; v2->v1 keeps the reserved
 *    entries and clears the rest; status frames only in v2.
 *  - copy: per-op status; frame (gmfn) operands need DOMID_SELF
 *    (GNTST_permission_denied), grants are checked before bounds
 *    (offset+len > 4096 -> GNTST_bad_copy_arg), sub-page grants bound the
 *    copy (GNTST_general_error), r/o grants cannot be written.
 *  - map_grant_ref: no host/device flag -> GNTST_bad_gntref; device_map from
 *    HVM -> GNTST_general_error; DOMID_SELF/no domain -> GNTST_bad_domain.
 *    A granted page (here our own grant) maps at guest-physical host_addr: the
 *    same page at both frames; GTF_reading|GTF_writing stay set until the
 *    last mapping goes; a frame already holding a grant mapping is refused.
 *  - unmap_grant_ref: unknown handle GNTST_bad_handle; wrong host_addr or
 *    dev_bus_addr GNTST_general_error; host_addr 0 does nothing (okay).
 *  - GNTMAP_host_map|GNTMAP_readonly maps the page read-only (p2m_grant_map_ro):
 *    only GTF_reading is set; a GTF_readonly grant without GNTMAP_readonly is
 *    GNTST_general_error. A write there is not a fault: p2m_grant_map_ro is a
 *    write-discard type, so hvm_hap_nested_page_fault hands it to the emulator,
 *    which drops the store and retires the instruction; the page is unchanged.
 *
 * With `backend` on the cmdline a page is granted to dom0; the host maps it
 * (INFO backend_ref) and answers; the guest checks the flags while mapped,
 * that set_version is -EBUSY then, and that the flags clear after unmap.
 *
 * `bench=N` only times N batched copies (benchmarks/grant.py).
 *
 * INFO keys: nr_frames, max_nr_frames, backend_ref, backend_pattern,
 * bench_copy_bytes, bench_copy_ns.
 */
#include "guest.h"

#define REF_A 10
#define REF_B 11
#define REF_RO 12
#define REF_BACKEND 20

static uint8_t frames[4][4096] ALIGNED(4096);
static uint8_t status_page[4096] ALIGNED(4096);
static uint8_t src[4096] ALIGNED(4096);
static uint8_t dst[4096] ALIGNED(4096);
static uint8_t backend_page[4096] ALIGNED(4096);
static uint64_t frame_list[8];

static unsigned version;

static inline uint64_t pfn(const void *p) { return (uint64_t)(uintptr_t)p >> PAGE_SHIFT; }

static grant_entry_v1_t *v1 = (grant_entry_v1_t *)frames;
static grant_entry_v2_t *v2 = (grant_entry_v2_t *)frames;
static volatile grant_status_t *st = (grant_status_t *)status_page;

static long xatp(unsigned long idx, xen_pfn_t gpfn)
{
    struct xen_add_to_physmap a = { .domid = DOMID_SELF, .space = XENMAPSPACE_grant_table,
                                    .idx = idx, .gpfn = gpfn };
    return HYPERVISOR_memory_op(XENMEM_add_to_physmap, &a);
}

/* Switch versions; in v2 the status frame goes back into our physmap (Xen removes it
 * when the table leaves v2). */
static long use_version(unsigned v)
{
    struct gnttab_set_version sv = { .version = v };
    long rc = HYPERVISOR_grant_table_op(GNTTABOP_set_version, &sv, 1);
    if (rc == 0) {
        version = v;
        if (v == 2)
            rc = xatp(XENMAPIDX_grant_table_status | 0, pfn(status_page));
    }
    return rc;
}

/* Access guest-physical page `gfn` through an alias mapping. */
static volatile uint64_t *phys_page(uint64_t gfn)
{
    uint64_t va = ALIAS_BASE + 0x200000;
    if (map_4k(va, gfn << PAGE_SHIFT, PTE_P | PTE_W))
        return NULL;
    return (volatile uint64_t *)va;
}

static uint16_t self_id(void) { return boot.domid_present ? boot.domid : 0; }

static void grant(unsigned ref, uint16_t domid, const void *page, uint16_t flags)
{
    if (version == 1) {
        v1[ref].domid = domid;
        v1[ref].frame = pfn(page);
        barrier();
        v1[ref].flags = flags;
    } else {
        v2[ref].full_page.frame = pfn(page);
        v2[ref].hdr.domid = domid;
        barrier();
        v2[ref].hdr.flags = flags;
    }
}

static uint16_t busy_flags(unsigned ref)
{
    if (version == 1)
        return *(volatile uint16_t *)&v1[ref].flags & (GTF_reading | GTF_writing);
    return st[ref] & (GTF_reading | GTF_writing);
}

static int16_t copy1(unsigned flags, uint64_t s, uint16_t sdom, uint16_t soff,
                     uint64_t d, uint16_t ddom, uint16_t doff, uint16_t len)
{
    struct gnttab_copy op = { .len = len, .flags = flags };
    op.source.domid = sdom; op.source.offset = soff;
    op.dest.domid = ddom; op.dest.offset = doff;
    if (flags & GNTCOPY_source_gref) op.source.u.ref = s; else op.source.u.gmfn = s;
    if (flags & GNTCOPY_dest_gref) op.dest.u.ref = d; else op.dest.u.gmfn = d;
    op.status = 99;
    long rc = HYPERVISOR_grant_table_op(GNTTABOP_copy, &op, 1);
    return rc ? (int16_t)-1000 : op.status;
}

static void test_sizes(void)
{
    struct gnttab_query_size q = { .dom = DOMID_SELF };
    check_eq("gnttab.query_size", HYPERVISOR_grant_table_op(GNTTABOP_query_size, &q, 1), 0);
    check_eq("gnttab.query_size_status", q.status, GNTST_okay);
    check_eq("gnttab.query_size_initial_frames", q.nr_frames, 1);
    check("gnttab.query_size_max", q.max_nr_frames >= 4, "max %u", q.max_nr_frames);
    info("max_nr_frames", "%u", q.max_nr_frames);
    struct gnttab_query_size bad = { .dom = NO_SUCH_DOMID };
    HYPERVISOR_grant_table_op(GNTTABOP_query_size, &bad, 1);
    check_eq("gnttab.query_size_bad_domain", bad.status, GNTST_bad_domain);
    check_eq("gnttab.query_size_count2", HYPERVISOR_grant_table_op(GNTTABOP_query_size, &q, 2), EINVAL_);
    check_eq("gnttab.query_size_badptr", HYPERVISOR_grant_table_op(GNTTABOP_query_size, BAD_PTR, 1), EFAULT_);

    /* Frame 0 is not in the physmap yet: ~0. */
    struct gnttab_setup_table s = { .dom = DOMID_SELF, .nr_frames = 1 };
    frame_list[0] = 0;
    set_xen_guest_handle(s.frame_list, frame_list);
    check_eq("gnttab.setup_table", HYPERVISOR_grant_table_op(GNTTABOP_setup_table, &s, 1), 0);
    check_eq("gnttab.setup_table_status", s.status, GNTST_okay);
    check("gnttab.setup_table_unmapped_frame", frame_list[0] == ~0ULL, "got %#lx",
          (unsigned long)frame_list[0]);

    check_eq("gnttab.map_frame0", xatp(0, pfn(frames[0])), 0);
    check_eq("gnttab.map_frame1", xatp(1, pfn(frames[1])), 0);
    s.nr_frames = 3;
    HYPERVISOR_grant_table_op(GNTTABOP_setup_table, &s, 1);
    check("gnttab.setup_table_gfns", s.status == GNTST_okay && frame_list[0] == pfn(frames[0]) &&
          frame_list[1] == pfn(frames[1]) && frame_list[2] == ~0ULL,
          "status %d frames %#lx %#lx %#lx", s.status, (unsigned long)frame_list[0],
          (unsigned long)frame_list[1], (unsigned long)frame_list[2]);
    HYPERVISOR_grant_table_op(GNTTABOP_query_size, &q, 1);
    check_eq("gnttab.setup_table_grows", q.nr_frames, 3);
    info("nr_frames", "%u", q.nr_frames);

    s.nr_frames = q.max_nr_frames + 1;
    HYPERVISOR_grant_table_op(GNTTABOP_setup_table, &s, 1);
    check_eq("gnttab.setup_table_too_many", s.status, GNTST_general_error);
    s.nr_frames = 1;
    set_xen_guest_handle(s.frame_list, BAD_PTR);
    check_eq("gnttab.setup_table_bad_list_rc", HYPERVISOR_grant_table_op(GNTTABOP_setup_table, &s, 1), 0);
    check_eq("gnttab.setup_table_bad_list", s.status, GNTST_bad_virt_addr);
    s.dom = NO_SUCH_DOMID;
    HYPERVISOR_grant_table_op(GNTTABOP_setup_table, &s, 1);
    check_eq("gnttab.setup_table_bad_domain", s.status, GNTST_bad_domain);
    check_eq("gnttab.setup_table_count0", HYPERVISOR_grant_table_op(GNTTABOP_setup_table, &s, 0), EINVAL_);
    check_eq("gnttab.setup_table_badptr", HYPERVISOR_grant_table_op(GNTTABOP_setup_table, BAD_PTR, 1), EFAULT_);
    check_eq("gnttab.map_frame_beyond_max", xatp(q.max_nr_frames, pfn(frames[3])), EINVAL_);
}

static void test_versions(void)
{
    struct gnttab_get_version g = { .dom = DOMID_SELF };
    check_eq("gnttab.get_version", HYPERVISOR_grant_table_op(GNTTABOP_get_version, &g, 1), 0);
    check_eq("gnttab.get_version_v1", g.version, 1);
    g.dom = NO_SUCH_DOMID;
    check_eq("gnttab.get_version_bad_domain", HYPERVISOR_grant_table_op(GNTTABOP_get_version, &g, 1), ESRCH_);
    check_eq("gnttab.get_version_badptr", HYPERVISOR_grant_table_op(GNTTABOP_get_version, BAD_PTR, 1), EFAULT_);
    struct gnttab_set_version sv = { .version = 3 };
    check_eq("gnttab.set_version_3", HYPERVISOR_grant_table_op(GNTTABOP_set_version, &sv, 1), EINVAL_);
    check_eq("gnttab.set_version_3_writes_back", sv.version, 1);
    sv.version = 1;
    check_eq("gnttab.set_version_same", HYPERVISOR_grant_table_op(GNTTABOP_set_version, &sv, 1), 0);
    check_eq("gnttab.set_version_badptr", HYPERVISOR_grant_table_op(GNTTABOP_set_version, BAD_PTR, 1), EFAULT_);
    check_eq("gnttab.status_frame_in_v1", xatp(XENMAPIDX_grant_table_status | 0, pfn(status_page)), EINVAL_);
}

static void test_unknown(void)
{
    static const unsigned hidden[] = { GNTTABOP_dump_table, GNTTABOP_transfer,
        GNTTABOP_unmap_and_replace, GNTTABOP_get_status_frames, GNTTABOP_cache_flush, 13 };
    bool ok = true;
    for (unsigned i = 0; i < ARRAY_SIZE(hidden); i++)
        ok &= HYPERVISOR_grant_table_op(hidden[i], NULL, 1) == ENOSYS_;
    check("gnttab.hvm_hidden_subops_enosys", ok, "a sub-op HVM guests cannot use did not give -ENOSYS");
    struct gnttab_query_size q = { .dom = DOMID_SELF };
    check_eq("gnttab.continuation_bits", HYPERVISOR_grant_table_op(GNTTABOP_query_size | (1 << 12), &q, 1), ENOSYS_);
    check_eq("gnttab.count_negative", HYPERVISOR_grant_table_op(GNTTABOP_copy, dst, 0x80000000u), EINVAL_);
    check_eq("gnttab.copy_count0", HYPERVISOR_grant_table_op(GNTTABOP_copy, BAD_PTR, 0), 0);
    check_eq("gnttab.copy_badptr", HYPERVISOR_grant_table_op(GNTTABOP_copy, BAD_PTR, 1), EFAULT_);
}

static void test_copy(void)
{
    uint16_t me = self_id();
    for (unsigned i = 0; i < 4096; i++)
        src[i] = (uint8_t)(i * 7 + 3);
    memset(dst, 0, sizeof(dst));
    grant(REF_A, me, src, GTF_permit_access);
    grant(REF_B, me, dst, GTF_permit_access);
    grant(REF_RO, me, dst, GTF_permit_access | GTF_readonly);

    check_eq("gnttab.copy_gref_to_frame",
             copy1(GNTCOPY_source_gref, REF_A, DOMID_SELF, 0, pfn(dst), DOMID_SELF, 0, 4096), GNTST_okay);
    check("gnttab.copy_data", memcmp(src, dst, 4096) == 0, "destination differs");
    check_eq("gnttab.copy_flags_released", busy_flags(REF_A), 0);
    memset(dst, 0, sizeof(dst));
    check_eq("gnttab.copy_frame_to_gref",
             copy1(GNTCOPY_dest_gref, pfn(src), DOMID_SELF, 100, REF_B, DOMID_SELF, 200, 300), GNTST_okay);
    check("gnttab.copy_offsets", memcmp(src + 100, dst + 200, 300) == 0 && dst[199] == 0 && dst[500] == 0,
          "bytes landed in the wrong place");
    check_eq("gnttab.copy_own_domid", copy1(GNTCOPY_source_gref | GNTCOPY_dest_gref, REF_A, me, 0,
                                            REF_B, me, 0, 8), GNTST_okay);
    check_eq("gnttab.copy_readonly_dest",
             copy1(GNTCOPY_dest_gref, pfn(src), DOMID_SELF, 0, REF_RO, DOMID_SELF, 0, 8), GNTST_general_error);
    check_eq("gnttab.copy_readonly_source",
             copy1(GNTCOPY_source_gref, REF_RO, DOMID_SELF, 0, pfn(src), DOMID_SELF, 0, 8), GNTST_okay);
    check_eq("gnttab.copy_beyond_page",
             copy1(GNTCOPY_source_gref, REF_A, DOMID_SELF, 4000, pfn(dst), DOMID_SELF, 0, 200), GNTST_bad_copy_arg);
    check_eq("gnttab.copy_dest_beyond_page",
             copy1(0, pfn(src), DOMID_SELF, 0, pfn(dst), DOMID_SELF, 4095, 2), GNTST_bad_copy_arg);
    check_eq("gnttab.copy_bad_ref_before_bounds",
             copy1(GNTCOPY_source_gref, 100000, DOMID_SELF, 4000, pfn(dst), DOMID_SELF, 0, 200), GNTST_bad_gntref);
    check_eq("gnttab.copy_frame_needs_self",
             copy1(0, pfn(src), me, 0, pfn(dst), DOMID_SELF, 0, 8), GNTST_permission_denied);
    check_eq("gnttab.copy_bad_domain",
             copy1(GNTCOPY_source_gref, REF_A, NO_SUCH_DOMID, 0, pfn(dst), DOMID_SELF, 0, 8), GNTST_bad_domain);
    check_eq("gnttab.copy_not_granted",
             copy1(GNTCOPY_source_gref, 30, DOMID_SELF, 0, pfn(dst), DOMID_SELF, 0, 8), GNTST_general_error);
    grant(31, me ? 0 : 1, src, GTF_permit_access);  /* granted to another domain */
    check_eq("gnttab.copy_other_grantee",
             copy1(GNTCOPY_source_gref, 31, DOMID_SELF, 0, pfn(dst), DOMID_SELF, 0, 8), GNTST_general_error);
    check_eq("gnttab.copy_bad_frame",
             copy1(0, 0xfffffffULL, DOMID_SELF, 0, pfn(dst), DOMID_SELF, 0, 8), GNTST_bad_page);

    /* A batch: per-op statuses, the good ones done. */
    static struct gnttab_copy batch[3];
    memset(batch, 0, sizeof(batch));
    for (unsigned i = 0; i < 3; i++) {
        batch[i].flags = GNTCOPY_source_gref;
        batch[i].source.u.ref = REF_A; batch[i].source.domid = DOMID_SELF;
        batch[i].dest.u.gmfn = pfn(dst); batch[i].dest.domid = DOMID_SELF;
        batch[i].source.offset = batch[i].dest.offset = i * 1024;
        batch[i].len = 1024;
    }
    batch[1].len = 4000;
    memset(dst, 0, sizeof(dst));
    check_eq("gnttab.copy_batch_rc", HYPERVISOR_grant_table_op(GNTTABOP_copy, batch, 3), 0);
    check("gnttab.copy_batch_status", batch[0].status == GNTST_okay &&
          batch[1].status == GNTST_bad_copy_arg && batch[2].status == GNTST_okay,
          "statuses %d %d %d", batch[0].status, batch[1].status, batch[2].status);
    check("gnttab.copy_batch_data", memcmp(dst, src, 1024) == 0 && dst[1024] == 0 &&
          memcmp(dst + 2048, src + 2048, 1024) == 0, "batch data wrong");
    check_eq("gnttab.copy_batch_badptr_tail", HYPERVISOR_grant_table_op(GNTTABOP_copy, BAD_PTR, 3), EFAULT_);
}

static void test_map_swap(void)
{
    uint16_t me = self_id();
    struct gnttab_map_grant_ref m = { .host_addr = pfn(dst) << PAGE_SHIFT, .flags = 0,
                                      .ref = REF_A, .dom = me };
    HYPERVISOR_grant_table_op(GNTTABOP_map_grant_ref, &m, 1);
    check_eq("gnttab.map_no_flags", m.status, GNTST_bad_gntref);
    m.flags = GNTMAP_device_map | GNTMAP_host_map;
    HYPERVISOR_grant_table_op(GNTTABOP_map_grant_ref, &m, 1);
    check_eq("gnttab.map_device_hvm", m.status, GNTST_general_error);
    m.flags = GNTMAP_host_map;
    m.dom = NO_SUCH_DOMID;
    HYPERVISOR_grant_table_op(GNTTABOP_map_grant_ref, &m, 1);
    check_eq("gnttab.map_bad_domain", m.status, GNTST_bad_domain);
    m.dom = DOMID_SELF;
    HYPERVISOR_grant_table_op(GNTTABOP_map_grant_ref, &m, 1);
    check_eq("gnttab.map_domid_self", m.status, GNTST_bad_domain);
    check_eq("gnttab.map_badptr", HYPERVISOR_grant_table_op(GNTTABOP_map_grant_ref, BAD_PTR, 1), EFAULT_);
    struct gnttab_unmap_grant_ref u = { .host_addr = pfn(dst) << PAGE_SHIFT, .handle = 12345 };
    HYPERVISOR_grant_table_op(GNTTABOP_unmap_grant_ref, &u, 1);
    check_eq("gnttab.unmap_bad_handle", u.status, GNTST_bad_handle);

    /* Our own grant mapped at a free frame above RAM: the same page at two frames. */
    uint64_t hole = (boot.ram_top >> PAGE_SHIFT) + 64;
    struct gnttab_map_grant_ref mm[2] = {
        { .host_addr = hole << PAGE_SHIFT, .flags = GNTMAP_host_map, .ref = REF_A, .dom = me },
        { .host_addr = (hole + 1) << PAGE_SHIFT, .flags = GNTMAP_host_map, .ref = REF_A, .dom = me },
    };
    check_eq("gnttab.map_batch_rc", HYPERVISOR_grant_table_op(GNTTABOP_map_grant_ref, mm, 2), 0);
    if (!check("gnttab.map_own_grant", mm[0].status == GNTST_okay && mm[1].status == GNTST_okay &&
               mm[0].handle != mm[1].handle, "statuses %d %d handles %u %u", mm[0].status,
               mm[1].status, mm[0].handle, mm[1].handle))
        return;
    check_eq("gnttab.map_sets_flags", busy_flags(REF_A), GTF_reading | GTF_writing);
    volatile uint64_t *alias = phys_page(hole);
    check("gnttab.map_same_page", alias && alias[0] == ((uint64_t *)src)[0] &&
          alias[511] == ((uint64_t *)src)[511], "the mapped frame does not show the granted page");
    if (alias) {
        alias[1] = 0x1122334455667788ULL;
        check("gnttab.map_writes_through", ((volatile uint64_t *)src)[1] == 0x1122334455667788ULL,
              "a write at the mapped frame did not reach the granted page");
    }
    struct gnttab_map_grant_ref busy = { .host_addr = hole << PAGE_SHIFT, .flags = GNTMAP_host_map,
                                         .ref = REF_B, .dom = me };
    HYPERVISOR_grant_table_op(GNTTABOP_map_grant_ref, &busy, 1);
    check_eq("gnttab.map_over_a_mapping", busy.status, GNTST_general_error);
    check_eq("gnttab.map_over_flags_clear", busy_flags(REF_B), 0);

    struct gnttab_unmap_grant_ref uu = { .host_addr = (hole + 1) << PAGE_SHIFT, .handle = mm[1].handle };
    HYPERVISOR_grant_table_op(GNTTABOP_unmap_grant_ref, &uu, 1);
    check_eq("gnttab.unmap_one_of_two", uu.status, GNTST_okay);
    check_eq("gnttab.unmap_one_keeps_flags", busy_flags(REF_A), GTF_reading | GTF_writing);
    uu.handle = mm[0].handle;
    uu.host_addr = (hole + 5) << PAGE_SHIFT;
    HYPERVISOR_grant_table_op(GNTTABOP_unmap_grant_ref, &uu, 1);
    check_eq("gnttab.unmap_wrong_addr", uu.status, GNTST_general_error);
    uu.dev_bus_addr = mm[0].dev_bus_addr + PAGE_SIZE;
    uu.host_addr = hole << PAGE_SHIFT;
    HYPERVISOR_grant_table_op(GNTTABOP_unmap_grant_ref, &uu, 1);
    check_eq("gnttab.unmap_wrong_bus_addr", uu.status, GNTST_general_error);
    uu.dev_bus_addr = 0;
    uu.host_addr = 0;
    HYPERVISOR_grant_table_op(GNTTABOP_unmap_grant_ref, &uu, 1);
    check_eq("gnttab.unmap_no_addr_is_noop", uu.status, GNTST_okay);
    check_eq("gnttab.unmap_no_addr_keeps_flags", busy_flags(REF_A), GTF_reading | GTF_writing);
    if (alias)
        unmap_4k((uint64_t)(uintptr_t)alias);
    uu.host_addr = hole << PAGE_SHIFT;
    HYPERVISOR_grant_table_op(GNTTABOP_unmap_grant_ref, &uu, 1);
    check_eq("gnttab.unmap", uu.status, GNTST_okay);
    check_eq("gnttab.unmap_clears_flags", busy_flags(REF_A), 0);
    HYPERVISOR_grant_table_op(GNTTABOP_unmap_grant_ref, &uu, 1);
    check_eq("gnttab.unmap_twice", uu.status, GNTST_bad_handle);

    struct gnttab_swap_grant_ref sw = { .ref_a = REF_A, .ref_b = REF_B };
    check_eq("gnttab.swap_rc", HYPERVISOR_grant_table_op(GNTTABOP_swap_grant_ref, &sw, 1), 0);
    uint64_t fa = version == 1 ? v1[REF_A].frame : v2[REF_A].full_page.frame;
    uint64_t fb = version == 1 ? v1[REF_B].frame : v2[REF_B].full_page.frame;
    check("gnttab.swap", sw.status == GNTST_okay && fa == pfn(dst) && fb == pfn(src),
          "status %d frames %#lx %#lx", sw.status, (unsigned long)fa, (unsigned long)fb);
    sw.ref_a = 1 << 20;
    HYPERVISOR_grant_table_op(GNTTABOP_swap_grant_ref, &sw, 1);
    check_eq("gnttab.swap_bad_ref", sw.status, GNTST_bad_gntref);
    sw.ref_a = sw.ref_b = REF_A;
    HYPERVISOR_grant_table_op(GNTTABOP_swap_grant_ref, &sw, 1);
    check_eq("gnttab.swap_same", sw.status, GNTST_okay);
    grant(REF_A, me, src, GTF_permit_access);
    grant(REF_B, me, dst, GTF_permit_access);
}

/* A store, then a locked read-modify-write (*v gets the old value), at p with a
 * kernel-fault catcher armed: whether either faulted. */
static __attribute__((noinline, noclone)) bool stores_faulted(volatile uint64_t *p, uint64_t *v)
{
    extern char gnttab_store_done[];
    arm_kernel_fault(gnttab_store_done);
    asm volatile("movq %1, (%2)\n\tlock xaddq %1, (%2)\n\t"
                 ".globl gnttab_store_done\ngnttab_store_done:"
                 : "=r"(*v) : "0"(*v), "r"(p) : "memory");
    disarm_kernel_fault();
    return user_fault.faulted;
}

static void test_map_readonly(void)
{
    uint16_t me = self_id();
    uint64_t hole = (boot.ram_top >> PAGE_SHIFT) + 64;
    volatile uint64_t *page = (volatile uint64_t *)dst;  /* REF_RO grants it read-only */
    page[0] = 0x524f2d4752414e54ULL;
    page[511] = version;
    struct gnttab_map_grant_ref m = { .host_addr = hole << PAGE_SHIFT, .flags = GNTMAP_host_map,
                                      .ref = REF_RO, .dom = me };
    HYPERVISOR_grant_table_op(GNTTABOP_map_grant_ref, &m, 1);
    check_eq("gnttab.map_ro_grant_writable", m.status, GNTST_general_error);
    check_eq("gnttab.map_ro_grant_writable_flags", busy_flags(REF_RO), 0);
    m.flags = GNTMAP_host_map | GNTMAP_readonly;
    HYPERVISOR_grant_table_op(GNTTABOP_map_grant_ref, &m, 1);
    if (!check_eq("gnttab.map_readonly", m.status, GNTST_okay))
        return;
    check_eq("gnttab.map_readonly_flags", busy_flags(REF_RO), GTF_reading);
    volatile uint64_t *alias = phys_page(hole);
    if (alias) {
        check("gnttab.map_readonly_reads", alias[0] == page[0] && alias[511] == version,
              "the read-only frame does not show the granted page");
        uint64_t before = page[2], v = ~before;
        bool faulted = stores_faulted(&alias[2], &v);
        check("gnttab.map_readonly_write_no_fault", !faulted, "vector %lu rip %#lx",
              (unsigned long)user_fault.vector, (unsigned long)user_fault.rip);
        check("gnttab.map_readonly_rmw_reads", faulted || v == before,
              "lock xadd read %#lx, the page holds %#lx", (unsigned long)v,
              (unsigned long)before);
        check("gnttab.map_readonly_write_dropped", page[2] == before && alias[2] == before,
              "the write reached the page: %#lx", (unsigned long)page[2]);
        unmap_4k((uint64_t)(uintptr_t)alias);
    }
    struct gnttab_unmap_grant_ref u = { .host_addr = hole << PAGE_SHIFT, .handle = m.handle };
    HYPERVISOR_grant_table_op(GNTTABOP_unmap_grant_ref, &u, 1);
    check_eq("gnttab.unmap_readonly", u.status, GNTST_okay);
    check_eq("gnttab.unmap_readonly_flags", busy_flags(REF_RO), 0);
}

static void test_reserved(void)
{
    uint64_t store = 0, console = 0;
    hvm_get_param(DOMID_SELF, HVM_PARAM_STORE_PFN, &store);
    hvm_get_param(DOMID_SELF, HVM_PARAM_CONSOLE_PFN, &console);
    if (store && version == 1)
        check("gnttab.reserved_xenstore", v1[GNTTAB_RESERVED_XENSTORE].flags == GTF_permit_access &&
              v1[GNTTAB_RESERVED_XENSTORE].domid == 0 && v1[GNTTAB_RESERVED_XENSTORE].frame == store,
              "entry 1: flags %#x domid %u frame %#x", v1[1].flags, v1[1].domid, v1[1].frame);
    if (console && version == 1)
        check("gnttab.reserved_console", v1[GNTTAB_RESERVED_CONSOLE].flags == GTF_permit_access &&
              v1[GNTTAB_RESERVED_CONSOLE].frame == console, "entry 0: flags %#x frame %#x",
              v1[0].flags, v1[0].frame);
}

static void test_v2(void)
{
    uint16_t me = self_id();
    v1[5].flags = 0;
    v1[5].domid = 0;
    v1[5].frame = 0x1234;
    v1[5].flags = GTF_permit_access;
    grant(REF_A, me, src, GTF_permit_access);
    struct gnttab_set_version sv = { .version = 2 };
    check_eq("gnttab.set_version_2", HYPERVISOR_grant_table_op(GNTTABOP_set_version, &sv, 1), 0);
    check_eq("gnttab.set_version_2_writes_back", sv.version, 2);
    version = 2;
    struct gnttab_get_version g = { .dom = DOMID_SELF };
    HYPERVISOR_grant_table_op(GNTTABOP_get_version, &g, 1);
    check_eq("gnttab.get_version_v2", g.version, 2);
    check("gnttab.v2_keeps_reserved", v2[5].hdr.flags == GTF_permit_access && v2[5].full_page.frame == 0x1234,
          "entry 5: flags %#x frame %#lx", v2[5].hdr.flags, (unsigned long)v2[5].full_page.frame);
    check_eq("gnttab.v2_clears_others", v2[REF_A].hdr.flags, 0);
    check_eq("gnttab.map_status_frame", xatp(XENMAPIDX_grant_table_status | 0, pfn(status_page)), 0);
    check_eq("gnttab.status_frame_beyond", xatp(XENMAPIDX_grant_table_status | 1000, pfn(frames[3])), EINVAL_);
    test_reserved();

    grant(REF_A, me, src, GTF_permit_access);
    grant(REF_B, me, dst, GTF_permit_access);
    memset(dst, 0, sizeof(dst));
    check_eq("gnttab.v2_copy", copy1(GNTCOPY_source_gref | GNTCOPY_dest_gref, REF_A, DOMID_SELF, 0,
                                     REF_B, DOMID_SELF, 0, 4096), GNTST_okay);
    check("gnttab.v2_copy_data", memcmp(src, dst, 4096) == 0, "destination differs");
    check_eq("gnttab.v2_status_released", st[REF_A] | st[REF_B], 0);
    check_eq("gnttab.v2_flags_untouched", v2[REF_A].hdr.flags, GTF_permit_access);

    /* Sub-page grant: bytes [100, 300) of src. */
    v2[13].sub_page.frame = pfn(src);
    v2[13].sub_page.page_off = 100;
    v2[13].sub_page.length = 200;
    v2[13].hdr.domid = me;
    barrier();
    v2[13].hdr.flags = GTF_permit_access | GTF_sub_page;
    check_eq("gnttab.sub_page_inside", copy1(GNTCOPY_source_gref, 13, DOMID_SELF, 100, pfn(dst),
                                             DOMID_SELF, 0, 200), GNTST_okay);
    check_eq("gnttab.sub_page_before", copy1(GNTCOPY_source_gref, 13, DOMID_SELF, 50, pfn(dst),
                                             DOMID_SELF, 0, 100), GNTST_general_error);
    check_eq("gnttab.sub_page_after", copy1(GNTCOPY_source_gref, 13, DOMID_SELF, 100, pfn(dst),
                                            DOMID_SELF, 0, 201), GNTST_general_error);
    struct gnttab_map_grant_ref m = { .host_addr = pfn(frames[3]) << PAGE_SHIFT,
                                      .flags = GNTMAP_host_map, .ref = 13, .dom = me };
    HYPERVISOR_grant_table_op(GNTTABOP_map_grant_ref, &m, 1);
    check_eq("gnttab.sub_page_not_mappable", m.status, GNTST_general_error);

    /* Transitive grant to a domain that does not exist. */
    v2[14].transitive.trans_domid = NO_SUCH_DOMID;
    v2[14].transitive.gref = REF_A;
    v2[14].hdr.domid = me;
    barrier();
    v2[14].hdr.flags = GTF_transitive;
    check_eq("gnttab.transitive_bad_domain", copy1(GNTCOPY_source_gref, 14, DOMID_SELF, 0, pfn(dst),
                                                   DOMID_SELF, 0, 8), GNTST_general_error);
    check_eq("gnttab.transitive_status_released", st[14], 0);
    v2[14].transitive.trans_domid = me;
    check_eq("gnttab.transitive_self_reference", copy1(GNTCOPY_source_gref, 14, DOMID_SELF, 0, pfn(dst),
                                                       DOMID_SELF, 0, 8), GNTST_general_error);

    /* Back to v1: a reserved entry with a 64-bit frame cannot be kept. */
    v2[6].full_page.frame = 1ULL << 40;
    v2[6].hdr.flags = GTF_permit_access;
    sv.version = 1;
    check_eq("gnttab.set_version_1_erange", HYPERVISOR_grant_table_op(GNTTABOP_set_version, &sv, 1), -XEN_ERANGE);
    check_eq("gnttab.set_version_1_erange_version", sv.version, 2);
    v2[6].hdr.flags = 0;
    sv.version = 1;
    check_eq("gnttab.set_version_1", HYPERVISOR_grant_table_op(GNTTABOP_set_version, &sv, 1), 0);
    version = 1;
    check("gnttab.v1_keeps_reserved", v1[5].flags == GTF_permit_access && v1[5].frame == 0x1234,
          "entry 5: flags %#x frame %#x", v1[5].flags, v1[5].frame);
    check_eq("gnttab.v1_clears_others", v1[REF_A].flags, 0);
    check_eq("gnttab.status_frame_gone", xatp(XENMAPIDX_grant_table_status | 0, pfn(status_page)), EINVAL_);
    v1[5].flags = 0;
}

/* The host maps REF_BACKEND while we wait; it prints nothing, we watch the page. */
static void test_backend(void)
{
    for (unsigned i = 0; i < 4096; i++)
        backend_page[i] = (uint8_t)(i ^ 0x5a);
    grant(REF_BACKEND, 0, backend_page, GTF_permit_access);
    info("backend_ref", "%u", REF_BACKEND);
    info("backend_pattern", "i^0x5a");
    /* The host maps the grant during that INFO write and keeps it mapped. */
    check("gnttab.backend_mapped_flags", busy_flags(REF_BACKEND) == (GTF_reading | GTF_writing),
          "flags %#x while the backend has the grant mapped", busy_flags(REF_BACKEND));
    struct gnttab_set_version sv = { .version = version == 1 ? 2 : 1 };
    check_eq("gnttab.set_version_busy", HYPERVISOR_grant_table_op(GNTTABOP_set_version, &sv, 1), EBUSY_);
    check("gnttab.backend_wrote", memcmp(backend_page, "PYXEN-BACKEND", 13) == 0,
          "the backend's reply is not in the page");
    info("backend_release", "%u", REF_BACKEND);
    check_eq("gnttab.backend_unmapped_flags", busy_flags(REF_BACKEND), 0);
    unsigned was = version;
    check_eq("gnttab.set_version_after_unmap", use_version(sv.version), 0);
    check_eq("gnttab.set_version_back", use_version(was), 0);
}

/* 32-bit callers (compat_grant_table_op): 32-bit frame numbers and handles. */
struct cptr32 { uint32_t u; uint16_t domid, offset; };  /* compat gnttab_copy_ptr */

static void test_compat(void)
{
    static struct { uint16_t dom; uint32_t nr_frames; int16_t status; uint32_t frame_list; } cs;
    static uint32_t frames32[4];
    static struct { struct cptr32 source, dest; uint16_t len, flags; int16_t status; } cc;
    static struct gnttab_query_size q;

    q.dom = DOMID_SELF;
    long rc = compat_hypercall(__HYPERVISOR_grant_table_op, GNTTABOP_query_size,
                               (unsigned long)&q, 1, 0, 0);
    check("gnttab.compat_query_size", rc == 0 && q.status == GNTST_okay && q.nr_frames == 3,
          "rc %ld status %d nr_frames %u", rc, q.status, q.nr_frames);
    cs.dom = DOMID_SELF;
    cs.nr_frames = 2;
    cs.frame_list = (uint32_t)(uintptr_t)frames32;
    rc = compat_hypercall(__HYPERVISOR_grant_table_op, GNTTABOP_setup_table, (unsigned long)&cs, 1, 0, 0);
    check("gnttab.compat_setup_table", rc == 0 && cs.status == GNTST_okay &&
          frames32[0] == pfn(frames[0]) && frames32[1] == pfn(frames[1]),
          "rc %ld status %d frames %#x %#x", rc, cs.status, frames32[0], frames32[1]);
    cs.nr_frames = 3;  /* frame 2 is in no physmap: ~0 does not fit 32 bits */
    compat_hypercall(__HYPERVISOR_grant_table_op, GNTTABOP_setup_table, (unsigned long)&cs, 1, 0, 0);
    check_eq("gnttab.compat_setup_table_too_big", cs.status, GNTST_address_too_big);

    grant(REF_A, self_id(), src, GTF_permit_access);
    memset(dst, 0, sizeof(dst));
    cc.source.u = REF_A; cc.source.domid = DOMID_SELF; cc.source.offset = 8;
    cc.dest.u = (uint32_t)pfn(dst); cc.dest.domid = DOMID_SELF; cc.dest.offset = 16;
    cc.len = 64; cc.flags = GNTCOPY_source_gref; cc.status = 99;
    rc = compat_hypercall(__HYPERVISOR_grant_table_op, GNTTABOP_copy, (unsigned long)&cc, 1, 0, 0);
    check("gnttab.compat_copy", rc == 0 && cc.status == GNTST_okay && memcmp(dst + 16, src + 8, 64) == 0,
          "rc %ld status %d", rc, cc.status);
    check_eq("gnttab.compat_copy_badptr", compat_hypercall(__HYPERVISOR_grant_table_op, GNTTABOP_copy,
                                                           0x70000000, 1, 0, 0), EFAULT_);
}

/* `bench=N`: N GNTTABOP_copy hypercalls of 16 4-KiB copies each (benchmarks/grant.py). */
static void bench(unsigned long rounds)
{
    static struct gnttab_copy ops[16];
    if (!check_eq("gnttab.bench_map_frame", xatp(0, pfn(frames[0])), 0))
        return;
    grant(REF_A, self_id(), src, GTF_permit_access);
    for (unsigned i = 0; i < ARRAY_SIZE(ops); i++) {
        ops[i].flags = GNTCOPY_source_gref;
        ops[i].source.u.ref = REF_A;
        ops[i].source.domid = DOMID_SELF;
        ops[i].dest.u.gmfn = pfn(dst);
        ops[i].dest.domid = DOMID_SELF;
        ops[i].len = 4096;
    }
    if (!check_eq("gnttab.bench_shared_info", map_shared_info(), 0))
        return;
    long bad = 0;
    uint64_t t0 = xen_now_ns();
    for (unsigned long r = 0; r < rounds; r++)
        bad |= HYPERVISOR_grant_table_op(GNTTABOP_copy, ops, ARRAY_SIZE(ops)) | ops[15].status;
    uint64_t t1 = xen_now_ns();
    check_eq("gnttab.bench_copies", bad, 0);
    info("bench_copy_bytes", "%lu", rounds * ARRAY_SIZE(ops) * 4096);
    info("bench_copy_ns", "%lu", (unsigned long)(t1 - t0));
}

int guest_main(void)
{
    version = 1;
    const char *rounds = cmdline_get("bench");
    if (rounds) {
        bench(strtoul(rounds, NULL, 10));
        return 0;
    }
    test_sizes();
    test_versions();
    test_unknown();
    test_reserved();
    test_copy();
    test_map_swap();
    test_map_readonly();
    test_compat();
    if (cmdline_has("backend"))
        test_backend();
    const char *v = cmdline_get("version");
    if (v && strcmp(v, "2") == 0) {
        test_v2();
        check_eq("gnttab.v2_again", use_version(2), 0);
        test_copy();
        test_map_swap();
        test_map_readonly();
        if (cmdline_has("backend"))
            test_backend();
    }
    return 0;
}
