/*
 * ioring: a request/response ring as Xen's public io/ring.h defines it (the ring type of
 * blkif, netif and the other split drivers), between two domains in two host processes,
 * set up as a front end and a back end set up theirs: the front grants the ring page and
 * leaves an event channel unbound for the back, publishes both in the store, the back maps
 * the grant and binds the channel. Then `requests` requests go through, each answered, with
 * io/ring.h's notification rules (RING_PUSH_*_AND_CHECK_NOTIFY, RING_FINAL_CHECK_FOR_*),
 * every one checked; then the back unmaps and closes, and the front takes its page back.
 *
 * A PAIR of guests: this image runs as the front (`role=front`) and as the back
 * (`role=back`). Each reads its peer's domid from its store node `data/peer`, which the
 * host writes as dom0 once both domains exist (as for `interdomain` and `vchan`). Needs
 * `--xenstore`. Every wait is bounded (PEER_BOUND_NS for what depends on the peer); a side
 * that fails writes state "abort", which ends the other's wait at once.
 *
 * The ring: DEFINE_RING_TYPES(ioring, request, response) in one 4 KiB page (RING_SIZE 128).
 *   request  { id, value }          id counts from 0; value = pattern(id)
 *   response { id, value, status }  the same id, value = ~request value, status 0
 * The back answers in order, so the front checks response i against request i.
 *
 * Store (F = the front's domid, B = the back's; decimal values; every node owned by its
 * writer and readable by the peer, XS_SET_PERMS "n<owner>" "r<peer>"):
 *  /local/domain/F/data/ioring/ring-ref       the ring page's grant ref (blkfront's name)
 *  /local/domain/F/data/ioring/event-channel  the port left unbound for B (blkfront's name)
 *      (both in one transaction, as blkfront's talk_to_blkback writes them)
 *  /local/domain/F/data/ioring/state          "closing" once every response came, or "abort"
 *  /local/domain/B/data/ioring/state          "connected" once mapped and bound, then
 *                                             "closed" once unmapped and closed, or "abort"
 *
 * Front: .grant_table, .alloc_unbound, .publish, .connected (the back's state);
 *   .end_access_refused_while_mapped (GTF_reading | GTF_writing set: Xen's gnttab_end_foreign_access_ref
 *   must not take the page back); .responses (all of them, in order, right values);
 *   state "closing"; .back_closed; .end_access (flags clear, the page ours again);
 *   .peer_close_unbinds (EVTCHNSTAT_unbound, remote B, after the back's close).
 * Back: .frontend_nodes, .bind, .map, .requests (all served, in order, right values);
 *   .announce_connected (state "connected"); .front_closing; .unmap, .close; .closed
 *   (state "closed").
 *
 * cmdline: role=front|back (required); requests=N (1..10000000, default 100000; give both
 *   the same). INFO keys: role, domid, peer, ring_size, requests, notifies_sent, polls.
 */
#include "guest.h"
#include "evtchn.h"
#include "gnttab.h"
#include "ring.h"

#define PEER_BOUND_NS   (3 * WAIT_BOUND_NS)  /* for what waits on the peer's progress */
#define RING_REF        GNTTAB_FIRST_REF
#define MAX_REQUESTS    10000000UL

struct ioring_request {
    uint64_t id;
    uint64_t value;
};
struct ioring_response {
    uint64_t id;
    uint64_t value;
    int32_t status;
    uint32_t pad;
};
DEFINE_RING_TYPES(ioring, struct ioring_request, struct ioring_response);

static uint8_t gt_page[PAGE_SIZE] ALIGNED(4096);    /* grant-table frame 0 (front) */
static uint8_t ring_page[PAGE_SIZE] ALIGNED(4096);  /* the shared ring (front) */
static unsigned self;
static domid_t peer;
static unsigned long requests = 100000;
static evtchn_port_t port;
static unsigned long notifies_sent, polls;
static char buf[128], path[96], why[128];

static uint64_t pattern(uint64_t id)
{
    uint64_t x = id * 0x9e3779b97f4a7c15ULL ^ 0x696f72696e670000ULL;
    return x ^ (x >> 29);
}

/* Our node data/ioring/<name> = value, readable by the peer; false with the reason. */
static bool put(uint32_t tx, const char *name, const char *value)
{
    char rel[48];
    snprintf(rel, sizeof(rel), "data/ioring/%s", name);
    return xs_write_shared(tx, rel, value, self, peer, why, sizeof(why));
}

static void abort_peer(void)
{
    put(0, "state", "abort");
}

/* Wait until the peer's data/ioring/<name> reads `want` ("abort" ends the wait). */
static bool peer_state(const char *test, const char *want)
{
    snprintf(path, sizeof(path), "/local/domain/%u/data/ioring/state", peer);
    bool ok = xs_wait(path, want, "abort", buf, sizeof(buf), PEER_BOUND_NS);
    return check(test, ok, "%s: '%s', waited for '%s'", path, buf, want);
}

/* Sleep until our port is pending (it stays masked: no upcall), at most PEER_BOUND_NS;
 * false when nothing came in that time. */
static bool wait_event(void)
{
    polls++;
    return poll_port(port, now_ns() + PEER_BOUND_NS);
}

/* ---- the front ------------------------------------------------------------------------ */
static bool front_publish(void)
{
    char value[24];
    for (unsigned attempt = 0;; attempt++) {
        uint32_t tx = 0;
        int t = xs_transaction_start(&tx);
        if (t != XS_TRANSACTION_START)
            return check("ioring.publish", false, "transaction_start: %d %s", t, xs_error());
        snprintf(value, sizeof(value), "%u", RING_REF);
        bool ok = put(tx, "ring-ref", value);
        snprintf(value, sizeof(value), "%u", port);
        ok = ok && put(tx, "event-channel", value);
        t = xs_transaction_end(tx, ok);
        if (ok && t == XS_TRANSACTION_END) {
            test_pass("ioring.publish");
            return true;
        }
        if (!ok)
            return check("ioring.publish", false, "%s", why);
        if (t != XS_ERROR || strcmp(xs_error(), "EAGAIN") || attempt >= 8)
            return check("ioring.publish", false, "transaction_end: %d %s", t, xs_error());
    }
}

/* Push requests while there is room, take the responses that came; false on a bad one. */
static bool front_stream(ioring_front_ring_t *front)
{
    unsigned long next = 0, done = 0;
    uint64_t idle_since = now_ns();
    while (done < requests) {
        bool moved = false;
        while (next < requests && !RING_FULL(front)) {
            struct ioring_request *req = RING_GET_REQUEST(front, front->req_prod_pvt);
            req->id = next;
            req->value = pattern(next);
            front->req_prod_pvt++, next++, moved = true;
        }
        int notify;
        RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(front, notify);
        if (notify)
            notify_port(port), notifies_sent++;
        int more;
        do {
            RING_IDX rp = front->sring->rsp_prod;
            rmb();  /* the responses before the index that covers them */
            if (rp - front->rsp_cons > RING_SIZE(front))
                return check("ioring.responses", false, "rsp_prod %u is %u ahead of rsp_cons",
                             rp, rp - front->rsp_cons);
            for (; front->rsp_cons != rp; front->rsp_cons++, done++, moved = true) {
                struct ioring_response rsp;
                RING_COPY_RESPONSE(front, front->rsp_cons, &rsp);
                if (rsp.id != done || rsp.value != ~pattern(done) || rsp.status != 0)
                    return check("ioring.responses", false, "response %lu: id %lu value "
                                 "%#lx status %d", done, (unsigned long)rsp.id,
                                 (unsigned long)rsp.value, rsp.status);
            }
            RING_FINAL_CHECK_FOR_RESPONSES(front, more);
        } while (more);
        if (moved)
            idle_since = now_ns();
        else if (done < requests && !wait_event() && now_ns() - idle_since > PEER_BOUND_NS)
            return check("ioring.responses", false, "%lu of %lu answered, nothing for %lu s",
                         done, requests, (unsigned long)(PEER_BOUND_NS / 1000000000ULL));
    }
    test_pass("ioring.responses");
    return true;
}

static void role_front(void)
{
    if (!check_eq("ioring.grant_table", gnttab_setup(gt_page, 1), 0))
        return;
    if (!check_eq("ioring.alloc_unbound", evtchn_alloc_unbound(DOMID_SELF, peer, &port), 0))
        return;
    mask_port(port, true);  /* polled, never an upcall */
    ioring_sring_t *sring = (ioring_sring_t *)ring_page;
    SHARED_RING_INIT(sring);
    ioring_front_ring_t front;
    FRONT_RING_INIT(&front, sring, PAGE_SIZE);
    info("ring_size", "%u", RING_SIZE(&front));
    gnttab_grant(RING_REF, peer, (uint64_t)(uintptr_t)ring_page >> PAGE_SHIFT, GTF_permit_access);
    if (!front_publish() || !peer_state("ioring.connected", "connected"))
        return abort_peer();
    uint16_t busy = gnttab_busy(RING_REF);
    check("ioring.end_access_refused_while_mapped",
          busy == (GTF_reading | GTF_writing) && !gnttab_end_access(RING_REF),
          "flags %#x while the back maps the ring", gnttab_v1[RING_REF].flags);
    if (!front_stream(&front))
        return abort_peer();
    info("notifies_sent", "%lu", notifies_sent);
    info("polls", "%lu", polls);
    if (!check("ioring.closing", put(0, "state", "closing"), "%s", why))
        return;
    if (!peer_state("ioring.back_closed", "closed"))
        return;
    check("ioring.end_access", gnttab_busy(RING_REF) == 0 && gnttab_end_access(RING_REF),
          "flags %#x after the back unmapped", gnttab_v1[RING_REF].flags);
    struct evtchn_status st;
    long rc = evtchn_status(DOMID_SELF, port, &st);
    check("ioring.peer_close_unbinds",
          rc == 0 && st.status == EVTCHNSTAT_unbound && st.u.unbound.dom == peer,
          "status of %u: rc %ld, %u remote %u", port, rc, st.status, st.u.unbound.dom);
}

/* ---- the back ------------------------------------------------------------------------- */
/* Serve requests as blkback's do_block_io_op does: take what the front pushed, answer each,
 * push the answers, and sleep only after RING_FINAL_CHECK_FOR_REQUESTS found nothing. */
static bool back_serve(ioring_back_ring_t *back)
{
    unsigned long served = 0;
    uint64_t idle_since = now_ns();
    while (served < requests) {
        RING_IDX rc = back->req_cons, rp = back->sring->req_prod;
        rmb();  /* the requests before the index that covers them */
        if (RING_REQUEST_PROD_OVERFLOW(back, rp))
            return check("ioring.requests", false, "req_prod %u overflows (req_cons %u, "
                         "rsp_prod %u)", rp, rc, back->rsp_prod_pvt);
        bool moved = rc != rp;
        for (; rc != rp && !RING_REQUEST_CONS_OVERFLOW(back, rc); rc++, served++) {
            struct ioring_request req;
            RING_COPY_REQUEST(back, rc, &req);
            back->req_cons = rc + 1;
            if (req.id != served || req.value != pattern(served))
                return check("ioring.requests", false, "request %lu: id %lu value %#lx",
                             served, (unsigned long)req.id, (unsigned long)req.value);
            struct ioring_response *rsp = RING_GET_RESPONSE(back, back->rsp_prod_pvt);
            rsp->id = req.id;
            rsp->value = ~req.value;
            rsp->status = 0;
            back->rsp_prod_pvt++;
        }
        int notify, more;
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(back, notify);
        if (notify)
            notify_port(port), notifies_sent++;
        RING_FINAL_CHECK_FOR_REQUESTS(back, more);
        if (moved)
            idle_since = now_ns();
        else if (!more && !wait_event() && now_ns() - idle_since > PEER_BOUND_NS)
            return check("ioring.requests", false, "%lu of %lu served, nothing for %lu s",
                         served, requests, (unsigned long)(PEER_BOUND_NS / 1000000000ULL));
    }
    test_pass("ioring.requests");
    return true;
}

static bool read_front_node(const char *name, unsigned long *value)
{
    snprintf(path, sizeof(path), "/local/domain/%u/data/ioring/%s", peer, name);
    if (!xs_wait(path, NULL, NULL, buf, sizeof(buf), PEER_BOUND_NS))
        return false;
    const char *end;
    *value = strtoul(buf, &end, 10);
    return *end == 0;
}

static void role_back(void)
{
    unsigned long ref = 0, remote_port = 0;
    bool ok = read_front_node("ring-ref", &ref) && read_front_node("event-channel", &remote_port);
    if (!check("ioring.frontend_nodes", ok, "%s: '%s'", path, buf))
        return abort_peer();
    if (!check_eq("ioring.bind", evtchn_bind_interdomain(peer, (evtchn_port_t)remote_port,
                                                         &port), 0))
        return abort_peer();
    mask_port(port, true);
    uint64_t gpa = boot.ram_top + 256 * PAGE_SIZE;  /* above RAM: nothing there */
    grant_handle_t handle = 0;
    int16_t st = gnttab_map(peer, (grant_ref_t)ref, gpa, false, &handle);
    if (!check("ioring.map", st == GNTST_okay, "map ref %lu at %#lx: status %d", ref,
               (unsigned long)gpa, st))
        return abort_peer();
    uint64_t va = ALIAS_BASE;
    map_4k(va, gpa, PTE_P | PTE_W);
    ioring_back_ring_t back;
    BACK_RING_INIT(&back, (ioring_sring_t *)(uintptr_t)va, PAGE_SIZE);
    info("ring_size", "%u", RING_SIZE(&back));
    if (!check("ioring.announce_connected", put(0, "state", "connected"), "%s", why))
        return;
    if (!back_serve(&back))
        return abort_peer();
    info("notifies_sent", "%lu", notifies_sent);
    info("polls", "%lu", polls);
    if (!peer_state("ioring.front_closing", "closing"))
        return;
    unmap_4k(va);
    check_eq("ioring.unmap", gnttab_unmap(gpa, handle), GNTST_okay);
    check_eq("ioring.close", evtchn_close(port), 0);
    check("ioring.closed", put(0, "state", "closed"), "%s", why);
}

int guest_main(void)
{
    const char *s = cmdline_get("role");
    bool front = s && !strcmp(s, "front"), back = s && !strcmp(s, "back");
    if (!check("ioring.role", front || back, "role=front or role=back expected, not '%s'",
               s ? s : "(none)"))
        return 0;
    info("role", "%s", front ? "front" : "back");
    if ((s = cmdline_get("requests")))
        requests = strtoul(s, NULL, 10);
    if (!check_range("ioring.requests_arg", (long)requests, 1, MAX_REQUESTS))
        return 0;
    info("requests", "%lu", requests);
    if (!check_eq("ioring.evtchn_init", evtchn_init(UPCALL_CALLBACK_VECTOR), 0))
        return 0;
    if (!check_eq("ioring.xenstore", xs_open(), 0))
        return 0;
    self = xs_domid();
    info("domid", "%u", self);
    int v = xs_wait_peer(self, buf, sizeof(buf), PEER_BOUND_NS);
    if (!check("ioring.peer", v >= 0, "data/peer: '%s' (our domid %u)", buf[0] ? buf : "(none)",
               self))
        return 0;
    peer = (domid_t)v;
    info("peer", "%u", peer);
    if (front)
        role_front();
    else
        role_back();
    return 0;
}
