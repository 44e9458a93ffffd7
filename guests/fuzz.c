/*
 * fuzz: a hostile guest. From inside a domain it issues hypercalls with random and boundary
 * arguments -- numbers and sub-ops, counts and orders near the limits, pointers into
 * unmapped, read-only, MMIO, page-table and special pages and across page boundaries, other
 * domains' ids, bogus ports and grant references -- in 64-bit and 32-bit (compat) form and in
 * multicall batches, and scribbles on its shared rings (XenStore, console), its grant
 * table and shared_info, notifying the rings' back ends. The hypervisor must answer
 * everything with a Xen error code or a Xen-defined result; the host side checks that
 * (tests/integration/test_fuzz_guest.py, tests/host/test_fuzz_beside.py).
 *
 * Command line: seed=N calls=N [report=N] [peer=DOMID] [role=witness seconds=N peer=DOMID]
 *   seed     the PRNG seed (the run is reproducible from it: same calls, same order)
 *   calls    hypercalls to make (multicall entries count one each), then ring mutations
 *            are counted separately; 0 = run until destroyed
 *   report   print progress every N calls (INFO fuzz_progress)
 *   peer     a domain to aim cross-domain calls at (also among the ids drawn at random)
 *
 * To stay alive the fuzzer never names its own vital memory: the image (code, stack, page
 * tables, hypercall page) and the boot data after it. Every value it makes up is filtered
 * against those frames and addresses, and every call that takes a frame *with an order*
 * (reservations, exchange) draws its frames from the "sacrificial" upper half of RAM, which
 * is 2^13-frame aligned, so no order a domU may use reaches below it. It never shuts itself
 * down, takes vCPU 0 down, blocks without a deadline or arms a watchdog that could fire.
 * Interrupts stay off: an upcall vector it set at random is never taken.
 *
 * role=witness: a bystander for host-mode runs. It fills 8 MiB with a seeded pattern, grants
 * one other page to its peer (the fuzzer may write it), and keeps checking the pattern and a
 * few hypercalls with known answers until its XenStore node data/stop appears (or for at
 * most `seconds`); any change is a failed TEST.
 */
#include "guest.h"
#include "gnttab.h"
#include <xen/hvm/params.h>

/* ---- the generator ---------------------------------------------------------------- */

static uint64_t rng;

static uint64_t rnd(void)            /* xorshift64* */
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545F4914F6CDD1DULL;
}

static uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }
static bool one_in(unsigned n) { return below(n) == 0; }

/* ---- memory plan ------------------------------------------------------------------- */

#define SCRATCH_VA     ALIAS_BASE                  /* 16 pages, then an unmapped guard page */
#define SCRATCH_PAGES  16
#define SCRATCH_SIZE   (SCRATCH_PAGES * PAGE_SIZE)
#define RO_VA          (ALIAS_BASE + 0x11000)      /* a read-only mapping */
#define MMIO_VA        (ALIAS_BASE + 0x12000)      /* the local APIC's page */
#define STORE_VA       (ALIAS_BASE + 0x13000)      /* the XenStore ring */
#define CONS_VA        (ALIAS_BASE + 0x14000)      /* the console ring */
#define GNT_VA         (ALIAS_BASE + 0x15000)      /* 4 grant-table frames */
#define GNT_FRAMES     4
#define PT_ALIAS_VA    (ALIAS_BASE + 0x19000)      /* window B's page table, writable */
#define HOLE_VA        (ALIAS_BASE + 0x1a000)      /* a frame that is not RAM */
#define BATCH_VA       (ALIAS_BASE + 0x1e000)      /* the multicall list, then a guard */
#define PRIV_VA        (ALIAS_BASE + 0x20000)      /* private structures: 2 pages, */
#define PRIV_PAGES     2                           /* a slot per batch entry */
#define LIST_VA        (PRIV_VA + PRIV_PAGES * PAGE_SIZE)  /* their frame lists, a guard */
#define SLOT_SIZE      128
#define BATCH_MAX      64                          /* entries in a multicall batch */
#define WINB_VA        (ALIAS_BASE + 0x200000)     /* 16 pages behind a page table we expose */
#define WINB_PAGES     16

static uint64_t ram_pages, sac_gfn, crit_end_gfn;
static unsigned self;
static unsigned peer = NO_SUCH_DOMID;
static evtchn_port_t store_port, cons_port;
static uint64_t store_pfn, cons_pfn;
static uint64_t now_ns;                    /* system time, refreshed now and then */
static bool have_store, have_cons, have_gnt;
static uint64_t *winb_pt;                  /* window B's page table (in our image) */
static unsigned cur_slot;                  /* the batch entry being built (0: a lone call) */
static uint64_t winb_pte[WINB_PAGES];      /* what it should hold */

static bool vital(uint64_t v)
{
    /* As a frame number or as an address (virtual == physical below 1 GiB). */
    return (v >= 0x100 && v < crit_end_gfn) ||
           (v >= 0x100000 && v < (crit_end_gfn << PAGE_SHIFT));
}

static uint64_t gen_gfn(void)
{
    switch (below(8)) {
    case 0: case 1: case 2: return sac_gfn + below(ram_pages - sac_gfn);
    case 3: return ram_pages + below(0x10000);
    case 4: return 0xfeff8 + below(8);                  /* the special pages' region */
    case 5: return one_in(2) ? 0xfee00 : 0xf0000 + below(0x10000);   /* LAPIC, MMIO hole */
    case 6: {
        static const uint64_t huge[] = { 1ULL << 40, (1ULL << 52) - 1, 1ULL << 52,
                                         0xffffffffULL, 0x7fffffffULL, ~0ULL, ~0ULL >> 1,
                                         0xfffffffffULL };
        return huge[below(ARRAY_SIZE(huge))];
    }
    default: {
        uint64_t pfn = one_in(2) ? store_pfn : cons_pfn;
        return pfn ? pfn : sac_gfn;
    }
    }
}

static unsigned gen_domid(void)
{
    static const unsigned ids[] = { 0, 1, 2, 3, DOMID_SELF, DOMID_IO, DOMID_XEN, DOMID_COW,
                                    DOMID_INVALID, 0x7fef, 0xffff, 0x8000 };
    switch (below(4)) {
    case 0: return self;
    case 1: return peer;
    case 2: return ids[below(ARRAY_SIZE(ids))];
    default: return below(2) ? DOMID_SELF : (unsigned)below(0x10000);
    }
}

static uint64_t gen_port(void)
{
    static const uint64_t ports[] = { 0, 1, 2, 3, 4, 5, 8, 63, 64, 1023, 1024, 4095, 4096,
                                      131071, 131072, 1ULL << 31, 0xffffffffULL, ~0ULL };
    if (one_in(4))
        return one_in(2) ? store_port : cons_port;
    return one_in(2) ? below(16) : ports[below(ARRAY_SIZE(ports))];
}

static uint64_t gen_ref(void)
{
    static const uint64_t refs[] = { 0, 1, 7, 8, 31, 32, 511, 512, 1023, 1024, 2047, 2048,
                                     65535, 1U << 20, 0xffffffffULL };
    return one_in(2) ? below(40) : refs[below(ARRAY_SIZE(refs))];
}

static uint64_t gen_count(void)
{
    static const uint64_t counts[] = { 0, 1, 2, 3, 7, 8, 15, 16, 64, 255, 256, 512, 4095, 4096,
                                       65535, 65536, 0x7fffffff, 0x80000000, 0xffffffff,
                                       1ULL << 32, ~0ULL };
    return one_in(2) ? below(8) : counts[below(ARRAY_SIZE(counts))];
}

/* A pointer for an argument of `size` bytes: mostly valid (in scratch), else any kind of
 * bad. Never into our vital memory. */
static uint64_t gen_ptr(uint64_t size)
{
    if (size > SCRATCH_SIZE)
        size = SCRATCH_SIZE;
    switch (below(20)) {
    case 0: return 0;
    case 1: return (uint64_t)BAD_PTR + below(PAGE_SIZE);
    case 2: return 0x8000000000000000ULL + below(PAGE_SIZE);            /* not canonical */
    case 3: return 0xffff800000000000ULL + (below(64) << PAGE_SHIFT);   /* kernel half */
    case 4: return SCRATCH_VA + SCRATCH_SIZE - 1 - below(size ? size : 1);  /* into the guard */
    case 5: return RO_VA + below(PAGE_SIZE - size + 1);
    case 6: return MMIO_VA + below(PAGE_SIZE);
    case 7: return (have_store && one_in(2) ? STORE_VA : CONS_VA) + below(PAGE_SIZE);
    case 8: return GNT_VA + below(GNT_FRAMES * PAGE_SIZE - size + 1);
    case 9: return PT_ALIAS_VA + 8 * below(PAGE_SIZE / 8);
    case 10: {
        /* Window B is repaired after each call; in a batch an earlier entry may have
         * rewritten its page table (a pointer to PT_ALIAS_VA) with a value whose high bits
         * slip past vital(), so a later entry would write through it into our image. */
        uint64_t off = below(WINB_PAGES * PAGE_SIZE - size + 1);
        return cur_slot ? SCRATCH_VA + (off % (SCRATCH_SIZE - size + 1)) : WINB_VA + off;
    }
    case 11: return HOLE_VA + below(PAGE_SIZE);
    case 12: return below(PAGE_SIZE / 8) * 8 + (below(256) << PAGE_SHIFT); /* the unmapped
                                                                           * first MiB */
    case 13: return (sac_gfn + below(ram_pages - sac_gfn)) << PAGE_SHIFT;
    case 14: return ram_pages << PAGE_SHIFT;                             /* just past RAM */
    default: {
        uint64_t off = below(SCRATCH_SIZE - size + 1);
        return SCRATCH_VA + (one_in(4) ? off : off & ~7ULL);
    }
    }
}

/* Any value: small, boundary, a frame, a pointer, an id, a port, random bits. */
static uint64_t gen_val(void)
{
    static const uint64_t edges[] = { 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff, 0x10000,
                                      0x7fffffff, 0x80000000, 0xffffffff, 1ULL << 32,
                                      0x7fffffffffffffffULL, 0x8000000000000000ULL, ~0ULL,
                                      ~0ULL - 1, 0xfffffffffffff000ULL };
    for (;;) {
        uint64_t v;
        switch (below(10)) {
        case 0: case 1: v = below(17); break;
        case 2: v = edges[below(ARRAY_SIZE(edges))]; break;
        case 3: v = gen_gfn(); break;
        case 4: v = gen_ptr(8); break;
        case 5: v = gen_domid(); break;
        case 6: v = gen_port(); break;
        case 7: v = gen_ref(); break;
        case 8: v = (uint64_t)-(int64_t)(1 + below(16)); break;
        default: v = one_in(2) ? (uint32_t)rnd() : rnd(); break;
        }
        if (!vital(v) && !vital(v & 0xffffffffULL))
            return v;
    }
}

/* Scratch content: 32-bit words, each harmless read as a frame or an address on its own
 * (a 64-bit field is two such words: small, or past 4 G). */
static void fill_words(void *at, size_t bytes)
{
    uint32_t *w = at;
    for (size_t i = 0; i < bytes / 4; i++) {
        uint64_t v = gen_val();
        w[i] = (uint32_t)(one_in(2) ? v : v >> 32);
        while (vital(w[i]))
            w[i] = (uint32_t)gen_val();
    }
}

static bool in_scratch(uint64_t ptr, uint64_t size)
{
    return ptr >= SCRATCH_VA && ptr < SCRATCH_VA + SCRATCH_SIZE &&
           size <= SCRATCH_VA + SCRATCH_SIZE - ptr;
}

/* The memory ops whose frames come with orders or ranges (reservations, exchange,
 * add_to_physmap's gmfn_range) would reach our image from any readable memory whose
 * content we do not control: a zero read as a frame, with order 9, is frames 0-511. Their
 * structures live in private slots (an image page aliased, a page no pointer or frame we
 * make up can name), their frame lists in the page after it, filled with safe frames only
 * and followed by a guard page, so a count past the list still reads only safe frames;
 * or they get a pointer that cannot be read at all. */
static uint8_t private_pages[(PRIV_PAGES + 1) * PAGE_SIZE] ALIGNED(PAGE_SIZE);
static unsigned list_used;

static uint64_t unreadable_ptr(void)
{
    static const uint64_t bad[] = { 0, (uint64_t)BAD_PTR, 0x8000000000000000ULL, HOLE_VA,
                                    0x1000 };
    return bad[below(ARRAY_SIZE(bad))];
}

/* Fresh frames where the last call's lists were (the rest of the page holds safe frames
 * from set-up: nothing but this code writes it). */
static void refill_lists(void)
{
    uint64_t *list = (uint64_t *)LIST_VA;
    for (unsigned i = 0; i < list_used; i++)
        list[i] = gen_gfn();
    list_used = 0;
}

/* `n` safe frame numbers in the list page (or, now and then, an unreadable list). */
static uint64_t gen_gfn_array(unsigned n)
{
    if (one_in(16) || list_used + n > PAGE_SIZE / 8)
        return unreadable_ptr();
    uint64_t p = LIST_VA + list_used * 8;
    list_used += n;
    return p;
}

static uint64_t private_struct(void)
{
    /* One slot per entry of the largest batch: entries built later must not rewrite an
     * earlier entry's structure before the multicall reads it (slot 0, the lone call's,
     * is never built while a batch is). */
    _Static_assert(PRIV_PAGES * PAGE_SIZE / SLOT_SIZE >= BATCH_MAX, "a slot per entry");
    uint64_t p = PRIV_VA + (cur_slot % (PRIV_PAGES * PAGE_SIZE / SLOT_SIZE)) * SLOT_SIZE;
    fill_words((void *)(uintptr_t)p, SLOT_SIZE);
    return p;
}

static uint64_t gen_order(void)
{
    static const uint64_t orders[] = { 0, 0, 0, 1, 2, 8, 9, 10, 12, 18, 20, 31, 32, 63, 64,
                                       255, 0xffffffff };
    return orders[below(ARRAY_SIZE(orders))];
}

/* ---- building one call ------------------------------------------------------------- */

struct call {
    unsigned nr;
    uint64_t a[5];
};

/* A structure of `size` bytes for the call to read: a pointer (bad ones included); when
 * valid, its bytes are fresh random words the caller may then overwrite field by field. */
static uint64_t gen_struct(size_t size)
{
    uint64_t p = gen_ptr(size);
    if (in_scratch(p, size)) {
        uint64_t lo = p & ~3ULL, hi = (p + size + 3) & ~3ULL;
        fill_words((void *)(uintptr_t)lo, hi - lo);
    }
    return p;
}

#define FIELD(p, type) ((type *)(uintptr_t)(p))

static void gen_reservation(uint64_t p)
{
    struct xen_memory_reservation *r = FIELD(p, struct xen_memory_reservation);
    unsigned n = 1 + below(8);
    set_xen_guest_handle(r->extent_start, (xen_pfn_t *)(uintptr_t)gen_gfn_array(n));
    r->nr_extents = one_in(3) ? gen_count() : n;
    r->extent_order = gen_order();
    r->mem_flags = one_in(4) ? (unsigned)gen_val() : 0;
    r->domid = one_in(4) ? gen_domid() : DOMID_SELF;
}

static void gen_memory_op(struct call *c)
{
    static const unsigned cmds[] = { 0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16,
                                     17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30,
                                     31, 32, 48 };
    unsigned cmd = cmds[below(ARRAY_SIZE(cmds))];
    uint64_t p;
    bool priv = !one_in(16);              /* else an unreadable structure */
    switch (cmd) {
    case XENMEM_increase_reservation:
    case XENMEM_decrease_reservation:
    case XENMEM_populate_physmap:
        p = priv ? private_struct() : unreadable_ptr();
        if (priv)
            gen_reservation(p);
        break;
    case XENMEM_exchange:
        p = priv ? private_struct() : unreadable_ptr();
        if (priv) {
            struct xen_memory_exchange *x = FIELD(p, struct xen_memory_exchange);
            gen_reservation((uint64_t)(uintptr_t)&x->in);
            gen_reservation((uint64_t)(uintptr_t)&x->out);
            x->nr_exchanged = one_in(4) ? gen_count() : 0;
        }
        break;
    case XENMEM_add_to_physmap:
        p = priv ? private_struct() : unreadable_ptr();
        if (priv) {
            struct xen_add_to_physmap *x = FIELD(p, struct xen_add_to_physmap);
            x->domid = one_in(4) ? gen_domid() : DOMID_SELF;
            x->size = (uint16_t)gen_count();
            x->space = one_in(8) ? (unsigned)gen_val() : (unsigned)below(7);
            /* A small index only where it is not a frame (shared_info, grant frames):
             * gmfn and gmfn_range take frames, a range counting up from idx. */
            bool frame_idx = x->space != XENMAPSPACE_shared_info &&
                             x->space != XENMAPSPACE_grant_table;
            x->idx = !frame_idx && one_in(2)
                ? below(40) | (one_in(4) ? XENMAPIDX_grant_table_status : 0) : gen_gfn();
            x->gpfn = gen_gfn();
        }
        break;
    case XENMEM_add_to_physmap_batch:
        p = priv ? private_struct() : unreadable_ptr();
        if (priv) {
            struct xen_add_to_physmap_batch *x = FIELD(p, struct xen_add_to_physmap_batch);
            unsigned n = 1 + below(8);
            x->domid = one_in(4) ? gen_domid() : DOMID_SELF;
            x->space = one_in(8) ? (uint16_t)gen_val() : (uint16_t)below(7);
            x->size = one_in(3) ? (uint16_t)gen_count() : n;
            x->u.foreign_domid = gen_domid();
            set_xen_guest_handle(x->idxs, (xen_ulong_t *)(uintptr_t)gen_gfn_array(n));
            set_xen_guest_handle(x->gpfns, (xen_pfn_t *)(uintptr_t)gen_gfn_array(n));
            set_xen_guest_handle(x->errs, (int *)(uintptr_t)gen_ptr(n * 4));
        }
        break;
    case XENMEM_remove_from_physmap:
        p = priv ? private_struct() : unreadable_ptr();
        if (priv) {
            FIELD(p, struct xen_remove_from_physmap)->domid =
                one_in(4) ? gen_domid() : DOMID_SELF;
            FIELD(p, struct xen_remove_from_physmap)->gpfn = gen_gfn();
        }
        break;
    case XENMEM_acquire_resource:
        p = priv ? private_struct() : unreadable_ptr();
        if (priv) {
            struct xen_mem_acquire_resource *x = FIELD(p, struct xen_mem_acquire_resource);
            unsigned n = 1 + below(4);
            x->domid = gen_domid();
            x->type = (uint16_t)below(4);
            x->id = (uint32_t)below(3);
            x->nr_frames = one_in(3) ? (uint32_t)gen_count() : n;
            x->frame = below(8);
            set_xen_guest_handle(x->frame_list, (xen_pfn_t *)(uintptr_t)gen_gfn_array(n));
        }
        break;
    default:
        p = gen_struct(64);
        break;
    }
    /* A continuation's start extent in the command's high bits, now and then. */
    uint64_t hi = one_in(16) ? (gen_count() << 6) : 0;
    if (vital(hi))
        hi = 0;
    c->a[0] = cmd | hi;
    c->a[1] = p;
}

static void gen_sched_op(struct call *c, bool batch)
{
    /* Never SCHEDOP_shutdown, never a block without a deadline. In a batch, no poll and no
     * watchdog: an earlier entry may rewrite their structures (no deadline, a short one). */
    unsigned pick = (unsigned)below(7);
    if (batch && (pick == 1 || pick == 3))
        pick = 0;
    switch (pick) {
    case 0:
        c->a[0] = SCHEDOP_yield;
        break;
    case 1: {
        uint64_t p = gen_struct(sizeof(struct sched_poll));
        if (in_scratch(p, sizeof(struct sched_poll))) {
            struct sched_poll *s = FIELD(p, struct sched_poll);
            unsigned n = (unsigned)below(4);
            uint64_t ports = gen_ptr(n * 4);
            if (in_scratch(ports, n * 4))
                for (unsigned i = 0; i < n; i++)
                    FIELD(ports, uint32_t)[i] = (uint32_t)gen_port();
            set_xen_guest_handle(s->ports, (evtchn_port_t *)(uintptr_t)ports);
            s->nr_ports = one_in(4) ? (unsigned)gen_count() : n;
            s->timeout = one_in(2) ? 1 : now_ns + below(200000);  /* always a deadline */
            c->a[0] = SCHEDOP_poll;
            c->a[1] = p;
        } else {
            /* Only pointers that cannot be read: readable memory we do not control (a
             * page table, a ring) could say "no deadline". */
            static const uint64_t bad[] = { 0, (uint64_t)BAD_PTR, 0x8000000000000000ULL,
                                            SCRATCH_VA + SCRATCH_SIZE - 8, HOLE_VA };
            c->a[0] = SCHEDOP_poll;
            c->a[1] = bad[below(ARRAY_SIZE(bad))];
        }
        return;
    }
    case 2: {
        uint64_t p = gen_struct(sizeof(struct sched_remote_shutdown));
        if (in_scratch(p, sizeof(struct sched_remote_shutdown))) {
            FIELD(p, struct sched_remote_shutdown)->domain_id = gen_domid();
            FIELD(p, struct sched_remote_shutdown)->reason = (unsigned)below(8);
        }
        c->a[0] = SCHEDOP_remote_shutdown;
        c->a[1] = p;
        return;
    }
    case 3: {
        /* A watchdog: an id that does not exist, or a new one that outlives any run. */
        uint64_t p = gen_struct(sizeof(struct sched_watchdog));
        if (!in_scratch(p, sizeof(struct sched_watchdog))) {
            c->a[0] = SCHEDOP_shutdown_code;
            c->a[1] = p;
            return;
        }
        struct sched_watchdog *w = FIELD(p, struct sched_watchdog);
        w->id = one_in(2) ? 0 : 3 + (uint32_t)below(100);
        w->timeout = w->id ? (uint32_t)gen_val() : 0x7fffffff;
        c->a[0] = SCHEDOP_watchdog;
        c->a[1] = p;
        return;
    }
    case 4:
        c->a[0] = SCHEDOP_shutdown_code;
        c->a[1] = gen_struct(sizeof(struct sched_shutdown));
        return;
    case 5:
        c->a[0] = SCHEDOP_pin_override;
        c->a[1] = gen_struct(sizeof(struct sched_pin_override));
        return;
    default:
        c->a[0] = 8 + below(64);         /* unknown sub-ops */
        c->a[1] = gen_struct(32);
        return;
    }
}

static void gen_vcpu_op(struct call *c)
{
    static const uint64_t ids[] = { 0, 0, 1, 2, 31, 32, 127, 128, 0x7fffffff, 0xffffffff };
    uint64_t cmd = one_in(8) ? gen_val() : below(16);
    uint64_t id = ids[below(ARRAY_SIZE(ids))];
    if ((cmd & 0xffffffff) == VCPUOP_down && (id & 0xffffffff) == 0)
        id = 1;                          /* taking ourselves offline ends the run */
    c->a[0] = cmd;
    c->a[1] = id;
    c->a[2] = gen_struct(64);
    if ((cmd & 0xffffffff) == VCPUOP_set_singleshot_timer && in_scratch(c->a[2], 16))
        FIELD(c->a[2], struct vcpu_set_singleshot_timer)->timeout_abs_ns =
            now_ns + below(1000000);
}

static void gen_grant_op(struct call *c)
{
    uint64_t cmd = one_in(8) ? gen_val() : below(14);
    uint64_t count = one_in(2) ? 1 + below(4) : gen_count();
    uint64_t p;
    switch (cmd) {
    case GNTTABOP_map_grant_ref: {
        unsigned n = count < 8 ? (unsigned)count : 1;
        p = gen_struct(n * sizeof(struct gnttab_map_grant_ref));
        if (in_scratch(p, n * sizeof(struct gnttab_map_grant_ref)))
            for (unsigned i = 0; i < n; i++) {
                struct gnttab_map_grant_ref *m = FIELD(p, struct gnttab_map_grant_ref) + i;
                m->host_addr = gen_gfn() << PAGE_SHIFT;
                m->flags = one_in(4) ? (uint32_t)gen_val()
                                     : GNTMAP_host_map | (one_in(2) ? GNTMAP_readonly : 0);
                m->ref = (grant_ref_t)gen_ref();
                m->dom = (domid_t)gen_domid();
            }
        break;
    }
    case GNTTABOP_copy: {
        unsigned n = count < 8 ? (unsigned)count : 1;
        p = gen_struct(n * sizeof(struct gnttab_copy));
        if (in_scratch(p, n * sizeof(struct gnttab_copy)))
            for (unsigned i = 0; i < n; i++) {
                struct gnttab_copy *g = FIELD(p, struct gnttab_copy) + i;
                g->flags = (uint16_t)below(8);
                if (g->flags & GNTCOPY_source_gref)
                    g->source.u.ref = (grant_ref_t)gen_ref();
                else
                    g->source.u.gmfn = gen_gfn();
                if (g->flags & GNTCOPY_dest_gref)
                    g->dest.u.ref = (grant_ref_t)gen_ref();
                else
                    g->dest.u.gmfn = gen_gfn();
                g->source.domid = (domid_t)gen_domid();
                g->dest.domid = (domid_t)gen_domid();
                g->source.offset = (uint16_t)(one_in(2) ? below(4097) : gen_val());
                g->dest.offset = (uint16_t)(one_in(2) ? below(4097) : gen_val());
                g->len = (uint16_t)(one_in(2) ? below(4097) : gen_val());
            }
        break;
    }
    case GNTTABOP_setup_table:
        p = gen_struct(sizeof(struct gnttab_setup_table));
        if (in_scratch(p, sizeof(struct gnttab_setup_table))) {
            struct gnttab_setup_table *s = FIELD(p, struct gnttab_setup_table);
            s->dom = (domid_t)gen_domid();
            s->nr_frames = (uint32_t)(one_in(2) ? below(70) : gen_count());
            set_xen_guest_handle(s->frame_list, (xen_pfn_t *)(uintptr_t)gen_ptr(64));
        }
        break;
    case GNTTABOP_set_version:
        /* Switching to v2 and back reshapes the table under the mappings above. */
        p = gen_struct(sizeof(struct gnttab_set_version));
        if (in_scratch(p, 4))
            FIELD(p, struct gnttab_set_version)->version = (uint32_t)(one_in(4) ? gen_val()
                                                                              : below(4));
        break;
    default:
        p = gen_struct(64);
        break;
    }
    c->a[0] = cmd;
    c->a[1] = p;
    c->a[2] = count;
}

static void gen_evtchn_op(struct call *c)
{
    uint64_t cmd = one_in(8) ? gen_val() : below(18);
    uint64_t p = gen_struct(32);
    if (in_scratch(p, 32)) {
        /* Most structures start with ports and domids: make the first words plausible. */
        uint32_t *w = FIELD(p, uint32_t);
        if (one_in(2))
            w[0] = (uint32_t)gen_port();
        if (one_in(2))
            w[1] = (uint32_t)gen_port();
        if (cmd == EVTCHNOP_alloc_unbound || cmd == EVTCHNOP_bind_interdomain) {
            FIELD(p, uint16_t)[0] = (uint16_t)gen_domid();
            FIELD(p, uint16_t)[1] = (uint16_t)gen_domid();
        }
        if (cmd == EVTCHNOP_init_control) {
            FIELD(p, struct evtchn_init_control)->control_gfn = gen_gfn();
            FIELD(p, struct evtchn_init_control)->offset = (uint32_t)(one_in(2)
                ? below(PAGE_SIZE / 64) * 64 : gen_val());
            FIELD(p, struct evtchn_init_control)->vcpu = (uint32_t)below(3);
        }
        if (cmd == EVTCHNOP_expand_array)
            FIELD(p, struct evtchn_expand_array)->array_gfn = gen_gfn();
    }
    c->a[0] = cmd;
    c->a[1] = p;
}

static void gen_hvm_op(struct call *c)
{
    uint64_t op = one_in(8) ? gen_val() : below(30);
    uint64_t p = gen_struct(64);
    if (op == HVMOP_set_param || op == HVMOP_get_param) {
        /* Xen crashes a domain that sets its own VM86 TSS above 4 GiB: the structure is a
         * private one (an earlier batch entry could rewrite scratch), the value checked. */
        bool priv = !one_in(16);
        p = priv ? private_struct() : unreadable_ptr();
        if (priv) {
            struct xen_hvm_param *h = FIELD(p, struct xen_hvm_param);
            h->domid = (domid_t)(one_in(2) ? DOMID_SELF : gen_domid());
            h->index = (uint32_t)(one_in(8) ? gen_val() : below(HVM_NR_PARAMS + 4));
            h->value = gen_val();
            if (h->index == HVM_PARAM_VM86_TSS)
                h->value &= 0xffffffff;
        }
    }
    c->a[0] = op;
    c->a[1] = p;
}

static void gen_any(struct call *c, unsigned nargs)
{
    for (unsigned i = 0; i < nargs; i++)
        c->a[i] = one_in(2) ? gen_struct(64) : gen_val();
}

/* One call, its number and arguments. `batch`: for a multicall entry (no nested batches). */
static void gen_call(struct call *c, bool batch)
{
    static const unsigned nrs[] = {
        __HYPERVISOR_memory_op, __HYPERVISOR_memory_op, __HYPERVISOR_memory_op,
        __HYPERVISOR_xen_version, __HYPERVISOR_console_io, __HYPERVISOR_grant_table_op,
        __HYPERVISOR_grant_table_op, __HYPERVISOR_grant_table_op, __HYPERVISOR_vcpu_op,
        __HYPERVISOR_vcpu_op, __HYPERVISOR_sched_op, __HYPERVISOR_event_channel_op,
        __HYPERVISOR_event_channel_op, __HYPERVISOR_event_channel_op, __HYPERVISOR_physdev_op,
        __HYPERVISOR_hvm_op, __HYPERVISOR_hvm_op, __HYPERVISOR_sysctl, __HYPERVISOR_domctl,
        __HYPERVISOR_xsm_op, __HYPERVISOR_set_timer_op, __HYPERVISOR_multicall,
        __HYPERVISOR_mmuext_op, __HYPERVISOR_hypfs_op, __HYPERVISOR_dm_op,
        __HYPERVISOR_xenpmu_op, __HYPERVISOR_argo_op, __HYPERVISOR_platform_op,
        __HYPERVISOR_mmu_update, __HYPERVISOR_update_va_mapping, __HYPERVISOR_callback_op,
        __HYPERVISOR_kexec_op, __HYPERVISOR_iret, __HYPERVISOR_multicall,
    };
    memset(c, 0, sizeof(*c));
    /* Half of all lone calls are batches: a multicall's entries are dispatched by the
     * hypervisor like any call, and cost no exit each. */
    if (!batch && one_in(2)) {
        c->nr = __HYPERVISOR_multicall;
        return;
    }
    c->nr = one_in(32) ? (unsigned)(one_in(2) ? below(128) : gen_val()) : nrs[below(ARRAY_SIZE(nrs))];
    switch (c->nr) {
    case __HYPERVISOR_memory_op: gen_memory_op(c); break;
    case __HYPERVISOR_sched_op: gen_sched_op(c, batch); break;
    case __HYPERVISOR_vcpu_op: gen_vcpu_op(c); break;
    case __HYPERVISOR_grant_table_op: gen_grant_op(c); break;
    case __HYPERVISOR_event_channel_op: gen_evtchn_op(c); break;
    case __HYPERVISOR_hvm_op: gen_hvm_op(c); break;
    case __HYPERVISOR_console_io:
        /* Long writes only where the guard page ends them within a page: what a domain
         * prints is the host's to keep. */
        c->a[0] = one_in(4) ? gen_val() : below(3);
        c->a[1] = one_in(8) ? gen_count() : below(80);
        c->a[2] = c->a[1] <= 80 ? gen_ptr(c->a[1])
                                : SCRATCH_VA + SCRATCH_SIZE - 1 - below(PAGE_SIZE);
        break;
    case __HYPERVISOR_xen_version:
        c->a[0] = one_in(8) ? gen_val() : below(14);
        c->a[1] = gen_struct(1024);
        break;
    case __HYPERVISOR_set_timer_op:
        c->a[0] = one_in(2) ? now_ns + below(2000000) : gen_val();
        break;
    case __HYPERVISOR_multicall:
        if (batch) {                      /* a multicall inside a multicall: -EINVAL */
            c->a[0] = gen_ptr(64);
            c->a[1] = gen_count();
        }
        /* else: filled by the caller, which owns the batch */
        break;
    default:
        gen_any(c, 5);
        break;
    }
}

/* ---- issuing calls ------------------------------------------------------------------- */

/* The hypercall transport itself (the hypercall page's stub without its CPL check), so
 * that any number reaches the hypervisor, the PV-only and out-of-range ones included. */
static long raw_hypercall(uint32_t nr, const uint64_t *a)
{
    register uint64_t r10 asm("r10") = a[3];
    register uint64_t r8 asm("r8") = a[4];
    uint64_t rdi = a[0], rsi = a[1], rdx = a[2];
    long ret;
    asm volatile("outl %%eax, $0xe8"
                 : "=a"(ret), "+D"(rdi), "+S"(rsi), "+d"(rdx), "+r"(r10), "+r"(r8)
                 : "a"((uint64_t)nr)
                 : "memory", "cc");
    return ret;
}

/* The multicall list ends where the guard page after BATCH_VA starts: a count past it
 * reads nothing of ours. It is an image page (so no call can name its frame), aliased. */
static uint8_t batch_page[PAGE_SIZE] ALIGNED(PAGE_SIZE);
#define batch ((multicall_entry_t *)(BATCH_VA + PAGE_SIZE - BATCH_MAX * sizeof(multicall_entry_t)))
static uint64_t calls_done, mutations_done;
static bool tracing;                      /* trace=1: print every call before making it */

static void trace_call(const char *how, unsigned nr, const uint64_t *a)
{
    if (!tracing)
        return;
    printf("\nFUZZ %lu %s %u %#lx %#lx %#lx %#lx %#lx\n", calls_done, how, nr, a[0], a[1],
           a[2], a[3], a[4]);
    for (unsigned k = 0; k < 3; k++)     /* what the structures the call reads hold */
        if (in_scratch(a[k], 32)) {
            const uint64_t *w = (const uint64_t *)(uintptr_t)a[k];
            printf("FUZZ   arg%u: %#lx %#lx %#lx %#lx\n", k, w[0], w[1], w[2], w[3]);
            if (in_scratch(w[0], 32))
                printf("FUZZ     *: %#lx %#lx %#lx %#lx\n", FIELD(w[0], uint64_t)[0],
                       FIELD(w[0], uint64_t)[1], FIELD(w[0], uint64_t)[2],
                       FIELD(w[0], uint64_t)[3]);
        }
}
static uint64_t results[6];               /* 0, positive, -EFAULT, -EINVAL, -ENOSYS, other */

static void tally(long r)
{
    if (r == 0) results[0]++;
    else if (r > 0) results[1]++;
    else if (r == EFAULT_) results[2]++;
    else if (r == EINVAL_) results[3]++;
    else if (r == ENOSYS_) results[4]++;
    else results[5]++;
}

/* Put back window B's page table (a call may have written it: it is a pointer target). */
static void repair_winb(void)
{
    for (unsigned i = 0; i < WINB_PAGES; i++)
        if (winb_pt[i] != winb_pte[i]) {
            winb_pt[i] = winb_pte[i];
            invlpg(WINB_VA + i * PAGE_SIZE);
        }
    for (unsigned i = WINB_PAGES; i < 512; i++)
        if (winb_pt[i]) {
            winb_pt[i] = 0;
            invlpg(WINB_VA + i * PAGE_SIZE);
        }
}

/* A call may have taken scratch pages away (decrease_reservation, exchange, a move):
 * writing to a hole is an MMIO exit per store, so a page that reads as one (all ones) is
 * populated again and refilled. */
static void restore_scratch(void)
{
    for (unsigned i = 0; i < SCRATCH_PAGES; i++) {
        volatile uint64_t *page = (volatile uint64_t *)(SCRATCH_VA + i * PAGE_SIZE);
        if (page[0] != ~0ULL || page[PAGE_SIZE / 8 - 1] != ~0ULL)
            continue;
        xen_pfn_t gfn = sac_gfn + i;
        struct xen_memory_reservation r = { .nr_extents = 1, .domid = DOMID_SELF };
        set_xen_guest_handle(r.extent_start, &gfn);
        HYPERVISOR_memory_op(XENMEM_populate_physmap, &r);
        fill_words((void *)page, PAGE_SIZE);
    }
}

static void one_call(void)
{
    struct call c;
    refill_lists();
    cur_slot = 0;
    gen_call(&c, false);
    if (c.nr == __HYPERVISOR_multicall) {
        unsigned n = (unsigned)(1 + below(BATCH_MAX));
        for (unsigned i = 0; i < n; i++) {
            struct call e;
            cur_slot = i + 1;
            gen_call(&e, true);
            batch[i].op = e.nr;
            batch[i].result = 0xdeadbeef;
            for (unsigned k = 0; k < 5; k++)
                batch[i].args[k] = e.a[k];
            trace_call("batch", e.nr, e.a);
        }
        long r = HYPERVISOR_multicall(batch, one_in(16) ? (unsigned long)gen_count() & 0xff : n);
        tally(r);
        for (unsigned i = 0; i < n; i++)
            if (batch[i].result != 0xdeadbeef)
                tally((long)batch[i].result);
        calls_done += n;
        restore_scratch();
    } else if (c.nr < 128 && c.nr != __HYPERVISOR_iret && c.nr != __HYPERVISOR_sched_op &&
               c.nr != __HYPERVISOR_memory_op && one_in(16)) {
        /* The same call from 32-bit code (compat layouts) -- but not the calls whose
         * structures our safety rests on: read as compat, a frame list's high halves are
         * frame 0, and a poll's timeout is another field. */
        trace_call("compat", c.nr, c.a);
        tally(compat_hypercall(c.nr, c.a[0], c.a[1], c.a[2], c.a[3], c.a[4]));
        calls_done++;
    } else {
        trace_call("call", c.nr, c.a);
        tally(raw_hypercall(c.nr, c.a));
        calls_done++;
        if (c.nr == __HYPERVISOR_memory_op || c.nr == __HYPERVISOR_grant_table_op)
            restore_scratch();
    }
    repair_winb();
}

/* ---- ring mutations -------------------------------------------------------------- */

/* A ring page the fuzzer took away (decrease_reservation of a special frame) is a hole:
 * every store to it is an MMIO exit, so it is left alone for a while. */
static unsigned ring_gone[3 + GNT_FRAMES];

static bool ring_page_gone(unsigned which, volatile uint64_t *page)
{
    if (ring_gone[which]) {
        ring_gone[which]--;
        return true;
    }
    if (page[0] == ~0ULL && page[PAGE_SIZE / 8 - 1] == ~0ULL) {
        ring_gone[which] = 4096;
        return true;
    }
    return false;
}

static void mutate_ring(void)
{
    uint8_t *page;
    evtchn_port_t port;
    unsigned which = (unsigned)below(4);
    if (which == 3) {
        /* shared_info (the runtime mapped it at boot): pending and mask bits, vcpu_info,
         * the time fields -- all of it the hypervisor reads back. Interrupts are off, so
         * an upcall it makes pending is never taken. */
        if (!shared_info || ring_page_gone(2, (volatile uint64_t *)shared_info))
            return;
        fill_words((uint8_t *)shared_info + 8 * below(PAGE_SIZE / 8 - 4), 8 * (1 + below(4)));
        mutations_done++;
        return;
    }
    if (which < 2 && ring_page_gone(which, (volatile uint64_t *)(which ? CONS_VA : STORE_VA)))
        which = 2;
    if (which == 0 && have_store) {
        page = (uint8_t *)STORE_VA;
        port = store_port;
    } else if (which == 1 && have_cons) {
        page = (uint8_t *)CONS_VA;
        port = cons_port;
    } else if (have_gnt) {
        /* A grant entry: any flags, any domid, any frame (as 32-bit words, harmless). */
        unsigned frame = (unsigned)below(GNT_FRAMES);
        uint64_t at = GNT_VA + frame * PAGE_SIZE;
        if (ring_page_gone(3 + frame, (volatile uint64_t *)at))
            return;
        fill_words((uint32_t *)(at + 8 * below(PAGE_SIZE / 8)), 8);
        mutations_done++;
        return;
    } else {
        return;
    }
    unsigned kind = (unsigned)below(4);
    if (kind == 0) {
        /* Indices: the last 16..32 bytes of the used part of both ring layouts. */
        uint32_t *idx = (uint32_t *)(page + (which == 0 ? 2048 : 3072));
        for (unsigned i = 0; i < 4; i++)
            if (one_in(2))
                idx[i] = (uint32_t)(one_in(2) ? gen_val() : idx[i] + below(4096) - 2048);
    } else if (kind == 1) {
        /* A plausible XenStore header followed by junk, at the producer's place. */
        if (which == 0) {
            volatile struct xenstore_domain_interface *x = (void *)page;
            struct xsd_sockmsg h = {
                .type = (uint32_t)(one_in(2) ? below(XS_TYPE_COUNT + 2) : gen_val()),
                .req_id = (uint32_t)rnd(), .tx_id = (uint32_t)(one_in(2) ? 0 : gen_val()),
                .len = (uint32_t)(one_in(2) ? below(64) : gen_val()),
            };
            for (unsigned i = 0; i < sizeof(h); i++)
                x->req[(x->req_prod + i) % XENSTORE_RING_SIZE] = ((uint8_t *)&h)[i];
            for (unsigned i = 0; i < 64; i++)
                x->req[(x->req_prod + sizeof(h) + i) % XENSTORE_RING_SIZE] = (uint8_t)rnd();
            x->req_prod += sizeof(h) + (uint32_t)below(65);
        } else {
            fill_words(page + 8 * below(128), 64);
        }
    } else {
        fill_words(page + 4 * below(PAGE_SIZE / 4 - 16), 4 * (1 + below(16)));
    }
    struct evtchn_send s = { .port = port };
    HYPERVISOR_event_channel_op(EVTCHNOP_send, &s);
    mutations_done++;
}

/* ---- set-up -------------------------------------------------------------------------- */

/* NULL and the first MiB unmapped, as a kernel leaves them: a NULL pointer with a large
 * count would otherwise walk up into our image (the boot identity map is 2 MiB pages). */
static uint64_t low_pt[512] ALIGNED(PAGE_SIZE);

static void unmap_first_mib(void)
{
    uint64_t *pml4 = (uint64_t *)(uintptr_t)(read_cr3() & ~0xfffULL);
    uint64_t *pdpt = (uint64_t *)(uintptr_t)(pml4[0] & 0xffffffffff000ULL);
    uint64_t *pd = (uint64_t *)(uintptr_t)(pdpt[0] & 0xffffffffff000ULL);
    for (unsigned i = 256; i < 512; i++)
        low_pt[i] = ((uint64_t)i << PAGE_SHIFT) | PTE_P | PTE_W;
    pd[0] = virt_to_phys(low_pt) | PTE_P | PTE_W;
    asm volatile("mov %0, %%cr3" :: "r"(read_cr3()) : "memory");
}

extern void nmi_return(void);
asm(".text\nnmi_return: iretq\n");

static bool set_up(void)
{
    uint64_t seed = 1;
    const char *v;
    if ((v = cmdline_get("seed")))
        seed = strtoul(v, NULL, 0);
    if ((v = cmdline_get("peer")))
        peer = (unsigned)strtoul(v, NULL, 0);
    rng = seed * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
    self = boot.domid_present ? boot.domid : DOMID_SELF;
    ram_pages = boot.ram_top >> PAGE_SHIFT;
    sac_gfn = (ram_pages / 2) & ~0x1fffULL;
    uint64_t end = (uint64_t)(uintptr_t)_image_end;
    if ((uint64_t)(uintptr_t)boot.start_info > end)
        end = (uint64_t)(uintptr_t)boot.start_info;
    crit_end_gfn = (end >> PAGE_SHIFT) + 64;       /* start_info, memmap, cmdline after it */
    info("fuzz_seed", "%lu", seed);
    info("fuzz_layout", "ram_pages=%#lx sacrificial_from=%#lx vital_below=%#lx", ram_pages,
         sac_gfn, crit_end_gfn);
    if (sac_gfn < crit_end_gfn + 64 || sac_gfn < 0x2000) {
        test_fail("fuzz.layout", "needs at least 64 MiB of RAM (has %lu pages)", ram_pages);
        return false;
    }
    install_interrupt_gate(2, nmi_return);  /* an NMI sent by a call must not kill us */
    unmap_first_mib();

    for (unsigned i = 0; i < SCRATCH_PAGES; i++)
        map_4k(SCRATCH_VA + i * PAGE_SIZE, (sac_gfn + i) << PAGE_SHIFT, PTE_P | PTE_W);
    map_4k(RO_VA, (sac_gfn + 16) << PAGE_SHIFT, PTE_P);
    map_4k(MMIO_VA, 0xfee00000ULL, PTE_P | PTE_W | 0x18 /* PCD|PWT */);
    map_4k(HOLE_VA, (ram_pages + 0x100) << PAGE_SHIFT, PTE_P | PTE_W);
    have_store = map_service_ring(HVM_PARAM_STORE_PFN, HVM_PARAM_STORE_EVTCHN, STORE_VA,
                                  &store_port) == 0;
    have_cons = map_service_ring(HVM_PARAM_CONSOLE_PFN, HVM_PARAM_CONSOLE_EVTCHN, CONS_VA,
                                 &cons_port) == 0;
    store_pfn = cons_pfn = 0;
    hvm_get_param(DOMID_SELF, HVM_PARAM_STORE_PFN, &store_pfn);
    hvm_get_param(DOMID_SELF, HVM_PARAM_CONSOLE_PFN, &cons_pfn);
    /* Our grant table's frames, at sacrificial frames, aliased. */
    have_gnt = true;
    for (unsigned i = 0; i < GNT_FRAMES; i++) {
        struct xen_add_to_physmap x = { .domid = DOMID_SELF, .space = XENMAPSPACE_grant_table,
                                        .idx = i, .gpfn = sac_gfn + 20 + i };
        if (HYPERVISOR_memory_op(XENMEM_add_to_physmap, &x) != 0)
            have_gnt = false;
        map_4k(GNT_VA + i * PAGE_SIZE, (sac_gfn + 20 + i) << PAGE_SHIFT, PTE_P | PTE_W);
    }
    map_4k(BATCH_VA, virt_to_phys(batch_page), PTE_P | PTE_W);
    for (unsigned i = 0; i <= PRIV_PAGES; i++)      /* the structures' pages, the list's */
        map_4k(PRIV_VA + i * PAGE_SIZE, virt_to_phys(private_pages + i * PAGE_SIZE),
               PTE_P | PTE_W);
    list_used = PAGE_SIZE / 8;
    refill_lists();
    hvm_get_time(&now_ns);
    for (unsigned i = 0; i < WINB_PAGES; i++)
        map_4k(WINB_VA + i * PAGE_SIZE, (sac_gfn + 32 + i) << PAGE_SHIFT, PTE_P | PTE_W);
    /* Window B's page table: find it through the page tables, expose it writable. */
    uint64_t *pml4 = (uint64_t *)(uintptr_t)(read_cr3() & ~0xfffULL);
    uint64_t *pdpt = (uint64_t *)(uintptr_t)(pml4[(WINB_VA >> 39) & 511] & 0xffffffffff000ULL);
    uint64_t *pd = (uint64_t *)(uintptr_t)(pdpt[(WINB_VA >> 30) & 511] & 0xffffffffff000ULL);
    winb_pt = (uint64_t *)(uintptr_t)(pd[(WINB_VA >> 21) & 511] & 0xffffffffff000ULL);
    for (unsigned i = 0; i < WINB_PAGES; i++)
        winb_pte[i] = winb_pt[i];
    map_4k(PT_ALIAS_VA, virt_to_phys(winb_pt), PTE_P | PTE_W);
    fill_words((void *)SCRATCH_VA, SCRATCH_SIZE);
    info("fuzz_rings", "store=%d console=%d grant_table=%d", have_store, have_cons, have_gnt);
    return true;
}

/* ---- after the storm: the domain still works ------------------------------------------ */

static void still_works(void)
{
    check_eq("fuzz.xen_version_after", HYPERVISOR_xen_version(XENVER_version, NULL),
             (4 << 16) | 17);
    /* Our event channels may all be taken or closed: a reset gives them back. */
    struct evtchn_reset r = { .dom = DOMID_SELF };
    check_eq("fuzz.evtchn_reset_after", HYPERVISOR_event_channel_op(EVTCHNOP_reset, &r), 0);
    struct evtchn_alloc_unbound a = { .dom = DOMID_SELF, .remote_dom = DOMID_SELF };
    check_eq("fuzz.evtchn_alloc_after", HYPERVISOR_event_channel_op(EVTCHNOP_alloc_unbound, &a),
             0);
    /* A sacrificial frame given back and populated again holds what we write. */
    xen_pfn_t gfn = sac_gfn + 100;
    struct xen_memory_reservation res = { .nr_extents = 1, .domid = DOMID_SELF };
    set_xen_guest_handle(res.extent_start, &gfn);
    HYPERVISOR_memory_op(XENMEM_decrease_reservation, &res);
    gfn = sac_gfn + 100;
    long rc = HYPERVISOR_memory_op(XENMEM_populate_physmap, &res);
    volatile uint64_t *page = (volatile uint64_t *)((sac_gfn + 100) << PAGE_SHIFT);
    page[7] = 0x5eed5eed5eed5eedULL;
    check("fuzz.memory_after", rc == 1 && page[7] == 0x5eed5eed5eed5eedULL,
          "populate_physmap gave %ld, read back %#lx", rc, page[7]);
    uint64_t t0, t1;
    hvm_get_time(&t0);
    sleep_until(t0 + 1000000);
    hvm_get_time(&t1);
    check("fuzz.time_after", t1 >= t0 + 1000000, "slept from %lu to %lu", t0, t1);
}

static void report(void)
{
    info("fuzz_progress", "calls=%lu mutations=%lu ok=%lu positive=%lu efault=%lu einval=%lu "
         "enosys=%lu other=%lu", calls_done, mutations_done, results[0], results[1],
         results[2], results[3], results[4], results[5]);
}

static int fuzz_main(void)
{
    uint64_t calls = 100000, every = 0;
    const char *v;
    if ((v = cmdline_get("calls")))
        calls = strtoul(v, NULL, 0);
    if ((v = cmdline_get("report")))
        every = strtoul(v, NULL, 0);
    tracing = cmdline_has("trace");
    if (!set_up())
        return 0;
    asm volatile("cli");
    uint64_t next_report = every;
    for (uint64_t round = 1; calls == 0 || calls_done < calls; round++) {
        if (one_in(3))
            mutate_ring();
        else
            one_call();
        if ((round & 0xff) == 0)
            hvm_get_time(&now_ns);
        if ((round & 0xfff) == 0)
            fill_words((void *)SCRATCH_VA, SCRATCH_SIZE);
        if (every && calls_done >= next_report) {
            report();
            next_report += every;
        }
    }
    report();
    info("fuzz_calls", "%lu", calls_done);
    info("fuzz_mutations", "%lu", mutations_done);
    test_pass("fuzz.survived");
    still_works();
    return 0;
}

/* ---- the witness -------------------------------------------------------------------- */

#define WITNESS_PAGES 2048                  /* 8 MiB of pattern */

static uint64_t pattern(uint64_t seed, uint64_t addr)
{
    uint64_t x = (addr ^ seed) * 0x9E3779B97F4A7C15ULL;
    return x ^ (x >> 29);
}

static int witness_main(void)
{
    uint64_t seed = 1, seconds = 10;
    const char *v;
    if ((v = cmdline_get("seed")))
        seed = strtoul(v, NULL, 0);
    if ((v = cmdline_get("seconds")))
        seconds = strtoul(v, NULL, 0);
    if ((v = cmdline_get("peer")))
        peer = (unsigned)strtoul(v, NULL, 0);
    ram_pages = boot.ram_top >> PAGE_SHIFT;
    uint64_t base = (ram_pages / 2) << PAGE_SHIFT;
    if (ram_pages / 2 < WITNESS_PAGES + 64 || ram_pages / 2 < 0x400) {
        test_fail("witness.layout", "needs at least 32 MiB of RAM");
        return 0;
    }
    volatile uint64_t *mem = (volatile uint64_t *)base;
    for (uint64_t i = 0; i < WITNESS_PAGES * PAGE_SIZE / 8; i++)
        mem[i] = pattern(seed, base + i * 8);
    /* One page granted to the peer, read-write: the only page it may change. */
    static uint8_t frames[PAGE_SIZE] ALIGNED(PAGE_SIZE);
    uint64_t shared_gfn = (base >> PAGE_SHIFT) + WITNESS_PAGES + 8;
    long g = gnttab_setup(frames, 1);
    if (g == 0)
        for (grant_ref_t ref = GNTTAB_FIRST_REF; ref < GNTTAB_FIRST_REF + 8; ref++)
            gnttab_grant(ref, (domid_t)peer, shared_gfn, GTF_permit_access);
    info("witness_grants", "peer=%u rc=%ld", peer, g);
    bool store = xs_open() == 0;
    printf("witness: watching 8 MiB until data/stop (at most %lu s)\n", seconds);

    uint64_t start, now;
    hvm_get_time(&start);
    uint64_t rounds = 0, bad_words = 0, bad_calls = 0, first_bad = 0;
    do {
        for (uint64_t i = 0; i < WITNESS_PAGES * PAGE_SIZE / 8; i++)
            if (mem[i] != pattern(seed, base + i * 8)) {
                if (!bad_words)
                    first_bad = base + i * 8;
                bad_words++;
                mem[i] = pattern(seed, base + i * 8);
            }
        if (HYPERVISOR_xen_version(XENVER_version, NULL) != ((4 << 16) | 17))
            bad_calls++;
        struct evtchn_alloc_unbound a = { .dom = DOMID_SELF, .remote_dom = DOMID_SELF };
        if (HYPERVISOR_event_channel_op(EVTCHNOP_alloc_unbound, &a) != 0)
            bad_calls++;
        else {
            struct evtchn_close cl = { .port = a.port };
            if (HYPERVISOR_event_channel_op(EVTCHNOP_close, &cl) != 0)
                bad_calls++;
        }
        rounds++;
        char stop[16];
        if (store && xs_read(0, "data/stop", stop, sizeof(stop)) == XS_READ)
            break;
        hvm_get_time(&now);
        sleep_until(now + 20000000);            /* 20 ms */
        hvm_get_time(&now);
    } while (now - start < seconds * 1000000000ULL);
    info("witness_rounds", "%lu", rounds);
    check("witness.memory_intact", bad_words == 0, "%lu words changed, the first at %#lx",
          bad_words, first_bad);
    check("witness.hypercalls_answer", bad_calls == 0, "%lu calls gave wrong answers",
          bad_calls);
    return 0;
}

int guest_main(void)
{
    const char *role = cmdline_get("role");
    if (role && strcmp(role, "witness") == 0)
        return witness_main();
    return fuzz_main();
}
