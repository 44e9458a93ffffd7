/*
 * memory: __HYPERVISOR_memory_op (xen/common/memory.c do_memory_op,
 * xen/arch/x86/mm.c arch_memory_op, xen/arch/x86/mm/p2m.c
 * xenmem_add_to_physmap_one, xen/common/grant_table.c gnttab_map_frame).
 *
 * Semantics relied on (Xen 4.17, unprivileged HVM domU):
 *  - increase/decrease_reservation and populate_physmap return the number of
 *    extents done; any early error (bad copy, nr_extents > UINT_MAX>>6,
 *    start_extent >= nr_extents, no such domain, XSM, extent_order above the
 *    domU max order 9) returns start_extent, i.e. 0 -- never a -errno.
 *  - current/maximum_reservation, maximum_gpfn: -ESRCH for no such domain,
 *    -EINVAL with a start_extent in cmd, -EFAULT on a bad domid pointer.
 *  - add_to_physmap: shared_info idx 0 only (else -EINVAL), grant_table
 *    frames < max_grant_frames (else -EINVAL), unknown space -EINVAL,
 *    dev_mmio from a domU -EACCES, gmfn_foreign -ENOSYS (batch only),
 *    start_extent > 0xffff -EDOM.
 *  - add_to_physmap_batch: per-entry results in errs[], return 0;
 *    gmfn_range -EOPNOTSUPP; size 0 -> 0.
 *  - memory_map: copies min(nr_entries, e820 entries), sets nr_entries,
 *    returns 0 (a small buffer truncates, no error).
 *  - machine_memory_map / machphys_mapping: -ENOSYS for HVM; unknown -ENOSYS.
 *
 * INFO keys: current_reservation, maximum_reservation, maximum_ram_page,
 * maximum_gpfn, e820 (one per entry), grant_frames_mapped, populated_gfn,
 * headroom_pages.
 */
#include "guest.h"

static uint8_t gnt_pages[4][4096] ALIGNED(4096);
static uint8_t scratch[4][4096] ALIGNED(4096);
static struct e820 { uint64_t addr, size; uint32_t type; } __attribute__((packed)) e820[64];

static long stat_op(int op, unsigned domid)
{
    domid_t d = (domid_t)domid;
    return HYPERVISOR_memory_op(op, &d);
}

static long reservation(int op, xen_pfn_t *list, unsigned long nr, unsigned order, unsigned domid)
{
    struct xen_memory_reservation r = {
        .nr_extents = nr, .extent_order = order, .mem_flags = 0, .domid = (domid_t)domid,
    };
    set_xen_guest_handle(r.extent_start, list);
    return HYPERVISOR_memory_op(op, &r);
}

static long xatp(unsigned space, unsigned long idx, xen_pfn_t gpfn)
{
    struct xen_add_to_physmap a = { .domid = DOMID_SELF, .space = space, .idx = idx, .gpfn = gpfn };
    return HYPERVISOR_memory_op(XENMEM_add_to_physmap, &a);
}

/* Access guest-physical page `gfn` through an alias mapping. */
static volatile uint64_t *phys_page(uint64_t gfn)
{
    uint64_t va = ALIAS_BASE + 0x200000;
    if (map_4k(va, gfn << PAGE_SHIFT, PTE_P | PTE_W))
        return NULL;
    return (volatile uint64_t *)va;
}

static void test_reservation_queries(void)
{
    long cur = stat_op(XENMEM_current_reservation, DOMID_SELF);
    long max = stat_op(XENMEM_maximum_reservation, DOMID_SELF);
    long mrp = HYPERVISOR_memory_op(XENMEM_maximum_ram_page, NULL);
    long gpfn = stat_op(XENMEM_maximum_gpfn, DOMID_SELF);
    check("memory.current_reservation", cur > 0, "got %ld", cur);
    check("memory.maximum_reservation", max >= cur, "max %ld < current %ld", max, cur);
    check("memory.maximum_ram_page", mrp > 0, "got %ld", mrp);
    check("memory.maximum_gpfn", gpfn > 0 && (uint64_t)gpfn >= (boot.ram_top >> PAGE_SHIFT) - 1,
          "got %#lx, RAM ends at %#lx", gpfn, (unsigned long)boot.ram_top);
    info("current_reservation", "%ld", cur);
    info("maximum_reservation", "%ld", max);
    info("maximum_ram_page", "%ld", mrp);
    info("maximum_gpfn", "%#lx", gpfn);
    if (boot.domid_present)
        check_eq("memory.current_reservation_own_domid",
                 stat_op(XENMEM_current_reservation, boot.domid), cur);
    check_eq("memory.current_reservation_bad_domid", stat_op(XENMEM_current_reservation, NO_SUCH_DOMID), ESRCH_);
    check_eq("memory.maximum_reservation_bad_domid", stat_op(XENMEM_maximum_reservation, NO_SUCH_DOMID), ESRCH_);
    check_eq("memory.maximum_gpfn_bad_domid", stat_op(XENMEM_maximum_gpfn, NO_SUCH_DOMID), ESRCH_);
    check_eq("memory.current_reservation_badptr", HYPERVISOR_memory_op(XENMEM_current_reservation, BAD_PTR), EFAULT_);
    domid_t self = DOMID_SELF;
    check_eq("memory.current_reservation_start_extent",
             HYPERVISOR_memory_op(XENMEM_current_reservation | (1 << MEMOP_EXTENT_SHIFT), &self), EINVAL_);
    check_eq("memory.maximum_ram_page_start_extent",
             HYPERVISOR_memory_op(XENMEM_maximum_ram_page | (1 << MEMOP_EXTENT_SHIFT), NULL), EINVAL_);
}

static void test_memory_map(void)
{
    struct xen_memory_map map = { .nr_entries = ARRAY_SIZE(e820) };
    set_xen_guest_handle(map.buffer, e820);
    long rc = HYPERVISOR_memory_op(XENMEM_memory_map, &map);
    check_eq("memory.memory_map", rc, 0);
    unsigned n = map.nr_entries;
    check("memory.memory_map_entries", n > 0 && n <= ARRAY_SIZE(e820), "nr_entries %u", n);
    for (unsigned i = 0; i < n && i < ARRAY_SIZE(e820); i++)
        info("e820", "%#lx %#lx %u", (unsigned long)e820[i].addr, (unsigned long)e820[i].size, e820[i].type);

    /* The RAM ranges agree with hvm_start_info's memmap. */
    struct hvm_start_info *si = boot.start_info;
    if (si && si->memmap_paddr) {
        struct hvm_memmap_table_entry *m = (void *)(uintptr_t)si->memmap_paddr;
        bool same = true;
        for (uint32_t i = 0; i < si->memmap_entries; i++) {
            if (m[i].type != XEN_HVM_MEMMAP_TYPE_RAM)
                continue;
            bool found = false;
            for (unsigned j = 0; j < n; j++)
                if (e820[j].type == 1 && e820[j].addr == m[i].addr && e820[j].size == m[i].size)
                    found = true;
            same &= found;
        }
        check("memory.memory_map_matches_start_info", same,
              "a RAM range of hvm_start_info is missing from XENMEM_memory_map");
    }

    /* Buffer too small: truncated copy, nr_entries = what was copied, rc 0. */
    static struct e820 small[2];
    memset(small, 0xee, sizeof(small));
    struct xen_memory_map m1 = { .nr_entries = 1 };
    set_xen_guest_handle(m1.buffer, small);
    rc = HYPERVISOR_memory_op(XENMEM_memory_map, &m1);
    check_eq("memory.memory_map_small", rc, 0);
    check_eq("memory.memory_map_small_nr", m1.nr_entries, n >= 1 ? 1 : 0);
    check("memory.memory_map_small_content", memcmp(&small[0], &e820[0], sizeof(small[0])) == 0 &&
          ((uint8_t *)&small[1])[0] == 0xee, "first entry differs or a second entry was written");
    struct xen_memory_map m0 = { .nr_entries = 0 };
    set_xen_guest_handle(m0.buffer, BAD_PTR);
    check_eq("memory.memory_map_zero", HYPERVISOR_memory_op(XENMEM_memory_map, &m0), 0);
    check_eq("memory.memory_map_zero_nr", m0.nr_entries, 0);

    struct xen_memory_map mb = { .nr_entries = 8 };
    set_xen_guest_handle(mb.buffer, BAD_PTR);
    check_eq("memory.memory_map_bad_buffer", HYPERVISOR_memory_op(XENMEM_memory_map, &mb), EFAULT_);
    check_eq("memory.memory_map_badptr", HYPERVISOR_memory_op(XENMEM_memory_map, BAD_PTR), EFAULT_);
    check_eq("memory.machine_memory_map_hvm", HYPERVISOR_memory_op(XENMEM_machine_memory_map, &map), ENOSYS_);
    check_eq("memory.machphys_mapping_hvm", HYPERVISOR_memory_op(XENMEM_machphys_mapping, e820), ENOSYS_);
}

static void test_add_to_physmap(void)
{
    check_eq("memory.add_to_physmap_shared_info", map_shared_info(), 0);
    check_eq("memory.add_to_physmap_shared_info_idx1",
             xatp(XENMAPSPACE_shared_info, 1, pfn_of(scratch[0])), EINVAL_);

    unsigned ok = 0;
    for (unsigned i = 0; i < 4; i++)
        ok += xatp(XENMAPSPACE_grant_table, i, pfn_of(gnt_pages[i])) == 0;
    check_eq("memory.add_to_physmap_grant_frames", ok, 4);
    info("grant_frames_mapped", "%u", ok);
    check_eq("memory.add_to_physmap_grant_frame_past_max",
             xatp(XENMAPSPACE_grant_table, 0x100000, pfn_of(scratch[0])), EINVAL_);
    check_eq("memory.add_to_physmap_grant_status_v1",
             xatp(XENMAPSPACE_grant_table, XENMAPIDX_grant_table_status | 0, pfn_of(scratch[0])), EINVAL_);
    check_eq("memory.add_to_physmap_unknown_space", xatp(99, 0, pfn_of(scratch[0])), EINVAL_);
    check_eq("memory.add_to_physmap_foreign", xatp(XENMAPSPACE_gmfn_foreign, 0, pfn_of(scratch[0])), ENOSYS_);
    if (!boot.dom0)
        check_eq("memory.add_to_physmap_dev_mmio", xatp(XENMAPSPACE_dev_mmio, 0, pfn_of(scratch[0])), EACCES_);
    struct xen_add_to_physmap a = { .domid = NO_SUCH_DOMID, .space = XENMAPSPACE_shared_info,
                                    .idx = 0, .gpfn = pfn_of(scratch[0]) };
    check_eq("memory.add_to_physmap_bad_domid", HYPERVISOR_memory_op(XENMEM_add_to_physmap, &a), ESRCH_);
    a.domid = DOMID_SELF;
    check_eq("memory.add_to_physmap_edom",
             HYPERVISOR_memory_op(XENMEM_add_to_physmap | (0x10000UL << MEMOP_EXTENT_SHIFT), &a), EDOM_);
    check_eq("memory.add_to_physmap_badptr", HYPERVISOR_memory_op(XENMEM_add_to_physmap, BAD_PTR), EFAULT_);

    /* Batch: re-map grant frames 0 and 1 in place, plus two bad entries. */
    xen_ulong_t idxs[4] = { 0, 1, 0x100000, 2 };
    xen_pfn_t gpfns[4] = { pfn_of(gnt_pages[0]), pfn_of(gnt_pages[1]), pfn_of(scratch[0]),
                           pfn_of(gnt_pages[2]) };
    int errs[4] = { 99, 99, 99, 99 };
    struct xen_add_to_physmap_batch b = { .domid = DOMID_SELF, .space = XENMAPSPACE_grant_table, .size = 4 };
    set_xen_guest_handle(b.idxs, idxs);
    set_xen_guest_handle(b.gpfns, gpfns);
    set_xen_guest_handle(b.errs, errs);
    long rc = HYPERVISOR_memory_op(XENMEM_add_to_physmap_batch, &b);
    check_eq("memory.add_to_physmap_batch", rc, 0);
    check("memory.add_to_physmap_batch_errs",
          errs[0] == 0 && errs[1] == 0 && errs[2] == EINVAL_ && errs[3] == 0,
          "errs expected [0,0,%d,0] got [%d,%d,%d,%d]", EINVAL_, errs[0], errs[1], errs[2], errs[3]);
    b.size = 0;
    check_eq("memory.add_to_physmap_batch_empty", HYPERVISOR_memory_op(XENMEM_add_to_physmap_batch, &b), 0);
    b.size = 1;
    b.space = XENMAPSPACE_gmfn_range;
    check_eq("memory.add_to_physmap_batch_gmfn_range", HYPERVISOR_memory_op(XENMEM_add_to_physmap_batch, &b), EOPNOTSUPP_);
    b.space = XENMAPSPACE_grant_table;
    set_xen_guest_handle(b.idxs, BAD_PTR);
    check_eq("memory.add_to_physmap_batch_bad_idxs", HYPERVISOR_memory_op(XENMEM_add_to_physmap_batch, &b), EFAULT_);
    set_xen_guest_handle(b.idxs, idxs);
    set_xen_guest_handle(b.errs, BAD_PTR);
    check_eq("memory.add_to_physmap_batch_bad_errs", HYPERVISOR_memory_op(XENMEM_add_to_physmap_batch, &b), EFAULT_);
    b.domid = NO_SUCH_DOMID;
    check_eq("memory.add_to_physmap_batch_bad_domid", HYPERVISOR_memory_op(XENMEM_add_to_physmap_batch, &b), ESRCH_);
    check_eq("memory.add_to_physmap_batch_badptr", HYPERVISOR_memory_op(XENMEM_add_to_physmap_batch, BAD_PTR), EFAULT_);
}

static void test_reservations(void)
{
    long cur0 = stat_op(XENMEM_current_reservation, DOMID_SELF);
    long max = stat_op(XENMEM_maximum_reservation, DOMID_SELF);
    uint64_t top = boot.ram_top >> PAGE_SHIFT;      /* first gfn above RAM */
    if (!top) {
        test_fail("memory.populate_physmap", "no RAM range in hvm_start_info");
        return;
    }

    /* Give back two pages of ours: decrease_reservation -> 2. */
    xen_pfn_t give[2] = { pfn_of(scratch[2]), pfn_of(scratch[3]) };
    long rc = reservation(XENMEM_decrease_reservation, give, 2, 0, DOMID_SELF);
    check_eq("memory.decrease_reservation", rc, 2);
    check_eq("memory.decrease_reservation_accounted", stat_op(XENMEM_current_reservation, DOMID_SELF), cur0 - rc);
    /* A gfn that is not populated (above RAM): stops at once -> 0. */
    xen_pfn_t hole[1] = { top + 1000 };
    check_eq("memory.decrease_reservation_hole", reservation(XENMEM_decrease_reservation, hole, 1, 0, DOMID_SELF), 0);

    /* Refill one of the holes (what a balloon driver does), use it. */
    xen_pfn_t refill[1] = { pfn_of(scratch[2]) };
    rc = reservation(XENMEM_populate_physmap, refill, 1, 0, DOMID_SELF);
    check_eq("memory.populate_physmap_refill_hole", rc, 1);
    if (rc == 1) {
        volatile uint64_t *q = (volatile uint64_t *)scratch[2];
        q[0] = 0x0123456789abcdefULL;
        q[511] = ~0x0123456789abcdefULL;
        check("memory.populate_physmap_refill_rw", q[0] == 0x0123456789abcdefULL && q[511] == ~0x0123456789abcdefULL,
              "read back %#lx %#lx", (unsigned long)q[0], (unsigned long)q[511]);
    }
    check_eq("memory.populate_physmap_refill_accounted", stat_op(XENMEM_current_reservation, DOMID_SELF), cur0 - 2 + rc);

    /* Grow RAM above the current top (Xen's p2m simply grows), use the page. */
    long before = stat_op(XENMEM_current_reservation, DOMID_SELF);
    xen_pfn_t newp[2] = { top + 16, top + 17 };
    rc = reservation(XENMEM_populate_physmap, newp, 2, 0, DOMID_SELF);
    check_eq("memory.populate_physmap_above_top", rc, 2);
    check_eq("memory.populate_physmap_above_top_accounted", stat_op(XENMEM_current_reservation, DOMID_SELF), before + rc);
    long mg = stat_op(XENMEM_maximum_gpfn, DOMID_SELF);
    check("memory.populate_physmap_above_top_max_gpfn", rc != 2 || mg >= (long)(top + 17),
          "maximum_gpfn %#lx below the populated gfn %#lx", mg, (unsigned long)(top + 17));
    info("populated_gfn", "%#lx", (unsigned long)(top + 16));
    if (rc == 2) {
        volatile uint64_t *p = phys_page(top + 16);
        if (p) {
            p[0] = 0x1122334455667788ULL;
            p[511] = 0x99aabbccddeeff00ULL;
            check("memory.populate_physmap_above_top_rw", p[0] == 0x1122334455667788ULL && p[511] == 0x99aabbccddeeff00ULL,
                  "read back %#lx %#lx", (unsigned long)p[0], (unsigned long)p[511]);
            /* The new page is RAM that hypercalls can use too. */
            rc = HYPERVISOR_xen_version(XENVER_extraversion, (void *)p);
            check_eq("memory.populate_physmap_above_top_hypercall_buffer", rc, 0);
        }
        /* And give one back again. */
        check_eq("memory.decrease_reservation_populated",
                 reservation(XENMEM_decrease_reservation, &newp[1], 1, 0, DOMID_SELF), 1);
    }

    /* Exceed the maximum: partial count. */
    long cur = stat_op(XENMEM_current_reservation, DOMID_SELF);
    long headroom = max - cur;
    info("headroom_pages", "%ld", headroom);
    static xen_pfn_t many[1024];
    if (headroom >= 0 && headroom < (long)ARRAY_SIZE(many) - 1) {
        unsigned long nr = (unsigned long)headroom + 1;
        for (unsigned long i = 0; i < nr; i++)
            many[i] = top + 64 + i;
        rc = reservation(XENMEM_populate_physmap, many, nr, 0, DOMID_SELF);
        check_eq("memory.populate_physmap_exceeds_max", rc, headroom);
        if (rc > 0)
            reservation(XENMEM_decrease_reservation, many, (unsigned long)rc, 0, DOMID_SELF);
    } else {
        info("populate_physmap_exceeds_max", "skipped (headroom %ld pages)", headroom);
    }

    /* Early errors all return start_extent (0), not -errno. */
    xen_pfn_t one[1] = { top + 40 };
    check_eq("memory.populate_physmap_bad_order", reservation(XENMEM_populate_physmap, one, 1, boot.dom0 ? 21 : 10, DOMID_SELF), 0);
    check_eq("memory.populate_physmap_bad_domid", reservation(XENMEM_populate_physmap, one, 1, 0, NO_SUCH_DOMID), 0);
    check_eq("memory.populate_physmap_huge_count", reservation(XENMEM_populate_physmap, one, 0x4000000UL, 0, DOMID_SELF), 0);
    check_eq("memory.populate_physmap_bad_list", reservation(XENMEM_populate_physmap, BAD_PTR, 1, 0, DOMID_SELF), 0);
    check_eq("memory.populate_physmap_badptr", HYPERVISOR_memory_op(XENMEM_populate_physmap, BAD_PTR), 0);
    check_eq("memory.decrease_reservation_bad_order", reservation(XENMEM_decrease_reservation, one, 1, boot.dom0 ? 21 : 10, DOMID_SELF), 0);
    check_eq("memory.decrease_reservation_bad_domid", reservation(XENMEM_decrease_reservation, one, 1, 0, NO_SUCH_DOMID), 0);
    /* start_extent (continuation encoding) >= nr_extents: returns it as is. */
    struct xen_memory_reservation r = { .nr_extents = 3, .extent_order = 0, .domid = DOMID_SELF };
    set_xen_guest_handle(r.extent_start, one);
    check_eq("memory.populate_physmap_start_extent_past_end",
             HYPERVISOR_memory_op(XENMEM_populate_physmap | (5UL << MEMOP_EXTENT_SHIFT), &r), 5);

    /* increase_reservation: allocates without mapping (no list for HVM). */
    cur = stat_op(XENMEM_current_reservation, DOMID_SELF);
    long want = max > cur ? 1 : 0;
    rc = reservation(XENMEM_increase_reservation, NULL, 1, 0, DOMID_SELF);
    check_eq("memory.increase_reservation", rc, want);
    check_eq("memory.increase_reservation_accounted", stat_op(XENMEM_current_reservation, DOMID_SELF), cur + rc);
    check_eq("memory.increase_reservation_bad_order", reservation(XENMEM_increase_reservation, NULL, 1, boot.dom0 ? 21 : 10, DOMID_SELF), 0);
}

int guest_main(void)
{
    test_reservation_queries();
    test_memory_map();
    test_add_to_physmap();
    test_reservations();
    check_eq("memory.unknown_subop", HYPERVISOR_memory_op(99, NULL), ENOSYS_);
    check_eq("memory.unknown_subop_63", HYPERVISOR_memory_op(63, NULL), ENOSYS_);
    return 0;
}
