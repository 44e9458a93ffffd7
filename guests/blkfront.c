/*
 * blkfront: Linux's xen-blkfront in miniature. The guest finds its virtual disk in XenStore,
 * connects to the back end with blkfront's handshake (drivers/block/xen-blkfront.c:
 * talk_to_blkback, blkfront_connect) and exercises the blkif protocol of Xen's public
 * io/blkif.h (included, never copied): reads and writes of whole pages and of sectors within
 * a page, indirect requests, flush, discard, the error answers, a reconnection.
 *
 * Store (libxl's layout; D = our domid, V = the vdev, e.g. 51712 for xvda):
 *   device/vbd/V/ (ours): backend, backend-id, state, virtual-device, device-type; we write
 *     ring-ref (or ring-page-order + ring-ref0..N-1), event-channel, protocol and
 *     feature-persistent in one transaction (retried on EAGAIN), then state.
 *   /local/domain/<backend-id>/backend/vbd/D/V/ (the back's): state, max-ring-page-order,
 *     feature-max-indirect-segments, feature-persistent; once Connected also sectors,
 *     sector-size, info (VDISK_*), feature-flush-cache, feature-barrier, feature-discard,
 *     discard-granularity, discard-alignment.
 * V is the first entry of device/vbd, or `vdev=V`.
 *
 * Handshake: wait for the back's InitWait (2); read its features; grant the ring page(s) to
 * backend-id; EVTCHNOP_alloc_unbound for backend-id; the transaction; state Initialised (3);
 * wait for the back's Connected (4); read the disk's properties; state Connected (4).
 * Requests: io/ring.h through runtime/ring.h, RING_PUSH_REQUESTS_AND_CHECK_NOTIFY, responses
 * with RING_FINAL_CHECK_FOR_RESPONSES, sleeping in SCHEDOP_poll on our (masked) port. The
 * back may answer out of order: a response is matched to its request by id (the slot), and,
 * as blkif_interrupt does, an id with no request in flight or an operation other than the
 * request's (the inner one for BLKIF_OP_INDIRECT) is a protocol error.
 *
 * Data buffers: POOL_PAGES pages. With feature-persistent negotiated they are granted once
 * (writable, blkif.h note 8) and reused; without it each request grants its pages and ends
 * access when the response comes, which must succeed (gnttab_end_access: the back released
 * them before it answered; blkif_completion's "backend has not unmapped grant").
 *
 * The disk's content: the 8-byte little-endian word at disk byte offset o (o % 8 == 0) is
 *   pattern(o) = ((o >> 3) * 0x9E3779B97F4A7C15 + seed * 0x100000001B3) mod 2^64
 * (the host's test computes the same).
 *
 * mode=rw (a zero-filled disk of at least 4 MiB):
 *   .connect (sectors > 0, sector-size 512, >= 4 MiB, not VDISK_READONLY), .write_all
 *   (11-segment requests, several in flight), .write_indirect (BLKIF_OP_INDIRECT, 32
 *   segments, the first MiB again; only with feature-max-indirect-segments >= 32),
 *   .partial_sectors (sectors 2..5 of a page, written and read back; the rest of the read
 *   page untouched), .flush (if feature-flush-cache), .read_all (every byte), .discard (if
 *   feature-discard: 1 MiB at 1 MiB answers OKAY, then reads as zeros, the rest as the
 *   pattern), .beyond_end, .bad_segment, .bad_gref, .too_many_segments (BLKIF_RSP_ERROR),
 *   .unknown_op (BLKIF_RSP_EOPNOTSUPP), .still_works, .reconnect (Closing, Closed, the ring
 *   and data grants released and the back's end of the channel closed, Initialising, a new
 *   ring and port, the first 64 KiB read), .close.
 * mode=ro (the disk holds the pattern): .connect (VDISK_READONLY), .read_all,
 *   .write_refused (BLKIF_RSP_ERROR, content unchanged), .discard_refused (if offered: not
 *   OKAY, content unchanged), .close.
 * bench=1 (rw, any content): .connect, then sequential write and read of the whole disk
 *   (128 KiB requests: indirect if offered, else 11 segments; up to the ring's size in
 *   flight, at most MAX_SLOTS) and `randread` 4 KiB reads at random 4 KiB-aligned offsets,
 *   32 in flight, timed with the guest's clock (xen_now_ns); .bench (every request OKAY),
 *   .close. In-flight requests may share data pages here: nothing is checked.
 *
 * The xenbus half (finding the device, states, the transaction, closing) is
 * runtime/xenbus_front.c's, shared with netfront.
 *
 * cmdline: mode=rw|ro (default rw), seed=N (default 1), vdev=V, ring_order=K (0..4, capped
 *   by the back's max-ring-page-order; default 0), persistent=0|1 (default 1), bench=1,
 *   randread=N (default 20000).
 * INFO keys: vdev, backend, sectors, ring_pages, ring_size, indirect (segments used, 0 if
 *   none), persistent (negotiated), inflight, feature_flush_cache, feature_discard,
 *   feature_max_indirect_segments, notifies, polls, responses; with bench=1 also write_mbps,
 *   read_mbps, randread_iops, seq_bytes, randread_ios, write_ns, read_ns, randread_ns.
 */
#include "guest.h"
#include "evtchn.h"
#include "gnttab.h"
#include "xenbus_front.h"
#include "ring.h"              /* before blkif.h: Xen's io/ring.h with the kit's barriers */
#include <xen/io/blkif.h>
#include <xen/io/protocols.h>

#define MAX_RING_ORDER  4                    /* Linux's XENBUS_MAX_RING_GRANT_ORDER */
#define MAX_RING_PAGES  (1u << MAX_RING_ORDER)
#define POOL_PAGES      128                  /* data buffers (512 KiB) */
#define MAX_SLOTS       64                   /* requests in flight at most */
#define SEGS_INDIRECT   32                   /* segments of our indirect requests (128 KiB) */
#define SEGS_PER_PAGE   (PAGE_SIZE / sizeof(struct blkif_request_segment))
#define SECTOR          512u
#define SECT_PER_PAGE   (PAGE_SIZE / SECTOR)
#define MIN_RW_SECTORS  8192u                /* 4 MiB: what the host promises for mode=rw */
#define DISCARD_SECTOR  2048u                /* the discarded MiB: sectors 2048..4095 */
#define DISCARD_COUNT   2048u
#define PARTIAL_SECTOR  1003u                /* where .partial_sectors writes */
#define RANDREAD_DEPTH  32
#define PATTERN_MUL     0x9E3779B97F4A7C15ULL
#define PATTERN_SEED    0x100000001B3ULL
#define STATUS_NONE     ((int16_t)0x7fff)    /* no response (yet) */

/* Grant refs: two sets of ring pages (a reconnection uses the other), the data pool, one
 * indirect page per slot, and a ref that is never granted. */
#define REF_RING(set, i) (GNTTAB_FIRST_REF + (set) * MAX_RING_PAGES + (i))
#define REF_POOL        (GNTTAB_FIRST_REF + 2 * MAX_RING_PAGES)
#define REF_INDIRECT    (REF_POOL + POOL_PAGES)
#define REF_NEVER       (PAGE_SIZE / sizeof(grant_entry_v1_t) - 1)   /* 511: frame 0's last */
_Static_assert(REF_INDIRECT + MAX_SLOTS < REF_NEVER, "grant refs overlap");
_Static_assert(SEGS_INDIRECT <= SEGS_PER_PAGE, "one indirect page per request");

static uint8_t gt_page[PAGE_SIZE] ALIGNED(4096);                         /* grant table */
static uint8_t ring_mem[2][MAX_RING_PAGES * PAGE_SIZE] ALIGNED(4096);
static uint8_t pool[POOL_PAGES][PAGE_SIZE] ALIGNED(4096);
static struct blkif_request_segment ind_pages[MAX_SLOTS][SEGS_PER_PAGE] ALIGNED(4096);

/* The command line. */
static bool rw_mode = true, bench;
static uint64_t seed = 1;
static unsigned long want_order, want_persistent = 1, randread = 20000;

/* The device. */
static unsigned long vdev;
static struct {
    unsigned long max_ring_order, max_indirect, persistent, flush, barrier, discard,
        discard_gran, discard_align, sectors, sector_size, info;
} be;

/* The connection. */
static unsigned ring_set, ring_order;
static blkif_front_ring_t front;
static evtchn_port_t port;
static bool connected, persistent;
static unsigned indirect_segs, nslots;

/* Requests in flight: a slot per request; the slot's index is the request's id. */
union blkreq {
    blkif_request_t rw;
    blkif_request_discard_t discard;
    blkif_request_indirect_t ind;
};
_Static_assert(sizeof(union blkreq) == sizeof(blkif_request_t), "a request fills one entry");
struct slot {
    bool busy;
    bool indirect;               /* the slot's indirect page is in use */
    bool verify;                 /* check what was read against the disk's content */
    bool must_ok;                /* a status other than BLKIF_RSP_OKAY is a problem */
    uint8_t rsp_op;              /* the operation the response must carry */
    int16_t status;              /* the response's, or STATUS_NONE */
    uint16_t npages;             /* data pages the request uses (grant accounting) */
    uint16_t page[SEGS_INDIRECT];
    uint64_t offset;             /* disk byte offset of page[0]'s first byte (verify) */
    uint32_t bytes;              /* bytes read (verify) */
};
static struct slot slots[MAX_SLOTS];
static uint8_t free_slots[MAX_SLOTS];
static unsigned nfree, in_flight;
static uint16_t page_users[POOL_PAGES];

/* What went wrong: the first problem of the current step, and how many there were. */
static char why[256];
static unsigned long problems, bad_words;
static bool stalled;             /* requests left unanswered: the ring is not usable */
static uint64_t hole_lo, hole_hi;  /* disk bytes that read as zeros (the discarded range) */
static unsigned long notifies, polls, responses;

static void note(const char *fmt, ...) PRINTF_LIKE(1, 2);
static void note(const char *fmt, ...)
{
    if (problems++)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
}

/* The device's store nodes and our half of its xenbus state machine. */
static struct xenbus_front dev = { .class = "vbd", .token = "blkfront", .note = note };

static void reset_problems(void)
{
    problems = bad_words = 0;
    why[0] = 0;
}

/* ---- the disk's content ------------------------------------------------------------- */
static inline uint64_t pattern(uint64_t o)
{
    return (o >> 3) * PATTERN_MUL + seed * PATTERN_SEED;
}

static void fill(void *p, uint64_t off, uint32_t bytes, bool invert)
{
    uint64_t *w = p, v = pattern(off), x = invert ? ~0ULL : 0;
    for (uint32_t i = 0; i < bytes / 8; i++, v += PATTERN_MUL)
        w[i] = v ^ x;
}

static void verify(const void *p, uint64_t off, uint32_t bytes)
{
    const uint64_t *w = p;
    uint64_t v = pattern(off);
    bool holed = off < hole_hi && off + bytes > hole_lo;
    for (uint32_t i = 0; i < bytes / 8; i++, v += PATTERN_MUL) {
        uint64_t o = off + 8ULL * i, want = holed && o >= hole_lo && o < hole_hi ? 0 : v;
        if (w[i] != want) {
            if (!bad_words++)
                note("disk offset %#lx read %#lx, expected %#lx", (unsigned long)o,
                     (unsigned long)w[i], (unsigned long)want);
            else
                problems++;
        }
    }
}

/* ---- grants ------------------------------------------------------------------------- */
static void use_page(unsigned pg)
{
    if (page_users[pg]++ == 0 && !persistent)
        xbf_grant(&dev, REF_POOL + pg, pool[pg], false);
}

static void unuse_page(unsigned pg)
{
    if (--page_users[pg] == 0 && !persistent)
        xbf_take_back(&dev, REF_POOL + pg, "data page");
}

/* Persistent grants: every data and indirect page, once per connection. */
static void grant_all(void)
{
    for (unsigned i = 0; i < POOL_PAGES; i++)
        xbf_grant(&dev, REF_POOL + i, pool[i], false);
    for (unsigned i = 0; i < MAX_SLOTS; i++)
        xbf_grant(&dev, REF_INDIRECT + i, ind_pages[i], false);
}

/* ---- the ring ----------------------------------------------------------------------- */
static void reset_slots(unsigned n)
{
    nfree = 0;
    while (n)
        free_slots[nfree++] = (uint8_t)--n;
}

static void kick(void)
{
    int notify;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&front, notify);
    if (notify)
        notify_port(port), notifies++;
}

/* Put `u` (its id already the slot's) on the ring; the slot says which pages it uses. */
static void submit(unsigned s, const union blkreq *u)
{
    struct slot *sl = &slots[s];
    for (unsigned i = 0; i < sl->npages; i++)
        use_page(sl->page[i]);
    if (sl->indirect && !persistent)
        xbf_grant(&dev, REF_INDIRECT + s, ind_pages[s], false);
    sl->busy = true;
    sl->status = STATUS_NONE;
    memcpy(RING_GET_REQUEST(&front, front.req_prod_pvt), u, sizeof(*u));
    front.req_prod_pvt++;
    in_flight++;
}

/* One response, as blkif_interrupt takes it: 1 when it completed a request. */
static unsigned complete(const blkif_response_t *rsp)
{
    uint64_t id = rsp->id;
    if (id >= nslots || !slots[id].busy) {
        note("response id %lu matches no request in flight (status %d)", (unsigned long)id,
             rsp->status);
        return 0;
    }
    struct slot *sl = &slots[id];
    if (rsp->operation != sl->rsp_op)
        note("response to id %lu has operation %u, not %u", (unsigned long)id, rsp->operation,
             sl->rsp_op);
    sl->busy = false;
    sl->status = rsp->status;
    for (unsigned i = 0; i < sl->npages; i++)
        unuse_page(sl->page[i]);
    if (sl->indirect && !persistent)
        xbf_take_back(&dev, REF_INDIRECT + (grant_ref_t)id, "indirect page");
    if (sl->must_ok && rsp->status != BLKIF_RSP_OKAY)
        note("%s of %u bytes at disk offset %#lx: status %d",
             sl->rsp_op == BLKIF_OP_READ ? "read" : "write", sl->npages * (unsigned)PAGE_SIZE,
             (unsigned long)sl->offset, rsp->status);
    if (sl->verify && rsp->status == BLKIF_RSP_OKAY)
        for (unsigned i = 0; i < sl->npages; i++) {
            uint32_t left = sl->bytes - i * (uint32_t)PAGE_SIZE;
            verify(pool[sl->page[i]], sl->offset + i * PAGE_SIZE,
                   left < PAGE_SIZE ? left : (uint32_t)PAGE_SIZE);
        }
    free_slots[nfree++] = (uint8_t)id;
    in_flight--;
    responses++;
    return 1;
}

/* Take every response there is (RING_FINAL_CHECK_FOR_RESPONSES before giving up): how many
 * requests completed. */
static unsigned reap(void)
{
    unsigned done = 0;
    int more;
    do {
        RING_IDX rp = front.sring->rsp_prod;
        rmb();  /* the responses before the index that covers them */
        if (rp - front.rsp_cons > front.req_prod_pvt - front.rsp_cons) {
            note("rsp_prod %u: %u responses for %u requests", rp, rp - front.rsp_cons,
                 front.req_prod_pvt - front.rsp_cons);
            stalled = true;
            return done;
        }
        for (; front.rsp_cons != rp; front.rsp_cons++) {
            blkif_response_t rsp;
            RING_COPY_RESPONSE(&front, front.rsp_cons, &rsp);
            done += complete(&rsp);
        }
        RING_FINAL_CHECK_FOR_RESPONSES(&front, more);
    } while (more);
    return done;
}

/* Nothing moved: sleep on the port. False (and the ring given up) once nothing has moved
 * for WAIT_BOUND_NS since `idle_since`. */
static bool wait_io(uint64_t idle_since)
{
    uint64_t deadline = idle_since + WAIT_BOUND_NS;
    if (xen_now_ns() >= deadline) {
        note("%u request(s) unanswered for %lu s", in_flight,
             (unsigned long)(WAIT_BOUND_NS / 1000000000ULL));
        stalled = true;
        return false;
    }
    polls++;
    poll_port(port, deadline);
    return true;
}

/* A read or write of `nsect` sectors at `sector` in slot s, on pool pages base, base+1, ...
 * (mod POOL_PAGES): one segment per page, each page whole but maybe the last; with
 * `indirect`, a BLKIF_OP_INDIRECT request whose segments are in the slot's indirect page. */
static void build_rw(union blkreq *u, unsigned s, uint8_t op, uint64_t sector, unsigned nsect,
                     unsigned base, bool indirect)
{
    struct slot *sl = &slots[s];
    unsigned npages = (nsect + SECT_PER_PAGE - 1) / SECT_PER_PAGE;
    memset(u, 0, sizeof(*u));
    struct blkif_request_segment *seg = indirect ? ind_pages[s] : u->rw.seg;
    for (unsigned i = 0; i < npages; i++) {
        unsigned pg = (base + i) % POOL_PAGES, n = nsect - i * SECT_PER_PAGE;
        sl->page[i] = (uint16_t)pg;
        seg[i].gref = REF_POOL + pg;
        seg[i].first_sect = 0;
        seg[i].last_sect = (uint8_t)((n < SECT_PER_PAGE ? n : SECT_PER_PAGE) - 1);
    }
    sl->npages = (uint16_t)npages;
    sl->indirect = indirect;
    sl->verify = false;
    sl->must_ok = true;
    sl->offset = sector * SECTOR;
    sl->rsp_op = op;   /* blkif_interrupt: an indirect request's response carries indirect_op */
    if (indirect) {
        u->ind.operation = BLKIF_OP_INDIRECT;
        u->ind.indirect_op = op;
        u->ind.nr_segments = (uint16_t)npages;
        u->ind.id = s;
        u->ind.sector_number = sector;
        u->ind.handle = (blkif_vdev_t)vdev;
        u->ind.indirect_grefs[0] = REF_INDIRECT + s;
    } else {
        u->rw.operation = op;
        u->rw.nr_segments = (uint8_t)npages;
        u->rw.handle = (blkif_vdev_t)vdev;
        u->rw.id = s;
        u->rw.sector_number = sector;
    }
}

/* ---- streams of requests ------------------------------------------------------------ */
struct job {
    uint8_t op;
    uint64_t sector;
    unsigned nsect;
};
typedef bool (*next_fn)(struct job *j);

static struct {
    uint8_t op;
    uint64_t next, end;
    unsigned chunk;
} seq;

static bool seq_next(struct job *j)
{
    if (seq.next >= seq.end)
        return false;
    j->op = seq.op;
    j->sector = seq.next;
    j->nsect = seq.end - seq.next < seq.chunk ? (unsigned)(seq.end - seq.next) : seq.chunk;
    seq.next += j->nsect;
    return true;
}

static uint64_t rng_state;
static unsigned long rand_left;

static uint64_t rng(void)
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static bool rand_next(struct job *j)
{
    uint64_t blocks = be.sectors / SECT_PER_PAGE;
    if (!rand_left || !blocks)
        return false;
    rand_left--;
    j->op = BLKIF_OP_READ;
    j->sector = (rng() % blocks) * SECT_PER_PAGE;
    j->nsect = SECT_PER_PAGE;
    return true;
}

/* Requests from `next` of up to `pages` pages each, `depth` in flight, until all are
 * answered. With `data`, writes carry the pattern and reads are checked against the disk's
 * content (slots then never share pages: depth * pages <= POOL_PAGES). True when every
 * request was answered OKAY and nothing else went wrong. */
static bool run(next_fn next, unsigned pages, bool indirect, unsigned depth, bool data)
{
    if (stalled)
        return false;
    reset_slots(depth);
    bool more = true;
    uint64_t idle_since = xen_now_ns();
    for (;;) {
        bool moved = false;
        while (more && nfree) {
            struct job j;
            if (!(more = next(&j)))
                break;
            unsigned s = free_slots[--nfree];
            union blkreq u;
            build_rw(&u, s, j.op, j.sector, j.nsect, s * pages, indirect);
            if (data) {
                struct slot *sl = &slots[s];
                sl->bytes = j.nsect * SECTOR;
                sl->verify = j.op == BLKIF_OP_READ;
                for (unsigned i = 0; j.op == BLKIF_OP_WRITE && i < sl->npages; i++) {
                    uint32_t left = sl->bytes - i * (uint32_t)PAGE_SIZE;
                    fill(pool[sl->page[i]], sl->offset + i * PAGE_SIZE,
                         left < PAGE_SIZE ? left : (uint32_t)PAGE_SIZE, false);
                }
            }
            submit(s, &u);
            moved = true;
        }
        if (!more && !in_flight)
            break;   /* (the last job may turn out to be the last only now) */
        if (moved)
            kick();
        if (reap())
            moved = true;
        if (stalled)
            return false;
        if (moved)
            idle_since = xen_now_ns();
        else if (!wait_io(idle_since))
            return false;
    }
    return problems == 0;
}

/* The whole range [sector, sector + count) read or written with the pattern (or, for a
 * benchmark, whatever the pages hold). */
static bool sequential(uint8_t op, uint64_t sector, uint64_t count, bool indirect, bool data)
{
    unsigned pages = indirect ? SEGS_INDIRECT : BLKIF_MAX_SEGMENTS_PER_REQUEST;
    unsigned depth = nslots;
    if (data && depth > POOL_PAGES / pages)
        depth = POOL_PAGES / pages;
    seq.op = op;
    seq.next = sector;
    seq.end = sector + count;
    seq.chunk = pages * SECT_PER_PAGE;
    return run(seq_next, pages, indirect, depth, data);
}

/* One request alone in slot 0 (its id set here), using `npages` pool pages for grant
 * accounting: its status, or STATUS_NONE when no answer came. */
static int16_t one(union blkreq *u, uint8_t rsp_op, unsigned npages, const uint16_t *pages)
{
    if (stalled)
        return STATUS_NONE;
    reset_slots(1);
    struct slot *sl = &slots[free_slots[--nfree]];
    sl->npages = (uint16_t)npages;
    for (unsigned i = 0; i < npages; i++)
        sl->page[i] = pages[i];
    sl->indirect = sl->verify = sl->must_ok = false;
    sl->rsp_op = rsp_op;
    u->rw.id = 0;   /* id is at the same offset in every request layout */
    submit(0, u);
    kick();
    uint64_t idle_since = xen_now_ns();
    while (sl->busy) {
        if (reap())
            idle_since = xen_now_ns();
        else if (stalled || !wait_io(idle_since))
            return STATUS_NONE;
    }
    return sl->status;
}

/* A request of one segment on pool page 0 (or on `gref`), sectors first..last of it. */
static int16_t one_segment(uint8_t op, uint64_t sector, grant_ref_t gref, uint8_t first,
                           uint8_t last, uint8_t nr_segments)
{
    union blkreq u;
    memset(&u, 0, sizeof(u));
    u.rw.operation = op;
    u.rw.nr_segments = nr_segments;
    u.rw.handle = (blkif_vdev_t)vdev;
    u.rw.sector_number = sector;
    uint16_t pages[BLKIF_MAX_SEGMENTS_PER_REQUEST];
    unsigned n = nr_segments < BLKIF_MAX_SEGMENTS_PER_REQUEST ? nr_segments
                                                               : BLKIF_MAX_SEGMENTS_PER_REQUEST;
    for (unsigned i = 0; i < n; i++) {
        u.rw.seg[i].gref = i ? REF_POOL + i : gref;
        u.rw.seg[i].first_sect = i ? 0 : first;
        u.rw.seg[i].last_sect = i ? 7 : last;
        pages[i] = (uint16_t)i;
    }
    bool ours = gref == REF_POOL;   /* a ref we do not grant is not accounted */
    return one(&u, op, ours ? n : 0, pages);
}

/* ---- connecting and disconnecting --------------------------------------------------- */
static bool find_device(void)
{
    if (!xbf_find(&dev, cmdline_get("vdev")))
        return false;
    vdev = dev.id;
    info("vdev", "%lu", vdev);
    info("backend", "%s (domain %u)", dev.back, dev.back_id);
    return true;
}

/* The keys of talk_to_blkback's transaction. */
static bool write_keys(struct xenbus_front *f, uint32_t tx, void *arg)
{
    unsigned pages = 1u << ring_order;
    bool ok;
    if (pages == 1) {
        ok = xbf_put(f, tx, "ring-ref", "%u", REF_RING(ring_set, 0));
    } else {
        ok = xbf_put(f, tx, "ring-page-order", "%u", ring_order);
        for (unsigned i = 0; ok && i < pages; i++) {
            char name[16];
            snprintf(name, sizeof(name), "ring-ref%u", i);
            ok = xbf_put(f, tx, name, "%u", REF_RING(ring_set, i));
        }
    }
    return ok && xbf_put(f, tx, "event-channel", "%u", port) &&
           xbf_put(f, tx, "protocol", "%s", XEN_IO_PROTO_ABI_X86_64) &&
           xbf_put(f, tx, "feature-persistent", "%lu", want_persistent);
}

/* talk_to_blkback: ring, port, the transaction, Initialised. */
static bool talk_to_back(void)
{
    be.max_ring_order = xbf_uint_or(dev.back, "max-ring-page-order", 0);
    ring_order = (unsigned)want_order;
    if (ring_order > be.max_ring_order)
        ring_order = (unsigned)be.max_ring_order;
    if (ring_order > MAX_RING_ORDER)
        ring_order = MAX_RING_ORDER;
    unsigned pages = 1u << ring_order;
    blkif_sring_t *sring = (blkif_sring_t *)ring_mem[ring_set];
    memset(sring, 0, pages * PAGE_SIZE);
    SHARED_RING_INIT(sring);
    FRONT_RING_INIT(&front, sring, pages * PAGE_SIZE);
    for (unsigned i = 0; i < pages; i++)
        xbf_grant(&dev, REF_RING(ring_set, i), ring_mem[ring_set] + i * PAGE_SIZE, false);
    /* A new port before the old one is closed, so that it is a new one. */
    evtchn_port_t old = port;
    long rc = evtchn_alloc_unbound(DOMID_SELF, dev.back_id, &port);
    if (rc) {
        note("EVTCHNOP_alloc_unbound for domain %u: %ld", dev.back_id, rc);
        return false;
    }
    mask_port(port, true);   /* polled, never an upcall */
    if (old && (rc = evtchn_close(old)) != 0) {
        note("EVTCHNOP_close of the old port %u: %ld", old, rc);
        return false;
    }
    if (!xbf_write_keys(&dev, write_keys, NULL))
        return false;
    return xbf_set_state(&dev, XenbusStateInitialised);
}

/* The back in InitWait: talk to it, wait for Connected, read the disk (blkfront_connect),
 * then Connected ourselves. */
static bool connect(void)
{
    /* (After a disconnection the back goes from Closed to InitWait once we are
     * Initialising: no stop state here.) */
    if (xbf_wait_back(&dev, 1u << XenbusStateInitWait, XBF_BACK_BOUND_NS) < 0)
        return false;
    if (!talk_to_back())
        return false;
    int st = xbf_wait_back(&dev, 1u << XenbusStateConnected | 1u << XenbusStateClosing |
                           1u << XenbusStateClosed, XBF_BACK_BOUND_NS);
    if (st != XenbusStateConnected) {
        if (st >= 0)
            note("the back end went to state %d, not Connected", st);
        return false;
    }
    if (!xbf_uint(dev.back, "sectors", &be.sectors) ||
        !xbf_uint(dev.back, "sector-size", &be.sector_size) ||
        !xbf_uint(dev.back, "info", &be.info)) {
        note("%s: sectors, sector-size or info missing once Connected", dev.back);
        return false;
    }
    /* blkfront_gather_backend_features */
    be.barrier = xbf_uint_or(dev.back, "feature-barrier", 0);
    be.flush = xbf_uint_or(dev.back, "feature-flush-cache", 0);
    be.discard = xbf_uint_or(dev.back, "feature-discard", 0);
    be.discard_gran = xbf_uint_or(dev.back, "discard-granularity", 0);
    be.discard_align = xbf_uint_or(dev.back, "discard-alignment", 0);
    be.persistent = xbf_uint_or(dev.back, "feature-persistent", 0);
    be.max_indirect = xbf_uint_or(dev.back, "feature-max-indirect-segments", 0);
    persistent = want_persistent && be.persistent;
    indirect_segs = be.max_indirect >= SEGS_INDIRECT ? SEGS_INDIRECT : 0;
    nslots = RING_SIZE(&front) < MAX_SLOTS ? RING_SIZE(&front) : MAX_SLOTS;
    memset(page_users, 0, sizeof(page_users));
    memset(slots, 0, sizeof(slots));
    if (persistent)
        grant_all();
    if (!xbf_set_state(&dev, XenbusStateConnected))
        return false;
    connected = true;
    return true;
}

/* Closing, wait for the back's Closing or Closed, Closed, wait for its Closed; then the
 * back has unmapped everything and closed its end of the channel: take the ring pages (and
 * the persistent grants) back. */
static bool disconnect(void)
{
    connected = false;
    if (!xbf_close(&dev))
        return false;
    bool ok = true;
    for (unsigned i = 0; i < (1u << ring_order); i++)
        ok = xbf_take_back(&dev, REF_RING(ring_set, i), "ring page") && ok;
    if (persistent) {
        for (unsigned i = 0; i < POOL_PAGES; i++)
            ok = xbf_take_back(&dev, REF_POOL + i, "persistent data page") && ok;
        for (unsigned i = 0; i < MAX_SLOTS; i++)
            ok = xbf_take_back(&dev, REF_INDIRECT + i, "persistent indirect page") && ok;
    }
    for (unsigned i = 0; i < POOL_PAGES; i++)
        if (page_users[i]) {
            note("data page %u still has %u request(s) in flight", i, page_users[i]);
            ok = false;
            break;
        }
    return xbf_port_released(&dev, port) && ok;
}

static void report_connection(void)
{
    info("sectors", "%lu", be.sectors);
    info("ring_pages", "%u", 1u << ring_order);
    info("ring_size", "%u", RING_SIZE(&front));
    info("indirect", "%u", indirect_segs);
    info("persistent", "%u", persistent ? 1 : 0);
    info("inflight", "%u", nslots);
    info("feature_flush_cache", "%lu", be.flush);
    info("feature_discard", "%lu", be.discard);
    info("feature_max_indirect_segments", "%lu", be.max_indirect);
}

/* ---- mode=rw ------------------------------------------------------------------------ */
static void partial_sectors(void)
{
    /* sectors 2..5 of pool page 0 <-> disk sectors PARTIAL_SECTOR..+3 */
    uint64_t off = (uint64_t)PARTIAL_SECTOR * SECTOR;
    reset_problems();
    memset(pool[0], 0xa5, PAGE_SIZE);
    fill(pool[0] + 2 * SECTOR, off, 4 * SECTOR, false);
    int16_t w = one_segment(BLKIF_OP_WRITE, PARTIAL_SECTOR, REF_POOL, 2, 5, 1);
    memset(pool[0], 0x5a, PAGE_SIZE);
    int16_t r = w == BLKIF_RSP_OKAY ? one_segment(BLKIF_OP_READ, PARTIAL_SECTOR, REF_POOL, 2,
                                                  5, 1) : STATUS_NONE;
    if (r == BLKIF_RSP_OKAY) {
        verify(pool[0] + 2 * SECTOR, off, 4 * SECTOR);
        for (unsigned i = 0; i < PAGE_SIZE; i++)
            if ((i < 2 * SECTOR || i >= 6 * SECTOR) && pool[0][i] != 0x5a) {
                note("the read wrote byte %u of the page (%#x), outside sectors 2..5", i,
                     pool[0][i]);
                break;
            }
    }
    check("blkfront.partial_sectors", w == BLKIF_RSP_OKAY && r == BLKIF_RSP_OKAY && !problems,
          "write status %d, read status %d; %s", w, r, why);
}

static void flush(void)
{
    if (be.flush != 1)
        return;
    union blkreq u;
    memset(&u, 0, sizeof(u));
    u.rw.operation = BLKIF_OP_FLUSH_DISKCACHE;
    u.rw.handle = (blkif_vdev_t)vdev;
    reset_problems();
    int16_t st = one(&u, BLKIF_OP_FLUSH_DISKCACHE, 0, NULL);
    check("blkfront.flush", st == BLKIF_RSP_OKAY && !problems, "status %d; %s", st, why);
}

static int16_t discard(uint64_t sector, uint64_t count)
{
    union blkreq u;
    memset(&u, 0, sizeof(u));
    u.discard.operation = BLKIF_OP_DISCARD;
    u.discard.handle = (blkif_vdev_t)vdev;
    u.discard.sector_number = sector;
    u.discard.nr_sectors = count;
    return one(&u, BLKIF_OP_DISCARD, 0, NULL);
}

static void discard_rw(void)
{
    if (be.discard != 1)
        return;
    reset_problems();
    int16_t st = discard(DISCARD_SECTOR, DISCARD_COUNT);
    bool ok = st == BLKIF_RSP_OKAY && !problems;
    if (ok) {
        hole_lo = (uint64_t)DISCARD_SECTOR * SECTOR;
        hole_hi = hole_lo + (uint64_t)DISCARD_COUNT * SECTOR;
        ok = sequential(BLKIF_OP_READ, 0, be.sectors, false, true);
    }
    check("blkfront.discard", ok, "status %d; %s (%lu bad words)", st, why, bad_words);
}

static void error_paths(void)
{
    static const struct {
        const char *name;
        uint8_t op;
        bool beyond_end, ours;
        uint8_t first, last, nr_segments;
        int16_t want;
    } cases[] = {
        { "blkfront.beyond_end", BLKIF_OP_READ, true, true, 0, 7, 1, BLKIF_RSP_ERROR },
        { "blkfront.bad_segment", BLKIF_OP_READ, false, true, 5, 2, 1, BLKIF_RSP_ERROR },
        { "blkfront.bad_gref", BLKIF_OP_READ, false, false, 0, 7, 1, BLKIF_RSP_ERROR },
        /* blkback's dispatch_other_io answers an unknown operation so */
        { "blkfront.unknown_op", 99, false, false, 0, 7, 0, BLKIF_RSP_EOPNOTSUPP },
        { "blkfront.too_many_segments", BLKIF_OP_READ, false, true, 0, 7,
          BLKIF_MAX_SEGMENTS_PER_REQUEST + 1, BLKIF_RSP_ERROR },
    };
    for (unsigned i = 0; i < ARRAY_SIZE(cases); i++) {
        reset_problems();
        int16_t st = one_segment(cases[i].op, cases[i].beyond_end ? be.sectors : 0,
                                 cases[i].ours ? REF_POOL : (grant_ref_t)REF_NEVER,
                                 cases[i].first, cases[i].last, cases[i].nr_segments);
        check(cases[i].name, st == cases[i].want && !problems, "status %d, expected %d%s%s",
              st, cases[i].want, problems ? "; " : "", why);
    }
    reset_problems();
    check("blkfront.still_works", sequential(BLKIF_OP_READ, 0, 16 * SECT_PER_PAGE, false, true),
          "%s (%lu bad words)", why, bad_words);
}

static void reconnect(void)
{
    reset_problems();
    bool ok = disconnect();
    if (ok)
        ok = xbf_set_state(&dev, XenbusStateInitialising);
    if (ok) {
        ring_set ^= 1;   /* a new ring: the other set of pages and refs */
        evtchn_port_t old = port;
        ok = connect();
        if (ok && port == old) {
            note("the new port is the old one (%u)", port);
            ok = false;
        }
    }
    if (ok)
        ok = sequential(BLKIF_OP_READ, 0, 16 * SECT_PER_PAGE, false, true);
    check("blkfront.reconnect", ok, "%s (%lu bad words)", why, bad_words);
}

static void close_device(void)
{
    reset_problems();
    bool ok = disconnect();
    long rc = evtchn_close(port);
    check("blkfront.close", ok && rc == 0, "%s; close of port %u: %ld", why, port, rc);
    port = 0;
}

static void mode_rw(void)
{
    reset_problems();
    check("blkfront.write_all", sequential(BLKIF_OP_WRITE, 0, be.sectors, false, true), "%s",
          why);
    if (indirect_segs) {
        reset_problems();
        check("blkfront.write_indirect",
              sequential(BLKIF_OP_WRITE, 0, 2048, true, true), "%s", why);
    }
    partial_sectors();
    flush();
    reset_problems();
    check("blkfront.read_all", sequential(BLKIF_OP_READ, 0, be.sectors, false, true),
          "%s (%lu bad words)", why, bad_words);
    discard_rw();
    error_paths();
    if (stalled)
        return;
    reconnect();
    if (connected)
        close_device();
}

/* ---- mode=ro ------------------------------------------------------------------------ */
static void mode_ro(void)
{
    reset_problems();
    check("blkfront.read_all", sequential(BLKIF_OP_READ, 0, be.sectors, false, true),
          "%s (%lu bad words)", why, bad_words);

    /* One page at sector 0 with other data: refused, and the page still reads the same. */
    reset_problems();
    fill(pool[0], 0, PAGE_SIZE, true);
    int16_t st = one_segment(BLKIF_OP_WRITE, 0, REF_POOL, 0, 7, 1);
    bool ok = st == BLKIF_RSP_ERROR && !problems;
    if (ok)
        ok = sequential(BLKIF_OP_READ, 0, SECT_PER_PAGE, false, true);
    check("blkfront.write_refused", ok, "status %d (expected %d); %s", st, BLKIF_RSP_ERROR, why);

    if (be.discard == 1) {
        uint64_t sector = DISCARD_SECTOR, count = DISCARD_COUNT;
        if (be.sectors < sector + count)
            sector = be.sectors / 2, count = be.sectors - sector;
        reset_problems();
        st = discard(sector, count);
        ok = st != BLKIF_RSP_OKAY && st != STATUS_NONE && !problems;
        if (ok)
            ok = sequential(BLKIF_OP_READ, sector, count, false, true);
        check("blkfront.discard_refused", ok, "status %d; %s", st, why);
    }
    if (!stalled)
        close_device();
}

/* ---- bench=1 ------------------------------------------------------------------------ */
static void rate(const char *key, uint64_t bytes, uint64_t ns)
{
    uint64_t tenths = ns ? bytes * 10000 / ns : 0;   /* MB/s (10^6 bytes) x 10 */
    info(key, "%lu.%lu", (unsigned long)(tenths / 10), (unsigned long)(tenths % 10));
}

static void mode_bench(void)
{
    bool ind = indirect_segs != 0;
    uint64_t bytes = be.sectors * SECTOR;
    reset_problems();
    uint64_t t0 = xen_now_ns();
    bool ok = sequential(BLKIF_OP_WRITE, 0, be.sectors, ind, false);
    uint64_t t1 = xen_now_ns();
    ok = ok && sequential(BLKIF_OP_READ, 0, be.sectors, ind, false);
    uint64_t t2 = xen_now_ns();
    rng_state = seed * PATTERN_MUL | 1;
    rand_left = randread;
    unsigned depth = nslots < RANDREAD_DEPTH ? nslots : RANDREAD_DEPTH;
    ok = ok && run(rand_next, 1, false, depth, false);
    uint64_t t3 = xen_now_ns();
    info("seq_bytes", "%lu", (unsigned long)bytes);
    info("write_ns", "%lu", (unsigned long)(t1 - t0));
    info("read_ns", "%lu", (unsigned long)(t2 - t1));
    rate("write_mbps", bytes, t1 - t0);
    rate("read_mbps", bytes, t2 - t1);
    info("randread_ios", "%lu", randread);
    info("randread_ns", "%lu", (unsigned long)(t3 - t2));
    info("randread_iops", "%lu", t3 > t2 ? (unsigned long)(randread * 1000000000ULL /
                                                          (t3 - t2)) : 0UL);
    check("blkfront.bench", ok, "%s", why);
    if (!stalled)
        close_device();
}

int guest_main(void)
{
    const char *s = cmdline_get("mode");
    if (s && strcmp(s, "rw") && strcmp(s, "ro")) {
        test_fail("blkfront.mode", "mode=rw or mode=ro, not '%s'", s);
        return 0;
    }
    rw_mode = !s || !strcmp(s, "rw");
    if ((s = cmdline_get("seed")))
        seed = strtoul(s, NULL, 10);
    if ((s = cmdline_get("ring_order")))
        want_order = strtoul(s, NULL, 10);
    if ((s = cmdline_get("persistent")))
        want_persistent = strtoul(s, NULL, 10) ? 1 : 0;
    if ((s = cmdline_get("randread")))
        randread = strtoul(s, NULL, 10);
    s = cmdline_get("bench");
    bench = s && strcmp(s, "0");
    if (bench && !rw_mode) {
        test_fail("blkfront.mode", "bench=1 needs mode=rw");
        return 0;
    }

    reset_problems();
    long rc = map_shared_info();
    if (rc == 0)
        rc = gnttab_setup(gt_page, 1);
    if (rc == 0)
        rc = xs_open();
    if (!check("blkfront.setup", rc == 0, "shared_info, grant table, store: %ld", rc))
        return 0;
    bool ok = find_device() && connect();
    if (ok) {
        report_connection();
        if (be.sectors == 0 || be.sector_size != SECTOR)
            note("sectors %lu, sector-size %lu: a disk of 512-byte sectors expected",
                 be.sectors, be.sector_size);
        else if (rw_mode && !bench && be.sectors < MIN_RW_SECTORS)
            note("%lu sectors: mode=rw needs a disk of at least 4 MiB", be.sectors);
        else if (rw_mode && (be.info & VDISK_READONLY))
            note("info %#lx has VDISK_READONLY for mode=rw", be.info);
        else if (!rw_mode && !(be.info & VDISK_READONLY))
            note("info %#lx lacks VDISK_READONLY for mode=ro", be.info);
        ok = !problems;
    }
    if (!check("blkfront.connect", ok, "%s", why))
        return 0;
    if (bench)
        mode_bench();
    else if (rw_mode)
        mode_rw();
    else
        mode_ro();
    info("notifies", "%lu", notifies);
    info("polls", "%lu", polls);
    info("responses", "%lu", responses);
    return 0;
}
