/*
 * vchan: a libxenvchan-style shared ring between two domains in two host processes,
 * data streamed both ways and checked byte for byte, then the grant isolation checks.
 *
 * A PAIR of guests: this image runs as the server (`role=server`, libxenvchan's server:
 * it allocates and grants the ring pages and the event channel) and as the client
 * (`role=client`: maps the grants with GNTTABOP_map_grant_ref, or moves the data with
 * GNTTABOP_copy in `mode=copy`, and binds the event channel). Each reads its peer's domid
 * from its store node `data/peer` (/local/domain/<self>/data/peer), which the host writes
 * as dom0 once both domains exist (as for the `interdomain` guest). Needs `--xenstore`.
 * `role=loop` runs both halves in ONE domain (its peer is itself: own grants mapped and
 * copied, a loopback event channel, the offer published and read back through its own
 * store, so it needs `--xenstore` too): the same code and checks, in the pair's order,
 * without a second domain and without step nodes.
 * Every wait is bounded: PEER_BOUND_NS = 3 * WAIT_BOUND_NS (30 s) for anything that
 * depends on the peer (a node, a step, the connection, stream progress), so a broken host
 * gives FAIL lines, never a hang. A side that gives up sets its step node to "abort" and
 * ends with RESULT/poweroff; the other side's wait fails at once if it reads "abort" before
 * that domain (and its store home with the node) is gone, else after PEER_BOUND_NS.
 *
 * cmdline: role=server|client|loop (required);
 *   mib=N       bytes each way = N MiB (1..1024, default 4); give both the same;
 *   mode=map|copy  (client, loop; default map) how the client moves the ring data;
 *   left_order=N, right_order=N  (server, loop; default 10 and 14) ring sizes 2^N bytes,
 *                  10..20 (20: libxenvchan's MAX_RING_SHIFT), not both below 12 and equal
 *                  (libxenvchan's rule), and grants[] must end before an in-page ring (see
 *                  the shared page below); else FAIL vchan.orders (the client: FAIL
 *                  vchan.ring_header for such orders in the shared page);
 *   check=full|none  (default full; give both the same) full: every byte is the pattern
 *                  below, written and checked. none (for benchmarks: the ring against
 *                  memcpy): as libxenvchan_write/read, the sender copies from a local 1 MiB
 *                  buffer, filled with the pattern of offsets 0..1 MiB once before the clock
 *                  starts, so stream offset o carries pattern byte (o mod 1 MiB); the receiver
 *                  copies into a local 1 MiB buffer at o mod 1 MiB, and checks only that
 *                  buffer (the last MiB) once at the end;
 *   notify=bits|always  (default bits; give both the same) bits: libxenvchan's rule, an event
 *                  only when the other side asked for it through the notify bits. always: the
 *                  bits are still requested and cleared as libxenvchan does, but an event goes
 *                  out after every index move, so correctness rests on plain stores and the
 *                  event channel only. Why it exists: libxenvchan's bits need an atomic OR
 *                  from one domain and an atomic AND from the other on the SAME byte
 *                  (cli_notify / srv_notify); a host whose guests' locked instructions are not
 *                  atomic across domain processes (pyxen's software CPU: Unicorn runs a
 *                  `lock` RMW as load + op + store) can lose a request, and then both sides
 *                  wait: FAIL ... stalled after PEER_BOUND_NS, with the bits in the message.
 *
 * Shared page: struct vchan_interface from Xen's public xen/io/libxenvchan.h (libxen-dev),
 * used as tools/libs/vchan (init.c, io.c) uses it (no code copied):
 *  - left ring: the client writes (c2s), the server reads; right ring: server -> client (s2c).
 *  - order 10: the ring is bytes [1024, 2048) of the shared page; 11: [2048, 4096);
 *    12+: 2^(order-12) extra granted pages, their refs in grants[] (left's first, then right's).
 *    Default: left 1 KiB in the shared page, right 16 KiB in 4 pages (grants[0..3]).
 *    grants[] starts at byte 24 (after the header): 4 bytes a page must end by 1024 with an
 *    order-10 ring, by 2048 with an order-11 ring (so order 10 goes with at most 250 pages
 *    on the other side, e.g. not with order 20); two order-20 rings take 2048 bytes.
 *  - ring_shared {cons, prod}: free-running 32-bit byte counters; position = index & (size-1);
 *    prod - cons > size is impossible (FAIL). The writer fills, then moves prod; the reader
 *    checks, then moves cons.
 *  - notify bits (VCHAN_NOTIFY_WRITE 1, _READ 2): cli_notify holds what the server asked
 *    the client to signal, srv_notify what the client asked the server. A reader about to
 *    wait for data sets WRITE in the other side's byte and looks again; a writer about to
 *    wait for room sets READ and looks again (io.c's request_notify, then the re-read of
 *    fast_get_data_ready / fast_get_buffer_space); after moving prod (cons) a side takes
 *    WRITE (READ) out of its own byte with an atomic and and sends an event only if it was
 *    set (send_notify). Initially cli_notify = WRITE (server), srv_notify = WRITE (client),
 *    as libxenvchan.
 *  - cli_live: 2 until the client connects, 1 connected, 0 closed; srv_live 1, 0 at the end.
 *  Both directions run at once, the data work in ring 3 (guest kernel code is slow on some
 *  hosts, e.g. emulated under kvm_pvm; user code is not). Ring 3 (run_user, interrupts on so
 *  that upcalls are counted as they come) passes over the side's two rings again and again:
 *  each pass fills at most a chunk of what the peer has freed (chunk: half the ring, at most
 *  CHUNK_MAX = 64 KiB; mode=copy: the whole free space, at most COPY_BATCH = 128 pages) and
 *  moves prod, then checks at most a chunk of what arrived and moves cons; each index move
 *  runs send_notify. It returns to ring 0 only at the end of a pass that left an event to
 *  send (ring 0 sends it, then ring 3 goes on), copies to run (mode=copy), when all is done
 *  or something failed, or when nothing moved in either direction for SPIN_NS (1 ms; longer
 *  than the peer's trip to ring 0 to send an event, ~0.3-0.5 ms under kvm_pvm, so that trip
 *  does not make this side block too, and then the peer send again, and so on):
 *  then it sets the notify bits for what it waits for (data and/or room), passes once more,
 *  and if still nothing moved, ring 0 waits for an event on its port -- at most RECHECK_NS
 *  (1 s), then ring 3 looks at the rings again anyway (INFO slow_waits counts the waits that
 *  ran that long: 0 on a healthy, idle host; more means events lost or very late, which
 *  libxenvchan's untimed wait would turn into a hang, or a peer that moved nothing for that
 *  long: a loaded host, a mode=copy client in long GNTTABOP_copy batches); after
 *  PEER_BOUND_NS without progress it FAILs. So while data flows both ways the bits stay
 *  clear and no event is due: the stream stays in ring 3. role=loop runs both sides in one
 *  ring-3 loop, and a pass in which nothing moved is a stall at once (nothing else can
 *  move).
 *  In mode=copy the client maps only the shared page (indices, notify bits, live flags) and
 *  moves ALL ring data with GNTTABOP_copy between its own bounce pages and the server's: ring
 *  3 fills the bounce and builds the ops (one segment per piece of a page), ring 0 issues
 *  them, up to COPY_BATCH segments per hypercall, ring 3 checks every status and then moves
 *  prod (c2s), or checks the bytes and moves cons (s2c). s2c with GNTCOPY_source_gref (the
 *  server's ring page refs -> its own pages), c2s with GNTCOPY_dest_gref (its own pages ->
 *  the server's refs; for an in-page left ring that is the shared page's ref at offset
 *  1024 + position).
 *
 * Data: byte at stream offset o of direction d is byte (o & 7) (little-endian) of
 *   x = (o >> 3) ^ SEED_d; x ^= x << 13; x ^= x >> 7; x ^= x << 17   (64-bit xorshift)
 *   SEED_c2s = 0x6332730000000000, SEED_s2c = 0x7332630000000000.
 *
 * XenStore (S = server's domid, C = client's; values decimal; every node owned by its writer
 * and readable by the peer: XS_SET_PERMS "n<owner>" "r<peer>"):
 *  /local/domain/S/data/vchan/C/ring-ref       the shared page's grant ref (libxenvchan name)
 *  /local/domain/S/data/vchan/C/event-channel  the port left unbound for C (libxenvchan name)
 *  /local/domain/S/data/vchan/C/test-refs      "<other> <never> <revoke> <ro>" (48 49 50 51)
 *      (these three written in one transaction, as libxenvchan does)
 *  /local/domain/S/data/vchan/C/step           the server's step
 *  /local/domain/C/data/vchan/S/mode           "map" | "copy" (written before the client maps)
 *  /local/domain/C/data/vchan/S/step           the client's step
 * In loop mode S = C = self and the two step nodes are the same (not waited on).
 *
 * Server's grant table (v1, frames 0 and 1 put in its physmap with XENMAPSPACE_grant_table:
 * 512 entries a frame):
 *  ref 8 the shared page; refs 64.. the ring pages (left's, then right's; at most 575), all
 *  GTF_permit_access for C; ref 48 a page granted to ANOTHER domain (dom0; if C is 0, S);
 *  ref 49 never granted (flags 0, although domid = C and frame = a real page); ref 50 granted
 *  to C and revoked at step "revoked"; ref 51 granted to C with GTF_readonly. Byte i of the
 *  page of ref r (48, 50, 51) is (i*13 + r*3 + (i >> 8)) & 0xff.
 * Client's frames: H = (ram_top >> 12) + 256 (above RAM, nothing in the p2m there):
 *  H the shared page, H+1.. the ring pages (left's rw, right's GNTMAP_readonly, as
 *  libxenvchan maps its read ring PROT_READ), H+520 ref 51, H+521 ref 50, H+522 probes.
 *  Their aliases (VBASE + index pages) of the shared page and the ring pages are user
 *  pages (PTE_U): ring 3 streams through them.
 *
 * Steps (each side writes its step node, the other waits for that value, PEER_BOUND_NS):
 *  server: nodes published [vchan.grant_table, .alloc_unbound, .publish]; waits for
 *          cli_live == 1 (the client's event) [.client_connected].
 *  client: reads the nodes [.offer], bind_interdomain(S, port) [.bind], maps ref 8 at H
 *          [.map_ring], checks cli_live 2 / srv_live 1 / orders [.ring_header], maps the
 *          ring pages (map mode) [.map_data], sets cli_live = 1, srv_notify = WRITE, sends.
 *  both    stream mib MiB each way. Receiver: [.stream_c2s] (server) / [.stream_s2c] (client):
 *          every byte as the pattern says (check=none: the last MiB), else FAIL naming the
 *          first bad offset; impossible indices, a GNTTABOP_copy status, a fault in ring 3
 *          FAIL it too. Sender:
 *          [.sent_s2c] (server) / [.sent_c2s] (client): all bytes in and the peer's cons
 *          reached the end.
 *  client  step "streamed".
 *  server  on "streamed": reads the client's mode; [.flags_while_mapped]: ref 8 shows
 *          GTF_reading|GTF_writing; ring pages: map mode left rw, right GTF_reading only;
 *          copy mode no bits. Step "streamed".
 *  client  refusals (Xen 4.17 xen/common/grant_table.c): map ref 48 (granted to another
 *          domain) GNTST_general_error [.map_other_domain]; ref 49 (flags 0)
 *          GNTST_general_error [.map_never_granted]; ref 0xfffff (beyond the table)
 *          GNTST_bad_gntref [.map_ref_out_of_range]; ref 51 without GNTMAP_readonly
 *          GNTST_general_error [.map_ro_needs_readonly]. Ref 51 with GNTMAP_readonly
 *          [.map_ro], reads the pattern [.map_ro_reads], a store through a writable PTE does
 *          not fault [.map_ro_write_no_fault] and is dropped [.map_ro_write_dropped]; it stays
 *          mapped. Ref 50 maps [.map_revoke_before], reads [.map_revoke_reads], unmaps
 *          [.unmap_revoke]. mode=copy also: copy from ref 48 / 49 GNTST_general_error
 *          [.copy_other_domain, .copy_never_granted], ref 0xfffff GNTST_bad_gntref
 *          [.copy_ref_out_of_range], copy to ref 51 GNTST_general_error [.copy_ro_dest],
 *          copy from ref 51 okay with the pattern [.copy_ro_source]. Step "probed".
 *  server  on "probed": ref 51 shows GTF_reading only [.ro_flags_reading_only], its page is
 *          unchanged [.ro_page_unchanged]; ref 50 idle, its entry cleared [.revoke].
 *          Step "revoked".
 *  client  on "revoked": map ref 50 GNTST_general_error [.map_after_revoke] (copy mode: copy
 *          from it too [.copy_after_revoke]); cli_live = 0 and an event (libxenvchan's close);
 *          unmap ref 51 [.unmap_ro], the ring pages (map mode) [.unmap_data], the shared page
 *          [.unmap_ring], that handle again GNTST_bad_handle [.unmap_twice]; every unmapped
 *          frame reads all-ones [.unmapped_reads_ones]. Step "unmapped".
 *  server  on "unmapped": cli_live == 0 [.client_closed]; no GTF_reading/GTF_writing left on
 *          any entry granted to C [.flags_clear_after_unmap]; ends foreign access on each
 *          (v1 entry flags cmpxchg'd to 0 while idle) [.end_access]. Step "released".
 *  client  on "released": map ref 8 again GNTST_general_error [.map_after_end_access].
 *          Step "done".
 *  server  on "done": srv_live = 0; RESULT and poweroff.
 *  client  waits (PEER_BOUND_NS, polling EVTCHNOP_status) until its port is unbound with
 *          remote S: the server's destruction closed its end [.server_gone]. Then RESULT and
 *          poweroff. (So the client's step node, which goes with its domain, is still there
 *          when the server reads "done"; the host must destroy the powered-off server.)
 * Always (both roles): [.role], [.mib], [.notify], [.check], [.mode] (client/loop), [.orders]
 *  (server/loop), [.evtchn_init], [.xenstore], [.peer]. Only on failure: [.mode_node] (the
 *  client could not write its mode node), [.step] (a step node could not be written),
 *  [.peer_<step>] (the peer's step node did not read <step> within PEER_BOUND_NS, or read
 *  "abort"). After a failed stream or wait a side writes step "abort" and ends.
 *
 * INFO keys: role, mib, notify, check, domid, peer, mode (client: its own; server: read from the
 *  client's node), left_order, right_order; server: ring_ref, port (its unbound port);
 *  client: ring_ref (as read), port (its bound end), frame_base (H). After the stream, each
 *  receiver: stream_dir (c2s on the server, s2c on the client), stream_bytes, stream_ns
 *  (from the start of its stream loop to the last byte checked), then events (events on its
 *  port), notifies (events it sent), waits (idle rounds that waited for an event),
 *  slow_waits (those that lasted RECHECK_NS, see above), ring3_entries (the stream's runs
 *  in ring 3, each ended by one of the returns described above), and in mode=copy copy_calls
 *  (GNTTABOP_copy hypercalls). role=loop prints both sets, the server's (c2s) first.
 *
 * Xen 4.17 semantics relied on:
 *  - xen/common/grant_table.c map_grant_ref: no host/device flag GNTST_bad_gntref; no such
 *    domain GNTST_bad_domain; ref >= nr_grant_entries GNTST_bad_gntref; an unpinned entry
 *    whose type is not GTF_permit_access (flags 0, or cleared by the granter) or whose domid
 *    is not the mapper: _set_status_v1 GNTST_general_error; a GTF_readonly entry mapped
 *    without GNTMAP_readonly: GNTST_general_error ("Attempt to write-pin a r/o grant
 *    entry"). Mapping sets GTF_reading (+ GTF_writing unless GNTMAP_readonly);
 *    unmap_common_complete clears GTF_writing when no writable pin is left, GTF_reading when
 *    no pin is left; a handle unmapped already: GNTST_bad_handle.
 *  - gnttab_copy (acquire_grant_for_copy): same _set_status checks per ref, so the same
 *    GNTST_general_error / GNTST_bad_gntref; the bits are held only during the copy.
 *  - xen/arch/x86/hvm/grant_table.c create_grant_p2m_mapping: the page enters the mapper's
 *    p2m at host_addr as p2m_grant_map_rw / _ro; p2m_grant_map_ro discards writes
 *    (hvm_hap_nested_page_fault, no fault). replace_grant_p2m_mapping with new_addr 0 removes
 *    the entry: the frame has nothing in the p2m, and an HVM access there goes to the
 *    emulator's null handler (xen/arch/x86/hvm/emulate.c null_read: all-ones).
 *  - xen/common/event_channel.c: alloc_unbound(SELF, C) leaves a port only C may bind.
 */
#include "guest.h"
#include "evtchn.h"
#include "gnttab.h"
#include <xen/io/libxenvchan.h>

#define MS              1000000ULL
#define US              1000ULL
#define MIB             (1024ULL * 1024)
#define PEER_BOUND_NS   (3 * WAIT_BOUND_NS)   /* for everything that waits on the peer */
#define RECHECK_NS      (1000 * MS)           /* look at idle rings again after this long */
#define SPIN_NS         (1000 * US)           /* ring 3 looks at idle rings this long */
#define SPIN_PASSES     128                   /* idle passes between two looks at the clock */

#define MIN_ORDER       10
#define MAX_ORDER       20                    /* libxenvchan's MAX_RING_SHIFT (init.c) */
#define MAX_RING_PAGES  (1 << (MAX_ORDER - PAGE_SHIFT))   /* 256 per ring */
#define COPY_BATCH      128                   /* segments per GNTTABOP_copy hypercall */
#define CHUNK_MAX       (64 * 1024)           /* bytes a pass moves through a mapped ring */
#define LOCAL_SIZE      (1024 * 1024)         /* check=none: each local buffer */

#define DIR_C2S         0
#define DIR_S2C         1
#define SEED_C2S        0x6332730000000000ULL             /* "c2s" */
#define SEED_S2C        0x7332630000000000ULL             /* "s2c" */

/* The server's grant refs (documented above). */
#define REF_RING        8
#define REF_OTHER       48
#define REF_NEVER       49
#define REF_REVOKE      50
#define REF_RO          51
#define REF_DATA        64
#define REF_BEYOND      0xfffffU
#define GT_FRAMES       2                      /* v1: 512 entries a frame */

/* The client's frames, relative to H, and their aliases (VA = VBASE + index pages). */
#define FRAME_RING      0
#define FRAME_DATA      1
#define FRAME_RO        520
#define FRAME_REVOKE    521
#define FRAME_PROBE     522
#define VBASE           (ALIAS_BASE + 0x400000ULL)

_Static_assert(REF_RO < REF_DATA, "ring refs overlap the test refs");
_Static_assert(REF_DATA + 2 * MAX_RING_PAGES <= GT_FRAMES * PAGE_SIZE / sizeof(grant_entry_v1_t),
               "ring refs beyond the grant table");
_Static_assert(FRAME_DATA + 2 * MAX_RING_PAGES <= FRAME_RO, "ring frames overlap");
_Static_assert(sizeof(struct vchan_interface) + 2 * MAX_RING_PAGES * 4 <= PAGE_SIZE,
               "grants[] of two largest rings beyond the shared page");

/* A copy-mode ring's GNTTABOP_copy ops: built in ring 3, run in ring 0, checked in ring 3. */
#define COPY_NONE       0
#define COPY_ASKED      1
#define COPY_DONE       2

/* One ring as one side sees it. */
struct vring {
    volatile struct ring_shared *shr;
    unsigned order;
    uint32_t size;
    uint32_t chunk;         /* at most this many bytes a pass */
    uint32_t base;          /* in-page ring: its offset in the shared page; 0 when paged */
    uint8_t *buf;           /* the ring's bytes (mapped, own, or the copy-mode bounce) */
    unsigned dir;           /* DIR_C2S / DIR_S2C: which pattern */
    bool copy;              /* moved with GNTTABOP_copy between bounce and gref[] */
    uint8_t *bounce;        /* copy mode: local pages mirroring the ring's pages */
    grant_ref_t gref[MAX_RING_PAGES];   /* the ring's pages (in-page: the shared page) */
    unsigned copy_state;    /* COPY_NONE / _ASKED / _DONE */
    uint32_t staged;        /* the bytes the ops move */
    uint32_t fetched;       /* rx: bytes in the bounce not checked yet */
    unsigned nops;
    long copy_rc;
    struct gnttab_copy ops[MAX_RING_PAGES + 1];
};

/* What ring 3 found wrong, for ring 0 to report. */
#define F_INDICES       1   /* v: prod, cons */
#define F_PAST_END      2   /* v: prod */
#define F_BYTE          3   /* v: stream offset, got, want */
#define F_COPY          4   /* v: op index, to ring */

struct side {
    bool server;
    const char *rx_test, *tx_test;      /* TEST names of the receiver / the sender */
    domid_t peer;
    evtchn_port_t port;
    volatile uint64_t events;
    uint64_t notifies, waits, slow_waits, copy_calls, entries;
    volatile struct vchan_interface *ring;
    struct vring tx, rx;
    uint64_t total, sent, received;
    uint64_t rx_start, rx_ns;
    bool rx_done, tx_done, failed;
    bool rx_passed, tx_passed;          /* their TEST line printed */
    bool rx_waits, tx_waits;            /* the last pass: nothing to take / no room */
    unsigned due;                       /* events to send (ring 0 sends them) */
    struct { unsigned kind; const char *test; struct vring *ring; uint64_t v[3]; } fail;
};

static struct side server_side = { .server = true, .rx_test = "vchan.stream_c2s",
                                   .tx_test = "vchan.sent_s2c" };
static struct side client_side = { .server = false, .rx_test = "vchan.stream_s2c",
                                   .tx_test = "vchan.sent_c2s" };

static unsigned self;              /* our domid */
static domid_t peer;               /* the other domain's (self in loop mode) */
static bool loop_mode, copy_mode, notify_always, check_none;
static unsigned left_order = 10, right_order = 14;
static uint64_t total_bytes;
static char buf[160], path[128], why[128];

/* Server pages. */
static uint8_t gt_pages[GT_FRAMES][PAGE_SIZE] ALIGNED(4096);  /* grant table frames 0, 1 */
static uint8_t ring_page[PAGE_SIZE] ALIGNED(4096);           /* struct vchan_interface */
static uint8_t data_pages[2 * MAX_RING_PAGES][PAGE_SIZE] ALIGNED(4096);
static uint8_t other_page[PAGE_SIZE] ALIGNED(4096);
static uint8_t never_page[PAGE_SIZE] ALIGNED(4096);
static uint8_t revoke_page[PAGE_SIZE] ALIGNED(4096);
static uint8_t ro_page[PAGE_SIZE] ALIGNED(4096);
static unsigned granted_refs[2 * MAX_RING_PAGES + 4], nr_granted;

/* Client pages: the copy-mode bounce pages (one set per ring) and a probe page. */
static uint8_t bounce_tx[MAX_RING_PAGES][PAGE_SIZE] ALIGNED(4096);
static uint8_t bounce_rx[MAX_RING_PAGES][PAGE_SIZE] ALIGNED(4096);
static uint8_t probe_page[PAGE_SIZE] ALIGNED(4096);
static uint64_t frame_base;                 /* H */
static grant_handle_t ring_handle, data_handles[2 * MAX_RING_PAGES], ro_handle;
static unsigned nr_data_mapped;
static bool ro_mapped, revoke_mapped;
static grant_ref_t ring_ref, test_refs[4];  /* as read from the server's nodes */

/* check=none: per direction, the sender's prefilled source and the receiver's sink. */
static uint8_t local_src[2][LOCAL_SIZE] ALIGNED(4096);
static uint8_t local_dst[2][LOCAL_SIZE] ALIGNED(4096);

/* The stack of the ring-3 stream. */
static uint8_t user_stack[16384] ALIGNED(16);

/* Ring bytes are read and written a qword at a time through uint8_t buffers. */
typedef uint64_t __attribute__((may_alias)) u64_alias;

static inline uint64_t min64(uint64_t a, uint64_t b) { return a < b ? a : b; }
static inline uint64_t pfn(const void *p) { return (uint64_t)(uintptr_t)p >> PAGE_SHIFT; }
/* A full barrier without mfence (SSE2): a locked no-op on the stack, as Linux does. */
static inline void mb(void) { asm volatile("lock; addl $0, (%%rsp)" ::: "memory", "cc"); }

static uint8_t test_byte(unsigned ref, unsigned i)
{
    return (uint8_t)(i * 13 + ref * 3 + (i >> 8));
}

/* Extra pages of a ring of 2^order bytes; where an in-page ring sits in the shared page. */
static unsigned ring_pages(unsigned order)
{
    return order >= PAGE_SHIFT ? 1u << (order - PAGE_SHIFT) : 0;
}

static uint32_t in_page_offset(unsigned order)
{
    return order == 10 ? 1024 : order == 11 ? 2048 : 0;
}

/* Ring orders both sides accept: 10..20 each, not both in-page of one size (libxenvchan's
 * rule), and grants[] (after the header) ends before an in-page ring starts. */
static bool orders_ok(unsigned lo, unsigned ro)
{
    if (lo < MIN_ORDER || lo > MAX_ORDER || ro < MIN_ORDER || ro > MAX_ORDER ||
        (lo == ro && lo < PAGE_SHIFT))
        return false;
    size_t end = sizeof(struct vchan_interface) + 4 * (ring_pages(lo) + ring_pages(ro));
    return (!in_page_offset(lo) || end <= in_page_offset(lo)) &&
           (!in_page_offset(ro) || end <= in_page_offset(ro));
}

#define ORDERS_RULE "10..20, not both 10 or both 11, and grants[] (%lu bytes from offset %lu) " \
                    "must end before an in-page ring (order 10 at 1024, 11 at 2048)"
#define ORDERS_ARGS(lo, ro) 4UL * (ring_pages(lo) + ring_pages(ro)), \
                    (unsigned long)sizeof(struct vchan_interface)

/* ---- the data pattern -------------------------------------------------------------------- */
static inline uint64_t pattern_q(unsigned dir, uint64_t q)
{
    uint64_t x = q ^ (dir == DIR_C2S ? SEED_C2S : SEED_S2C);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
}

static inline uint8_t pattern_byte(unsigned dir, uint64_t off)
{
    return (uint8_t)(pattern_q(dir, off >> 3) >> (8 * (off & 7)));
}

/* Write stream bytes [off, off+len) of `dir` to p. */
static void fill(uint8_t *p, unsigned dir, uint64_t off, uint64_t len)
{
    for (; len && (off & 7); len--, off++)
        *p++ = pattern_byte(dir, off);
    for (; len >= 8; len -= 8, off += 8, p += 8)
        *(u64_alias *)p = pattern_q(dir, off >> 3);
    for (; len; len--, off++)
        *p++ = pattern_byte(dir, off);
}

/* Check p against stream bytes [off, off+len); false with the first bad offset. */
static bool verify(const uint8_t *p, unsigned dir, uint64_t off, uint64_t len, uint64_t *bad,
                   uint8_t *got, uint8_t *want)
{
    uint64_t end = off + len;
    while (off < end) {
        /* Whole aligned qwords while they match; then byte by byte up to the next qword. */
        for (; !(off & 7) && end - off >= 8; off += 8, p += 8)
            if (*(const u64_alias *)p != pattern_q(dir, off >> 3))
                break;
        do {
            if (off == end)
                return true;
            uint8_t w = pattern_byte(dir, off);
            if (*p != w) {
                *bad = off, *got = *p, *want = w;
                return false;
            }
            off++, p++;
        } while (off & 7);
    }
    return true;
}

/* memcpy a qword at a time (the kit's memcpy goes a byte at a time, and no SSE in this
 * kit); a plain loop rather than `rep movsq`, which a software CPU runs an iteration at a
 * time. */
static void copy_bytes(void *d, const void *s, size_t n)
{
    uint8_t *dp = d;
    const uint8_t *sp = s;
    for (; n >= 32; n -= 32, dp += 32, sp += 32) {
        uint64_t a = ((const u64_alias *)sp)[0], b = ((const u64_alias *)sp)[1];
        uint64_t c = ((const u64_alias *)sp)[2], e = ((const u64_alias *)sp)[3];
        ((u64_alias *)dp)[0] = a, ((u64_alias *)dp)[1] = b;
        ((u64_alias *)dp)[2] = c, ((u64_alias *)dp)[3] = e;
    }
    for (; n; n--)
        *dp++ = *sp++;
}

/* ---- grant-table helpers (runtime/gnttab.c does the work) ------------------------------ */
static uint64_t frame_addr(unsigned idx) { return (frame_base + idx) << PAGE_SHIFT; }
static uint8_t *frame_va(unsigned idx) { return (uint8_t *)(uintptr_t)(VBASE + idx * PAGE_SIZE); }

/* Client: map `ref` of domain `dom` at frame H+idx; the GNTST status (GNTTAB_CALL_FAILED:
 * the hypercall itself failed). */
static int16_t map_ref(domid_t dom, grant_ref_t ref, unsigned idx, bool ro, grant_handle_t *h)
{
    return gnttab_map(dom, ref, frame_addr(idx), ro, h);
}

static int16_t unmap_frame(unsigned idx, grant_handle_t h)
{
    return gnttab_unmap(frame_addr(idx), h);
}

/* Client: 64 bytes between probe_page and `ref`'s page (offset 0): the GNTST status. */
static int16_t copy_probe(domid_t dom, grant_ref_t ref, bool to_ref)
{
    struct gnttab_copy op = { .len = 64 };
    if (to_ref) {
        op.flags = GNTCOPY_dest_gref;
        op.source.u.gmfn = pfn(probe_page), op.source.domid = DOMID_SELF;
        op.dest.u.ref = ref, op.dest.domid = dom;
    } else {
        op.flags = GNTCOPY_source_gref;
        op.source.u.ref = ref, op.source.domid = dom;
        op.dest.u.gmfn = pfn(probe_page), op.dest.domid = DOMID_SELF;
    }
    op.status = 99;
    long rc = HYPERVISOR_grant_table_op(GNTTABOP_copy, &op, 1);
    return rc ? GNTTAB_CALL_FAILED : op.status;
}

/* A map that must be refused with `want` (unmapped again if it was not). */
static void expect_map_refused(const char *name, grant_ref_t ref, bool ro, int16_t want)
{
    grant_handle_t h = 0;
    int16_t st = map_ref(peer, ref, FRAME_PROBE, ro, &h);
    if (st == GNTST_okay)
        unmap_frame(FRAME_PROBE, h);
    check(name, st == want, "map_grant_ref(dom %u, ref %#x%s): status %d, expected %d", peer,
          ref, ro ? ", readonly" : "", st, want);
}

/* ---- the stream, ring 3 ----------------------------------------------------------------------
 * Everything below up to "the stream, ring 0" runs at CPL3 (pure memory: no hypercall, no
 * console; now_ns() is the pvclock read with rdtsc). Ring 0 sends the events it leaves in
 * `due`, runs the copy ops it leaves COPY_ASKED and reports what it leaves in `fail`. */

/* tools/libs/vchan/io.c's request_notify: ask the peer for an event on its next move. */
static void request_notify(struct side *s, uint8_t bit)
{
    volatile uint8_t *n = s->server ? &s->ring->cli_notify : &s->ring->srv_notify;
    __atomic_fetch_or(n, bit, __ATOMIC_SEQ_CST);   /* locked: a full barrier before re-reads */
}

/* io.c's send_notify, after an index move: take the bit out of our byte; an event is due if
 * the peer had asked for it (notify=always: in any case). */
static void send_notify(struct side *s, uint8_t bit)
{
    volatile uint8_t *n = s->server ? &s->ring->srv_notify : &s->ring->cli_notify;
    uint8_t prev = __atomic_fetch_and(n, (uint8_t)~bit, __ATOMIC_SEQ_CST);
    if ((prev & bit) || notify_always)
        s->due++;
}

static int record_failure(struct side *s, unsigned kind, const char *test, struct vring *r,
                          uint64_t a, uint64_t b, uint64_t c)
{
    s->fail.kind = kind, s->fail.test = test, s->fail.ring = r;
    s->fail.v[0] = a, s->fail.v[1] = b, s->fail.v[2] = c;
    s->failed = true;
    return -1;
}

/* Stream bytes [off, off+n) of r's direction into the ring at position pos (wrapping): the
 * pattern, or (check=none) a copy of the prefilled local buffer. */
static void put_bytes(struct vring *r, uint32_t pos, uint64_t off, uint32_t n)
{
    while (n) {
        uint32_t len = (uint32_t)min64(n, r->size - pos);
        if (check_none) {
            uint32_t at = (uint32_t)(off % LOCAL_SIZE);
            len = (uint32_t)min64(len, LOCAL_SIZE - at);
            copy_bytes(r->buf + pos, local_src[r->dir] + at, len);
        } else {
            fill(r->buf + pos, r->dir, off, len);
        }
        pos = (pos + len) & (r->size - 1);
        off += len;
        n -= len;
    }
}

/* Take stream bytes [off, off+n) at ring position pos: check each (or, check=none, copy
 * them to the local buffer). false (failure recorded) at the first bad byte. */
static bool take_bytes(struct side *s, struct vring *r, uint32_t pos, uint64_t off, uint32_t n)
{
    while (n) {
        uint32_t len = (uint32_t)min64(n, r->size - pos);
        if (check_none) {
            uint32_t at = (uint32_t)(off % LOCAL_SIZE);
            len = (uint32_t)min64(len, LOCAL_SIZE - at);
            copy_bytes(local_dst[r->dir] + at, r->buf + pos, len);
        } else {
            uint64_t bad = 0;
            uint8_t got = 0, want = 0;
            if (!verify(r->buf + pos, r->dir, off, len, &bad, &got, &want)) {
                record_failure(s, F_BYTE, s->rx_test, r, bad, got, want);
                return false;
            }
        }
        pos = (pos + len) & (r->size - 1);
        off += len;
        n -= len;
    }
    return true;
}

/* mode=copy: the ops that move n bytes at ring position pos between the bounce pages and the
 * peer's granted pages, one per piece of a page; ring 0 runs them. */
static void copy_ops(struct side *s, struct vring *r, uint32_t pos, uint32_t n, bool to_ring)
{
    unsigned k = 0;
    r->staged = n;
    while (n) {
        uint32_t at = r->base + pos, page = at >> PAGE_SHIFT, off = at & (PAGE_SIZE - 1);
        uint32_t len = (uint32_t)min64(min64(n, PAGE_SIZE - off), r->size - pos);
        struct gnttab_copy *op = &r->ops[k++];
        uint64_t local = pfn(r->bounce + page * PAGE_SIZE);
        memset(op, 0, sizeof(*op));
        if (to_ring) {
            op->flags = GNTCOPY_dest_gref;
            op->source.u.gmfn = local, op->source.domid = DOMID_SELF, op->source.offset = off;
            op->dest.u.ref = r->gref[page], op->dest.domid = s->peer, op->dest.offset = off;
        } else {
            op->flags = GNTCOPY_source_gref;
            op->source.u.ref = r->gref[page], op->source.domid = s->peer;
            op->source.offset = off;
            op->dest.u.gmfn = local, op->dest.domid = DOMID_SELF, op->dest.offset = off;
        }
        op->len = (uint16_t)len;
        op->status = 99;
        pos = (pos + len) & (r->size - 1);
        n -= len;
    }
    r->nops = k;
    r->copy_state = COPY_ASKED;
}

/* The ops ring 0 ran: all GNTST_okay, else the failure recorded. */
static bool copies_ok(struct side *s, struct vring *r, const char *test)
{
    for (unsigned i = 0; i < r->nops; i++)
        if (r->copy_rc || r->ops[i].status != GNTST_okay) {
            record_failure(s, F_COPY, test, r, i, r == &s->tx, 0);
            return false;
        }
    r->copy_state = COPY_NONE;
    return true;
}

/* What the peer put in rx beyond cons: -1 (failure recorded) if the indices are impossible. */
static int64_t rx_ready(struct side *s, uint32_t cons)
{
    struct vring *r = &s->rx;
    uint32_t prod = r->shr->prod;
    rmb();                          /* prod, then the data */
    uint32_t ready = prod - cons;
    if (ready > r->size)
        return record_failure(s, F_INDICES, s->rx_test, r, prod, cons, 0);
    if (ready > s->total - s->received)
        return record_failure(s, F_PAST_END, s->rx_test, r, prod, 0, 0);
    return ready;
}

/* Move prod over n bytes that are in the ring. */
static void publish(struct side *s, uint32_t n)
{
    barrier();                      /* data, then prod (x86 keeps stores in order) */
    s->tx.shr->prod = (uint32_t)(s->sent + n);
    s->sent += n;
    send_notify(s, VCHAN_NOTIFY_WRITE);
}

/* Send what the ring has room for (a chunk). 1: progress; 0: none possible now (tx_waits:
 * the ring is full, or all is in and not all consumed); -1: failed. */
static int pump_tx(struct side *s)
{
    struct vring *r = &s->tx;
    s->tx_waits = false;
    if (s->tx_done || r->copy_state == COPY_ASKED)
        return 0;
    if (r->copy_state == COPY_DONE) {           /* the bytes reached the peer's pages */
        if (!copies_ok(s, r, s->tx_test))
            return -1;
        publish(s, r->staged);
        return 1;
    }
    uint32_t prod = (uint32_t)s->sent, cons = r->shr->cons, used = prod - cons;
    if (used > r->size)
        return record_failure(s, F_INDICES, s->tx_test, r, prod, cons, 0);
    if (s->sent == s->total) {
        if (used == 0) {                        /* the peer consumed it all */
            s->tx_done = true;
            return 1;
        }
        s->tx_waits = true;
        return 0;
    }
    if (used == r->size) {
        s->tx_waits = true;
        return 0;
    }
    uint32_t n = (uint32_t)min64(min64(r->size - used, s->total - s->sent), r->chunk);
    uint32_t pos = prod & (r->size - 1);
    put_bytes(r, pos, s->sent, n);
    if (r->copy)
        copy_ops(s, r, pos, n, true);           /* published once ring 0 has copied them */
    else
        publish(s, n);
    return 1;
}

/* Take and check what arrived (a chunk). 1: progress; 0: nothing there (rx_waits); -1:
 * failed. mode=copy: check what ring 0 copied into the bounce; when all of it is checked,
 * ask for what the peer has added since. */
static int pump_rx(struct side *s)
{
    struct vring *r = &s->rx;
    s->rx_waits = false;
    if (s->rx_done || r->copy_state == COPY_ASKED)
        return 0;
    int moved = 0;
    if (r->copy_state == COPY_DONE) {
        if (!copies_ok(s, r, s->rx_test))
            return -1;
        r->fetched = r->staged;
        moved = 1;
    }
    uint32_t cons = (uint32_t)s->received;
    int64_t ready = r->copy ? r->fetched : rx_ready(s, cons);
    if (ready < 0)
        return -1;
    if (ready) {
        uint32_t n = (uint32_t)min64((uint64_t)ready, r->chunk);
        if (!take_bytes(s, r, cons & (r->size - 1), s->received, n))
            return -1;
        barrier();                  /* the data is taken before cons lets the writer reuse it */
        cons += n;
        r->shr->cons = cons;
        s->received += n;
        if (r->copy)
            r->fetched -= n;
        send_notify(s, VCHAN_NOTIFY_READ);
        moved = 1;
        if (s->received == s->total) {
            s->rx_ns = now_ns() - s->rx_start;
            s->rx_done = true;
            /* check=none: the sink holds the last LOCAL_SIZE bytes, a copy of the source. */
            uint64_t bad = 0;
            uint8_t got = 0, want = 0;
            if (check_none &&
                !verify(local_dst[r->dir], r->dir, 0, LOCAL_SIZE, &bad, &got, &want))
                return record_failure(s, F_BYTE, s->rx_test, r, s->total - LOCAL_SIZE + bad,
                                      got, want);
            return 1;
        }
    }
    if (r->copy && !r->fetched) {
        ready = rx_ready(s, cons);
        if (ready < 0)
            return -1;
        if (ready) {
            copy_ops(s, r, cons & (r->size - 1), (uint32_t)min64((uint64_t)ready, r->chunk),
                     false);
            return 1;
        }
    }
    s->rx_waits = !moved;
    return moved;
}

/* What the ring-3 stream returns to ring 0. */
#define U_WORK          1   /* events to send or copies to run */
#define U_IDLE          2   /* nothing moved for SPIN_NS, even after asking for events */
#define U_DONE          3
#define U_FAILED        4
#define U_CODE          0xff
#define U_PROGRESS      0x100   /* something moved on the way */

static struct { struct side **sides; unsigned n; } job;

/* Pass over every side (each direction at most a chunk) until ring 0 is needed. Nothing
 * moving: keep looking for SPIN_NS (with one side; in loop mode nothing else can move), then
 * ask for events on what we wait for (libxenvchan's order: request, barrier, look again). */
static long stream_user(void)
{
    bool any = false, asked = false;
    uint64_t idle_since = 0, idle_passes = 0;
    for (;;) {
        bool progress = false, ring0 = false, done = true;
        for (unsigned i = 0; i < job.n; i++) {
            struct side *s = job.sides[i];
            int a = pump_tx(s), b = a < 0 ? -1 : pump_rx(s);
            if (a < 0 || b < 0)
                return U_FAILED | (any || progress ? U_PROGRESS : 0);
            progress |= a > 0 || b > 0;
            ring0 |= s->due || s->tx.copy_state == COPY_ASKED || s->rx.copy_state == COPY_ASKED;
            done &= s->rx_done && s->tx_done;
        }
        any |= progress;
        long moved = any ? U_PROGRESS : 0;
        if (ring0)
            return U_WORK | moved;
        if (done)
            return U_DONE | moved;
        if (progress) {
            idle_since = idle_passes = 0, asked = false;
            continue;
        }
        if (asked)
            return U_IDLE | moved;
        if (job.n == 1) {
            /* The clock every SPIN_PASSES idle passes only (a software CPU's rdtsc is slow). */
            cpu_relax();
            if (++idle_passes % SPIN_PASSES)
                continue;
            uint64_t now = now_ns();
            if (!idle_since)
                idle_since = now;
            if (now - idle_since < SPIN_NS)
                continue;
        }
        for (unsigned i = 0; i < job.n; i++) {
            struct side *s = job.sides[i];
            if (s->rx_waits)
                request_notify(s, VCHAN_NOTIFY_WRITE);
            if (s->tx_waits)
                request_notify(s, VCHAN_NOTIFY_READ);
        }
        asked = true;
    }
}

static void user_stream(void) { user_return(stream_user()); }

/* check=none: the senders' sources, once, before the clock starts. */
static void user_prefill(void)
{
    for (unsigned i = 0; i < job.n; i++)
        fill(local_src[job.sides[i]->tx.dir], job.sides[i]->tx.dir, 0, LOCAL_SIZE);
    user_return(0);
}

/* ---- the stream, ring 0 ------------------------------------------------------------------ */
static void count_handler(evtchn_port_t port, void *arg) { (*(volatile uint64_t *)arg)++; }

static void run_copies(struct side *s, struct vring *r)
{
    if (r->copy_state != COPY_ASKED)
        return;
    long rc = 0;
    for (unsigned i = 0; i < r->nops && !rc; i += COPY_BATCH) {
        rc = HYPERVISOR_grant_table_op(GNTTABOP_copy, &r->ops[i],
                                       (unsigned)min64(COPY_BATCH, r->nops - i));
        s->copy_calls++;
    }
    r->copy_rc = rc;
    r->copy_state = COPY_DONE;
}

static void report_failure(struct side *s)
{
    struct vring *r = s->fail.ring;
    const char *t = s->fail.test;
    uint64_t *v = s->fail.v;
    switch (s->fail.kind) {
    case F_INDICES:
        test_fail(t, "impossible indices: prod %u cons %u in a ring of %u bytes", (unsigned)v[0],
                  (unsigned)v[1], r->size);
        break;
    case F_PAST_END:
        test_fail(t, "the peer wrote past the end: prod %u, %lu of %lu bytes taken",
                  (unsigned)v[0], (unsigned long)s->received, (unsigned long)s->total);
        break;
    case F_BYTE:
        test_fail(t, "first bad byte at stream offset %lu: %#x, expected %#x",
                  (unsigned long)v[0], (unsigned)v[1], (unsigned)v[2]);
        break;
    case F_COPY: {
        struct gnttab_copy *op = &r->ops[v[0]];
        bool to = v[1];
        test_fail(t, "GNTTABOP_copy %s ref %u offset %u len %u: rc %ld status %d",
                  to ? "to" : "from", to ? op->dest.u.ref : op->source.u.ref,
                  to ? op->dest.offset : op->source.offset, op->len, r->copy_rc, op->status);
        break;
    }
    }
}

/* After a ring-3 run: the due events, the copies asked for, the TEST lines. */
static bool serve_side(struct side *s)
{
    s->entries++;
    for (; s->due; s->due--) {
        evtchn_send(s->port);
        s->notifies++;
    }
    if (s->failed) {
        report_failure(s);
        return false;
    }
    run_copies(s, &s->tx);
    run_copies(s, &s->rx);
    if (s->tx_done && !s->tx_passed) {
        s->tx_passed = true;
        test_pass(s->tx_test);
    }
    if (s->rx_done && !s->rx_passed) {
        s->rx_passed = true;
        test_pass(s->rx_test);
    }
    return true;
}

static void stall(struct side *s)
{
    unsigned cli = s->ring->cli_notify, srv = s->ring->srv_notify;
    if (!s->rx_done)
        test_fail(s->rx_test, "stalled: %lu of %lu bytes arrived (prod %u cons %u; notify bits "
                  "cli %#x srv %#x; %lu events)", (unsigned long)s->received,
                  (unsigned long)s->total, s->rx.shr->prod, s->rx.shr->cons, cli, srv,
                  (unsigned long)s->events);
    if (!s->tx_done)
        test_fail(s->tx_test, "stalled: %lu of %lu bytes in, the peer consumed up to %u "
                  "(notify bits cli %#x srv %#x; %lu events)", (unsigned long)s->sent,
                  (unsigned long)s->total, s->tx.shr->cons, cli, srv, (unsigned long)s->events);
    s->failed = true;
}

static void stream_info(struct side *s)
{
    info("stream_dir", "%s", s->server ? "c2s" : "s2c");
    info("stream_bytes", "%lu", (unsigned long)s->received);
    if (s->rx_done)
        info("stream_ns", "%lu", (unsigned long)s->rx_ns);
    info("events", "%lu", (unsigned long)s->events);
    info("notifies", "%lu", (unsigned long)s->notifies);
    info("waits", "%lu", (unsigned long)s->waits);
    info("slow_waits", "%lu", (unsigned long)s->slow_waits);
    info("ring3_entries", "%lu", (unsigned long)s->entries);
    if (!s->server && copy_mode)
        info("copy_calls", "%lu", (unsigned long)s->copy_calls);
}

static void ring_setup(struct vring *r)
{
    r->chunk = (uint32_t)(r->copy ? min64(r->size, COPY_BATCH * PAGE_SIZE) :
                                    min64(r->size / 2, CHUNK_MAX));
}

/* Both directions at once, every side given, the data work in ring 3 (see stream_user).
 * Ring 3 comes back for ring 0's part; when it found nothing moving, a real pair waits for
 * an event on its port -- RECHECK_NS at most (counted in slow_waits: an event lost or
 * late), then looks again -- and after PEER_BOUND_NS without progress it is a stall. In loop
 * mode nothing else can move, so an idle return is a stall at once. */
static bool stream(struct side **sides, unsigned n)
{
    job.sides = sides, job.n = n;
    for (unsigned i = 0; i < n; i++) {
        sides[i]->total = total_bytes;
        ring_setup(&sides[i]->tx);
        ring_setup(&sides[i]->rx);
    }
    void *stack = user_stack + sizeof(user_stack);
    if (check_none)
        run_user(user_prefill, stack, 0);
    uint64_t last = now_ns();
    for (unsigned i = 0; i < n; i++)
        sides[i]->rx_start = last;
    for (;;) {
        uint64_t seen = sides[0]->events;
        long r = run_user(user_stream, stack, USER_IRQS);
        irq_enable();                /* events taken in ring 3 are pending: count them */
        if (r == USER_FAULTED) {
            test_fail(sides[0]->rx_test, "the ring-3 stream faulted: vector %lu error %#lx rip "
                      "%#lx cr2 %#lx", (unsigned long)user_fault.vector,
                      (unsigned long)user_fault.error, (unsigned long)user_fault.rip,
                      (unsigned long)user_fault.cr2);
            for (unsigned i = 0; i < n; i++)
                sides[i]->failed = true;
            return false;
        }
        bool ok = true;
        for (unsigned i = 0; i < n; i++)
            ok &= serve_side(sides[i]);
        if (!ok)
            return false;
        if ((r & U_CODE) == U_DONE)
            return true;
        uint64_t now = now_ns();
        if (r & U_PROGRESS)
            last = now;
        if ((r & U_CODE) != U_IDLE)
            continue;
        if (n > 1 || now - last >= PEER_BOUND_NS) {
            for (unsigned i = 0; i < n; i++)
                stall(sides[i]);
            return false;
        }
        uint64_t until = min64(now + RECHECK_NS, last + PEER_BOUND_NS);
        sides[0]->waits++;
        wait_for_count(&sides[0]->events, seen + 1, until);
        if (now_ns() >= until)
            sides[0]->slow_waits++;
    }
}

/* ---- XenStore ------------------------------------------------------------------------------ */
/* Our node `rel` (relative to our home) = value in transaction tx, owned by us and readable
 * by the peer; false with the reason in `why`. */
static bool put_node(uint32_t tx, const char *rel, const char *value)
{
    return xs_write_shared(tx, rel, value, self, peer, why, sizeof(why));
}

static void set_step(const char *value)
{
    char rel[48];
    snprintf(rel, sizeof(rel), "data/vchan/%u/step", peer);
    if (!put_node(0, rel, value))
        test_fail("vchan.step", "step %s: %s", value, why);
}

/* Wait for the peer's step node to read `want`. */
static bool wait_step(const char *want)
{
    snprintf(path, sizeof(path), "/local/domain/%u/data/vchan/%u/step", peer, self);
    if (xs_wait(path, want, "abort", buf, sizeof(buf), PEER_BOUND_NS))
        return true;
    char name[48];
    snprintf(name, sizeof(name), "vchan.peer_%s", want);
    test_fail(name, "%s reads '%s' after %lu s, expected '%s'", path, buf,
              (unsigned long)(PEER_BOUND_NS / 1000000000ULL), want);
    return false;
}

/* ---- the server ------------------------------------------------------------------------------ */
static bool server_offer(struct side *s)
{
    s->peer = peer;
    long rc = gnttab_setup(gt_pages, GT_FRAMES);
    if (!check("vchan.grant_table", rc == 0, "add_to_physmap(grant_table): %ld", rc))
        return false;

    rc = evtchn_alloc_unbound(DOMID_SELF, peer, &s->port);
    if (rc == 0)
        evtchn_set_handler(s->port, count_handler, (void *)&s->events);
    if (!check("vchan.alloc_unbound", rc == 0, "alloc_unbound(self, %u): %ld", peer, rc))
        return false;

    /* The shared page, as init_gnt_srv leaves it. */
    memset(ring_page, 0, PAGE_SIZE);
    volatile struct vchan_interface *r = s->ring = (volatile struct vchan_interface *)ring_page;
    r->left_order = (uint16_t)left_order;
    r->right_order = (uint16_t)right_order;
    r->cli_live = 2;
    r->srv_live = 1;
    r->cli_notify = VCHAN_NOTIFY_WRITE;
    unsigned lp = ring_pages(left_order), rp = ring_pages(right_order);
    for (unsigned i = 0; i < lp + rp; i++) {
        gnttab_grant(REF_DATA + i, peer, pfn(data_pages[i]), GTF_permit_access);
        r->grants[i] = REF_DATA + i;
        granted_refs[nr_granted++] = REF_DATA + i;
    }
    gnttab_grant(REF_RING, peer, pfn(ring_page), GTF_permit_access);
    granted_refs[nr_granted++] = REF_RING;

    /* The server reads the left ring and writes the right one, both in its own pages. */
    struct vring *rx = &s->rx, *tx = &s->tx;
    rx->shr = &r->left, rx->order = left_order, rx->size = 1u << left_order;
    rx->buf = lp ? data_pages[0] : ring_page + in_page_offset(left_order);
    rx->dir = DIR_C2S;
    tx->shr = &r->right, tx->order = right_order, tx->size = 1u << right_order;
    tx->buf = rp ? data_pages[lp] : ring_page + in_page_offset(right_order);
    tx->dir = DIR_S2C;

    /* The isolation probes' entries. */
    for (unsigned i = 0; i < PAGE_SIZE; i++) {
        other_page[i] = test_byte(REF_OTHER, i);
        revoke_page[i] = test_byte(REF_REVOKE, i);
        ro_page[i] = test_byte(REF_RO, i);
        never_page[i] = 0xee;
    }
    gnttab_grant(REF_OTHER, peer ? 0 : (domid_t)self, pfn(other_page), GTF_permit_access);
    gnttab_grant(REF_NEVER, peer, pfn(never_page), 0);
    gnttab_grant(REF_REVOKE, peer, pfn(revoke_page), GTF_permit_access);
    gnttab_grant(REF_RO, peer, pfn(ro_page), GTF_permit_access | GTF_readonly);
    granted_refs[nr_granted++] = REF_RO;
    info("ring_ref", "%u", REF_RING);
    info("port", "%u", s->port);

    /* ring-ref, event-channel and test-refs in one transaction (init_xs_srv). */
    char base[32], rel[48], value[48];
    snprintf(base, sizeof(base), "data/vchan/%u", peer);
    for (unsigned attempt = 0;; attempt++) {
        uint32_t tx_id = 0;
        int t = xs_transaction_start(&tx_id);
        if (t != XS_TRANSACTION_START) {
            test_fail("vchan.publish", "transaction_start: type %d %s", t, xs_error());
            return false;
        }
        snprintf(rel, sizeof(rel), "%s/ring-ref", base);
        snprintf(value, sizeof(value), "%u", REF_RING);
        bool ok = put_node(tx_id, rel, value);
        snprintf(rel, sizeof(rel), "%s/event-channel", base);
        snprintf(value, sizeof(value), "%u", s->port);
        ok = ok && put_node(tx_id, rel, value);
        snprintf(rel, sizeof(rel), "%s/test-refs", base);
        snprintf(value, sizeof(value), "%u %u %u %u", REF_OTHER, REF_NEVER, REF_REVOKE, REF_RO);
        ok = ok && put_node(tx_id, rel, value);
        t = xs_transaction_end(tx_id, ok);
        if (ok && t == XS_TRANSACTION_END) {
            test_pass("vchan.publish");
            return true;
        }
        if (!ok) {
            test_fail("vchan.publish", "%s", why);
            return false;
        }
        if (t != XS_ERROR || strcmp(xs_error(), "EAGAIN") || attempt >= 8) {
            test_fail("vchan.publish", "transaction_end: type %d %s", t, xs_error());
            return false;
        }
    }
}

/* The client's event follows its cli_live = 1. */
static bool server_wait_connected(struct side *s)
{
    uint64_t deadline = now_ns() + PEER_BOUND_NS;
    for (;;) {
        uint64_t seen = s->events;
        uint8_t live = s->ring->cli_live;
        if (live == 1) {
            test_pass("vchan.client_connected");
            return true;
        }
        if (now_ns() >= deadline || !wait_for_count(&s->events, seen + 1, deadline)) {
            test_fail("vchan.client_connected", "cli_live %u after %lu s (2: never connected)",
                      s->ring->cli_live, (unsigned long)(PEER_BOUND_NS / 1000000000ULL));
            return false;
        }
    }
}

/* The client has everything mapped and is idle. */
static void server_check_mapped(struct side *s, bool client_copies)
{
    unsigned lp = ring_pages(left_order), rp = ring_pages(right_order);
    uint16_t want_left = client_copies ? 0 : GTF_reading | GTF_writing;
    uint16_t want_right = client_copies ? 0 : GTF_reading;
    bool ok = gnttab_busy(REF_RING) == (GTF_reading | GTF_writing);
    unsigned bad = ok ? 0 : REF_RING;
    for (unsigned i = 0; ok && i < lp + rp; i++) {
        ok = gnttab_busy(REF_DATA + i) == (i < lp ? want_left : want_right);
        if (!ok)
            bad = REF_DATA + i;
    }
    check("vchan.flags_while_mapped", ok, "ref %u: flags %#x (mode %s: ring r+w, left %#x, "
          "right %#x expected)", bad, bad ? gnttab_v1[bad].flags : 0,
          client_copies ? "copy" : "map", want_left, want_right);
}

static void server_revoke(struct side *s)
{
    check_eq("vchan.ro_flags_reading_only", gnttab_busy(REF_RO), GTF_reading);
    unsigned i = 0;
    while (i < PAGE_SIZE && ro_page[i] == test_byte(REF_RO, i))
        i++;
    check("vchan.ro_page_unchanged", i == PAGE_SIZE, "byte %u is %#x, was %#x", i,
          i < PAGE_SIZE ? ro_page[i] : 0, i < PAGE_SIZE ? test_byte(REF_RO, i) : 0);
    uint16_t f = gnttab_v1[REF_REVOKE].flags;
    check("vchan.revoke", gnttab_end_access(REF_REVOKE) && gnttab_v1[REF_REVOKE].flags == 0,
          "ref %u flags %#x (the client should have unmapped it)", REF_REVOKE, f);
}

static void server_release(struct side *s)
{
    check_eq("vchan.client_closed", s->ring->cli_live, 0);
    unsigned bad = 0;
    for (unsigned i = 0; i < nr_granted && !bad; i++)
        if (gnttab_busy(granted_refs[i]))
            bad = granted_refs[i];
    check("vchan.flags_clear_after_unmap", !bad, "ref %u still has flags %#x", bad,
          bad ? gnttab_v1[bad].flags : 0);
    bad = 0;
    for (unsigned i = 0; i < nr_granted; i++)
        if (!gnttab_end_access(granted_refs[i]) && !bad)
            bad = granted_refs[i];
    check("vchan.end_access", !bad, "ref %u could not be ended: flags %#x", bad,
          bad ? gnttab_v1[bad].flags : 0);
}

static void role_server(void)
{
    struct side *s = &server_side;
    struct side *sides[1] = { s };
    if (!server_offer(s) || !server_wait_connected(s)) {
        set_step("abort");
        return;
    }
    bool ok = stream(sides, 1);
    stream_info(s);
    if (!ok) {
        set_step("abort");
        return;
    }
    if (!wait_step("streamed"))
        goto abort;
    snprintf(path, sizeof(path), "/local/domain/%u/data/vchan/%u/mode", peer, self);
    bool copies = xs_read(0, path, buf, sizeof(buf)) == XS_READ && !strcmp(buf, "copy");
    info("mode", "%s", copies ? "copy" : "map");
    server_check_mapped(s, copies);
    set_step("streamed");
    if (!wait_step("probed"))
        goto abort;
    server_revoke(s);
    set_step("revoked");
    if (!wait_step("unmapped"))
        goto abort;
    server_release(s);
    set_step("released");
    if (!wait_step("done"))
        goto abort;
    s->ring->srv_live = 0;
    return;
abort:
    set_step("abort");
}

/* ---- the client ------------------------------------------------------------------------------ */
static bool client_connect(struct side *s)
{
    s->peer = peer;
    /* init_xs / libxenvchan_client_init: ring-ref and event-channel from the server's path. */
    unsigned long v = 0, port = 0, refs[4] = { 0 };
    const char *p;
    snprintf(path, sizeof(path), "/local/domain/%u/data/vchan/%u/ring-ref", peer, self);
    bool ok = xs_wait(path, NULL, NULL, buf, sizeof(buf), PEER_BOUND_NS) &&
              parse_uint(buf, &v) && v;
    ring_ref = (grant_ref_t)v;
    snprintf(path, sizeof(path), "/local/domain/%u/data/vchan/%u/event-channel", peer, self);
    ok = ok && xs_read(0, path, buf, sizeof(buf)) == XS_READ && parse_uint(buf, &port) && port;
    snprintf(path, sizeof(path), "/local/domain/%u/data/vchan/%u/test-refs", peer, self);
    ok = ok && xs_read(0, path, buf, sizeof(buf)) == XS_READ && (p = parse_uint(buf, &refs[0])) &&
         (p = parse_uint(p, &refs[1])) && (p = parse_uint(p, &refs[2])) && parse_uint(p, &refs[3]);
    if (!check("vchan.offer", ok, "ring-ref %lu event-channel %lu test-refs '%s' under "
               "/local/domain/%u/data/vchan/%u", v, port, buf, peer, self))
        return false;
    for (unsigned i = 0; i < 4; i++)
        test_refs[i] = (grant_ref_t)refs[i];
    info("ring_ref", "%u", ring_ref);

    /* init_evt_cli: bind with events off, drop the pending bit Xen sets ("be safe"). */
    uint64_t f = irq_save();
    long rc = evtchn_bind_interdomain(peer, (evtchn_port_t)port, &s->port);
    if (rc == 0) {
        evtchn_set_handler(s->port, count_handler, (void *)&s->events);
        evtchn_clear_pending(s->port);
    }
    irq_restore(f);
    if (!check("vchan.bind", rc == 0, "bind_interdomain(%u, %lu): %ld", peer, port, rc))
        return false;
    info("port", "%u", s->port);

    /* init_gnt_cli: the shared page first, then what its orders and grants[] say. */
    int16_t st = map_ref(peer, ring_ref, FRAME_RING, false, &ring_handle);
    if (!check("vchan.map_ring", st == GNTST_okay, "map ref %u at %#lx: status %d", ring_ref,
               (unsigned long)frame_addr(FRAME_RING), st))
        return false;
    map_4k((uint64_t)(uintptr_t)frame_va(FRAME_RING), frame_addr(FRAME_RING),
           PTE_P | PTE_W | PTE_U);             /* ring 3 streams through it */
    volatile struct vchan_interface *r = s->ring =
        (volatile struct vchan_interface *)frame_va(FRAME_RING);
    unsigned lo = r->left_order, ro = r->right_order;
    ok = orders_ok(lo, ro) && r->cli_live == 2 && r->srv_live == 1;
    if (!check("vchan.ring_header", ok, "left_order %u right_order %u (" ORDERS_RULE ") "
               "cli_live %u srv_live %u", lo, ro, ORDERS_ARGS(lo, ro), r->cli_live, r->srv_live))
        return false;
    info("left_order", "%u", lo);
    info("right_order", "%u", ro);

    /* The client writes the left ring and reads the right one. */
    unsigned lp = ring_pages(lo), rp = ring_pages(ro);
    struct vring *tx = &s->tx, *rx = &s->rx;
    tx->shr = &r->left, tx->order = lo, tx->size = 1u << lo, tx->dir = DIR_C2S;
    rx->shr = &r->right, rx->order = ro, rx->size = 1u << ro, rx->dir = DIR_S2C;
    tx->base = in_page_offset(lo);
    rx->base = in_page_offset(ro);
    for (unsigned i = 0; i < lp; i++)
        tx->gref[i] = r->grants[i];
    for (unsigned i = 0; i < rp; i++)
        rx->gref[i] = r->grants[lp + i];
    if (!lp)
        tx->gref[0] = ring_ref;
    if (!rp)
        rx->gref[0] = ring_ref;

    if (copy_mode) {
        tx->copy = rx->copy = true;
        tx->bounce = bounce_tx[0], rx->bounce = bounce_rx[0];
        tx->buf = tx->bounce + tx->base;
        rx->buf = rx->bounce + rx->base;
    } else {
        static struct gnttab_map_grant_ref ops[2 * MAX_RING_PAGES];
        for (unsigned i = 0; i < lp + rp; i++) {
            bool readonly = i >= lp;     /* the read ring, as libxenvchan's PROT_READ */
            memset(&ops[i], 0, sizeof(ops[i]));
            ops[i].host_addr = frame_addr(FRAME_DATA + i);
            ops[i].flags = GNTMAP_host_map | (readonly ? GNTMAP_readonly : 0);
            ops[i].ref = r->grants[i];
            ops[i].dom = peer;
            ops[i].status = 99;
        }
        rc = lp + rp ? HYPERVISOR_grant_table_op(GNTTABOP_map_grant_ref, ops, lp + rp) : 0;
        unsigned bad = lp + rp;
        for (unsigned i = 0; i < lp + rp; i++) {
            if (ops[i].status == GNTST_okay) {
                data_handles[nr_data_mapped++] = ops[i].handle;   /* any failure aborts */
                map_4k((uint64_t)(uintptr_t)frame_va(FRAME_DATA + i),
                       frame_addr(FRAME_DATA + i), PTE_P | PTE_U | (i >= lp ? 0 : PTE_W));
            } else if (bad == lp + rp) {
                bad = i;
            }
        }
        if (!check("vchan.map_data", rc == 0 && bad == lp + rp, "rc %ld; %u of %u pages; ref "
                   "%u status %d", rc, nr_data_mapped, lp + rp, bad < lp + rp ? ops[bad].ref : 0,
                   bad < lp + rp ? ops[bad].status : 0))
            return false;
        tx->buf = lp ? frame_va(FRAME_DATA) : frame_va(FRAME_RING) + tx->base;
        rx->buf = rp ? frame_va(FRAME_DATA + lp) : frame_va(FRAME_RING) + rx->base;
    }

    r->cli_live = 1;
    r->srv_notify = VCHAN_NOTIFY_WRITE;
    mb();
    evtchn_send(s->port);                    /* wake the server */
    return true;
}

/* Store v at p with a kernel-fault catcher armed: whether it faulted. */
static __attribute__((noinline, noclone)) bool store_faulted(volatile uint64_t *p, uint64_t v)
{
    extern char vchan_store_done[];
    arm_kernel_fault(vchan_store_done);
    asm volatile("movq %0, (%1)\n\t.globl vchan_store_done\nvchan_store_done:"
                 :: "r"(v), "r"(p) : "memory");
    disarm_kernel_fault();
    return user_fault.faulted;
}

static bool page_is(const volatile uint8_t *p, unsigned ref, unsigned *bad)
{
    for (unsigned i = 0; i < PAGE_SIZE; i++)
        if (p[i] != test_byte(ref, i)) {
            *bad = i;
            return false;
        }
    return true;
}

static void client_probe(struct side *s)
{
    grant_ref_t other = test_refs[0], never = test_refs[1], revoke = test_refs[2],
                ro = test_refs[3];
    unsigned bad = 0;
    expect_map_refused("vchan.map_other_domain", other, false, GNTST_general_error);
    expect_map_refused("vchan.map_never_granted", never, false, GNTST_general_error);
    expect_map_refused("vchan.map_ref_out_of_range", REF_BEYOND, false, GNTST_bad_gntref);
    expect_map_refused("vchan.map_ro_needs_readonly", ro, false, GNTST_general_error);

    /* The read-only grant, mapped read-only; a store through a writable PTE. */
    int16_t st = map_ref(peer, ro, FRAME_RO, true, &ro_handle);
    ro_mapped = st == GNTST_okay;
    if (check("vchan.map_ro", ro_mapped, "map ref %u readonly: status %d", ro, st)) {
        volatile uint8_t *va = frame_va(FRAME_RO);
        map_4k((uint64_t)(uintptr_t)va, frame_addr(FRAME_RO), PTE_P | PTE_W);
        check("vchan.map_ro_reads", page_is(va, ro, &bad), "byte %u is %#x, expected %#x", bad,
              va[bad], test_byte(ro, bad));
        volatile uint64_t *q = (volatile uint64_t *)va + 2;
        uint64_t before = *q;
        bool faulted = store_faulted(q, ~before);
        check("vchan.map_ro_write_no_fault", !faulted, "vector %lu rip %#lx",
              (unsigned long)user_fault.vector, (unsigned long)user_fault.rip);
        check("vchan.map_ro_write_dropped", *q == before, "the frame reads %#lx after the "
              "store, %#lx before", (unsigned long)*q, (unsigned long)before);
    }

    /* The grant the server will revoke: usable now. */
    grant_handle_t h = 0;
    st = map_ref(peer, revoke, FRAME_REVOKE, false, &h);
    revoke_mapped = st == GNTST_okay;
    if (check("vchan.map_revoke_before", revoke_mapped, "map ref %u: status %d", revoke, st)) {
        volatile uint8_t *va = frame_va(FRAME_REVOKE);
        map_4k((uint64_t)(uintptr_t)va, frame_addr(FRAME_REVOKE), PTE_P | PTE_W);
        check("vchan.map_revoke_reads", page_is(va, revoke, &bad), "byte %u is %#x, expected "
              "%#x", bad, va[bad], test_byte(revoke, bad));
        check_eq("vchan.unmap_revoke", unmap_frame(FRAME_REVOKE, h), GNTST_okay);
    }

    if (copy_mode) {
        check_eq("vchan.copy_other_domain", copy_probe(peer, other, false), GNTST_general_error);
        check_eq("vchan.copy_never_granted", copy_probe(peer, never, false), GNTST_general_error);
        check_eq("vchan.copy_ref_out_of_range", copy_probe(peer, REF_BEYOND, false),
                 GNTST_bad_gntref);
        check_eq("vchan.copy_ro_dest", copy_probe(peer, ro, true), GNTST_general_error);
        memset(probe_page, 0, 64);
        st = copy_probe(peer, ro, false);
        unsigned i = 0;
        while (st == GNTST_okay && i < 64 && probe_page[i] == test_byte(ro, i))
            i++;
        check("vchan.copy_ro_source", st == GNTST_okay && i == 64, "status %d, byte %u", st, i);
    }
}

/* Every 512th qword and the last one of frame H+idx read all-ones. */
static bool reads_ones(unsigned idx, unsigned *where)
{
    volatile uint64_t *q = (volatile uint64_t *)frame_va(idx);
    for (unsigned i = 0; i <= 512; i += 64) {
        unsigned at = i < 512 ? i : 511;
        if (q[at] != ~0ULL) {
            *where = at * 8;
            return false;
        }
    }
    return true;
}

static void client_unmap(struct side *s)
{
    grant_ref_t revoke = test_refs[2];
    expect_map_refused("vchan.map_after_revoke", revoke, false, GNTST_general_error);
    if (copy_mode)
        check_eq("vchan.copy_after_revoke", copy_probe(peer, revoke, false), GNTST_general_error);

    /* libxenvchan_close: cli_live = 0, unmap, notify. */
    s->ring->cli_live = 0;
    mb();
    evtchn_send(s->port);
    if (ro_mapped)
        check_eq("vchan.unmap_ro", unmap_frame(FRAME_RO, ro_handle), GNTST_okay);
    if (nr_data_mapped) {
        static struct gnttab_unmap_grant_ref ops[2 * MAX_RING_PAGES];
        for (unsigned i = 0; i < nr_data_mapped; i++) {
            memset(&ops[i], 0, sizeof(ops[i]));
            ops[i].host_addr = frame_addr(FRAME_DATA + i);
            ops[i].handle = data_handles[i];
            ops[i].status = 99;
        }
        long rc = HYPERVISOR_grant_table_op(GNTTABOP_unmap_grant_ref, ops, nr_data_mapped);
        unsigned bad = nr_data_mapped;
        for (unsigned i = 0; i < nr_data_mapped && bad == nr_data_mapped; i++)
            if (ops[i].status != GNTST_okay)
                bad = i;
        check("vchan.unmap_data", rc == 0 && bad == nr_data_mapped, "rc %ld; page %u status %d",
              rc, bad, bad < nr_data_mapped ? ops[bad].status : 0);
    }
    check_eq("vchan.unmap_ring", unmap_frame(FRAME_RING, ring_handle), GNTST_okay);
    check_eq("vchan.unmap_twice", unmap_frame(FRAME_RING, ring_handle), GNTST_bad_handle);
    s->ring = NULL;

    /* Nothing in the p2m at those frames now: all-ones. */
    unsigned where = 0, idx = FRAME_RING;
    bool ok = reads_ones(FRAME_RING, &where);
    for (unsigned i = 0; ok && i < nr_data_mapped; i++)
        ok = reads_ones(idx = FRAME_DATA + i, &where);
    if (ok && ro_mapped)
        ok = reads_ones(idx = FRAME_RO, &where);
    if (ok && revoke_mapped)
        ok = reads_ones(idx = FRAME_REVOKE, &where);
    check("vchan.unmapped_reads_ones", ok, "frame %#lx offset %u reads %#lx",
          (unsigned long)(frame_base + idx), where,
          ok ? 0UL : (unsigned long)((volatile uint64_t *)frame_va(idx))[where / 8]);
}

static void client_final(void)
{
    expect_map_refused("vchan.map_after_end_access", ring_ref, false, GNTST_general_error);
}

/* After step "done" the server powers off; its destruction closes its end of the channel
 * (evtchn_destroy), so ours becomes unbound for it. Waiting for that keeps our store node
 * (removed with our domain) readable until the server has read it. */
static void client_wait_server_gone(struct side *s)
{
    struct evtchn_status st = { 0 };
    uint64_t deadline = now_ns() + PEER_BOUND_NS, pause = MS;
    long rc;
    for (;;) {
        rc = evtchn_status(DOMID_SELF, s->port, &st);
        if (rc == 0 && st.status == EVTCHNSTAT_unbound)
            break;
        if (now_ns() >= deadline)
            break;
        block_until(now_ns() + pause);
        if (pause < 64 * MS)
            pause *= 2;
    }
    check("vchan.server_gone", rc == 0 && st.status == EVTCHNSTAT_unbound &&
          st.u.unbound.dom == peer, "port %u: rc %ld status %u (remote %u) after %lu s; "
          "expected unbound for %u", s->port, rc, st.status, st.u.unbound.dom,
          (unsigned long)(PEER_BOUND_NS / 1000000000ULL), peer);
}

static void role_client(void)
{
    struct side *s = &client_side;
    struct side *sides[1] = { s };
    char rel[48];
    snprintf(rel, sizeof(rel), "data/vchan/%u/mode", peer);
    if (!put_node(0, rel, copy_mode ? "copy" : "map"))
        test_fail("vchan.mode_node", "%s", why);
    if (!client_connect(s)) {
        set_step("abort");
        return;
    }
    bool ok = stream(sides, 1);
    stream_info(s);
    if (!ok) {
        set_step("abort");
        return;
    }
    set_step("streamed");
    if (!wait_step("streamed"))
        goto abort;
    client_probe(s);
    set_step("probed");
    if (!wait_step("revoked"))
        goto abort;
    client_unmap(s);
    set_step("unmapped");
    if (!wait_step("released"))
        goto abort;
    client_final();
    set_step("done");
    client_wait_server_gone(s);
    return;
abort:
    set_step("abort");
}

/* Both halves in this domain, the steps in the pair's order without waiting. */
static void role_loop(void)
{
    struct side *sv = &server_side, *cl = &client_side;
    struct side *sides[2] = { sv, cl };
    if (!server_offer(sv) || !client_connect(cl) || !server_wait_connected(sv))
        return;
    bool ok = stream(sides, 2);
    stream_info(sv);
    stream_info(cl);
    if (!ok)
        return;
    server_check_mapped(sv, copy_mode);
    client_probe(cl);
    server_revoke(sv);
    client_unmap(cl);
    server_release(sv);
    client_final();
    sv->ring->srv_live = 0;
}

int guest_main(void)
{
    const char *s = cmdline_get("role");   /* a static copy the next cmdline_get reuses */
    bool server = s && !strcmp(s, "server"), client = s && !strcmp(s, "client");
    loop_mode = s && !strcmp(s, "loop");
    if (!check("vchan.role", server || client || loop_mode,
               "role=server, role=client or role=loop expected, not '%s'", s ? s : "(none)"))
        return 0;
    info("role", "%s", server ? "server" : client ? "client" : "loop");

    unsigned long mib = 4;
    if ((s = cmdline_get("mib")))
        mib = strtoul(s, NULL, 10);
    if (!check("vchan.mib", mib >= 1 && mib <= 1024, "mib=%lu: 1..1024", mib))
        return 0;
    total_bytes = mib * MIB;
    info("mib", "%lu", mib);
    s = cmdline_get("notify");
    notify_always = s && !strcmp(s, "always");
    if (!check("vchan.notify", !s || notify_always || !strcmp(s, "bits"),
               "notify=bits or notify=always expected, not '%s'", s ? s : ""))
        return 0;
    info("notify", "%s", notify_always ? "always" : "bits");
    s = cmdline_get("check");
    check_none = s && !strcmp(s, "none");
    if (!check("vchan.check", !s || check_none || !strcmp(s, "full"),
               "check=full or check=none expected, not '%s'", s ? s : ""))
        return 0;
    info("check", "%s", check_none ? "none" : "full");
    if (!server) {
        s = cmdline_get("mode");
        copy_mode = s && !strcmp(s, "copy");
        if (!check("vchan.mode", !s || copy_mode || !strcmp(s, "map"),
                   "mode=map or mode=copy expected, not '%s'", s ? s : ""))
            return 0;
        info("mode", "%s", copy_mode ? "copy" : "map");
    }
    if (!client) {
        if ((s = cmdline_get("left_order")))
            left_order = (unsigned)strtoul(s, NULL, 10);
        if ((s = cmdline_get("right_order")))
            right_order = (unsigned)strtoul(s, NULL, 10);
        if (!check("vchan.orders", orders_ok(left_order, right_order),
                   "left_order %u right_order %u: " ORDERS_RULE, left_order, right_order,
                   ORDERS_ARGS(left_order, right_order)))
            return 0;
        info("left_order", "%u", left_order);
        info("right_order", "%u", right_order);
    }

    long rc = evtchn_init(UPCALL_CALLBACK_VECTOR);
    if (!check_eq("vchan.evtchn_init", rc, 0))
        return 0;
    if (!check_eq("vchan.xenstore", xs_open(), 0))
        return 0;
    self = xs_domid();
    info("domid", "%u", self);
    frame_base = (boot.ram_top >> PAGE_SHIFT) + 256;

    if (loop_mode) {
        peer = (domid_t)self;
    } else {
        int v = xs_wait_peer(self, buf, sizeof(buf), PEER_BOUND_NS);
        if (!check("vchan.peer", v >= 0, "data/peer: '%s' (our domid %u)",
                   buf[0] ? buf : "(none)", self))
            return 0;
        peer = (domid_t)v;
    }
    info("peer", "%u", peer);
    if (!server)
        info("frame_base", "%#lx", (unsigned long)frame_base);
    if (server)
        role_server();
    else if (client)
        role_client();
    else
        role_loop();
    return 0;
}
