/*
 * XenStore over the guest ring -- the client half a PV kernel's xenbus has.
 *
 * The toolstack gives every domain a struct xenstore_domain_interface (<xen/io/xs_wire.h>)
 * in the page HVM_PARAM_STORE_PFN names, signalled through the interdomain event channel in
 * HVM_PARAM_STORE_EVTCHN whose other end is xenstored. A request is a struct xsd_sockmsg
 * header and its payload copied into `req` (req_prod published after the bytes, then a
 * notify); xenstored answers in `rsp` with the same req_id, and puts watch events
 * (XS_WATCH_EVENT, "path\0token\0") into the same stream whenever a watched node changes,
 * so a reader keeps any event it meets while waiting for a reply in a small queue.
 *
 * As runtime/hvc.c does with the console, the store port is masked and polled
 * (SCHEDOP_poll wakes on a masked port), so it never reaches a guest's upcall handler.
 * Every wait is bounded (WAIT_BOUND_NS without progress); a message cut off in the middle
 * leaves the stream out of step, so the connection is then given up, and said so.
 */
#include "runtime.h"
#include <xen/io/xs_wire.h>

/* Next to the console ring's page (runtime/hvc.c uses 0x7ffff000): outside the boot
 * identity map and away from the windows the test guests map. */
#define XS_VA 0x7fffe000ULL

#define EVENTS_MAX 8          /* watch events kept while nobody reads them */

static volatile struct xenstore_domain_interface *ring;
static evtchn_port_t port;
static bool broken;           /* the stream went out of step: nothing more through it */
static uint32_t next_req_id = 1;
static char last_error[16];   /* errno name of the last XS_ERROR reply */

struct event { char path[256]; char token[64]; };
static struct event events[EVENTS_MAX];
static unsigned ev_head, ev_count, ev_dropped;

/* One message's payload, plus a NUL for convenience. */
static char msg_body[XENSTORE_PAYLOAD_MAX + 1];

volatile struct xenstore_domain_interface *xs_ring(void) { return ring; }
evtchn_port_t xs_port(void) { return port; }
const char *xs_error(void) { return last_error; }
unsigned xs_events_dropped(void) { return ev_dropped; }

static void give_up(const char *why)
{
    if (!broken)
        printf("xs: %s (rsp_cons %u rsp_prod %u): XenStore given up\n", why,
               ring->rsp_cons, ring->rsp_prod);
    broken = true;
}

long xs_open(void)
{
    if (ring)
        return broken ? ENOENT_ : 0;
    long rc = map_service_ring(HVM_PARAM_STORE_PFN, HVM_PARAM_STORE_EVTCHN, XS_VA, &port);
    if (rc)
        return rc;
    ring = (volatile struct xenstore_domain_interface *)XS_VA;
    return 0;
}

bool xs_ready(void) { return ring && !broken; }

/* Copy len bytes into `req` as room comes; false if xenstored took nothing for the bound. */
static bool ring_write(const void *data, uint32_t len)
{
    const char *p = data;
    uint64_t deadline = hv_now_ns() + WAIT_BOUND_NS;
    while (len) {
        XENSTORE_RING_IDX cons = ring->req_cons, prod = ring->req_prod;
        rmb();
        if (prod - cons > XENSTORE_RING_SIZE) {
            give_up("impossible request ring indices");
            return false;
        }
        uint32_t space = XENSTORE_RING_SIZE - (prod - cons);
        if (!space) {
            if (hv_now_ns() >= deadline) {
                give_up("xenstored took no request bytes");
                return false;
            }
            notify_port(port);
            poll_port(port, deadline);
            continue;
        }
        uint32_t n = len < space ? len : space;
        for (uint32_t i = 0; i < n; i++)
            ring->req[MASK_XENSTORE_IDX(prod + i)] = p[i];
        barrier();           /* the bytes before the index (x86 keeps stores in order) */
        ring->req_prod = prod + n;
        p += n;
        len -= n;
        deadline = hv_now_ns() + WAIT_BOUND_NS;
    }
    notify_port(port);
    return true;
}

/* Bytes xenstored has put in `rsp` that we have not taken yet. */
static uint32_t rsp_avail(void)
{
    uint32_t n = ring->rsp_prod - ring->rsp_cons;
    rmb();
    if (n > XENSTORE_RING_SIZE) {
        give_up("impossible response ring indices");
        return 0;
    }
    return n;
}

/* Read exactly len bytes of `rsp`, waiting until system time `deadline`. */
static bool ring_read(void *data, uint32_t len, uint64_t deadline)
{
    char *p = data;
    while (len && !broken) {
        uint32_t avail = rsp_avail();
        if (!avail) {
            if (broken || hv_now_ns() >= deadline)
                return false;
            poll_port(port, deadline);
            continue;
        }
        XENSTORE_RING_IDX cons = ring->rsp_cons;
        uint32_t n = avail < len ? avail : len;
        for (uint32_t i = 0; i < n; i++)
            p[i] = ring->rsp[MASK_XENSTORE_IDX(cons + i)];
        barrier();           /* the bytes are read before the slots are handed back */
        ring->rsp_cons = cons + n;
        notify_port(port);   /* room for whatever xenstored holds back */
        p += n;
        len -= n;
    }
    return len == 0;
}

static void queue_event(uint32_t len)
{
    if (ev_count == EVENTS_MAX) {
        ev_dropped++;
        return;
    }
    struct event *e = &events[(ev_head + ev_count++) % EVENTS_MAX];
    size_t plen = strnlen(msg_body, len);
    const char *tok = plen < len ? msg_body + plen + 1 : "";
    size_t tlen = strnlen(tok, len - (plen < len ? plen + 1 : len));
    size_t pc = plen < sizeof(e->path) - 1 ? plen : sizeof(e->path) - 1;
    size_t tc = tlen < sizeof(e->token) - 1 ? tlen : sizeof(e->token) - 1;
    memcpy(e->path, msg_body, pc);
    e->path[pc] = 0;
    memcpy(e->token, tok, tc);
    e->token[tc] = 0;
}

/* The next message into hdr + msg_body. Waits for its start until `deadline`; once it has
 * begun, the rest is expected soon (a fresh bound). false: none came, or the stream broke. */
static bool read_message(struct xsd_sockmsg *hdr, uint64_t deadline)
{
    if (!xs_ready())
        return false;
    while (!broken && !rsp_avail()) {
        if (hv_now_ns() >= deadline)
            return false;
        poll_port(port, deadline);
    }
    if (broken)
        return false;
    if (!ring_read(hdr, sizeof(*hdr), hv_now_ns() + WAIT_BOUND_NS)) {
        give_up("a reply header was cut off");
        return false;
    }
    if (hdr->len > XENSTORE_PAYLOAD_MAX) {
        give_up("a reply longer than XENSTORE_PAYLOAD_MAX");
        return false;
    }
    if (!ring_read(msg_body, hdr->len, hv_now_ns() + WAIT_BOUND_NS)) {
        give_up("a reply was cut off");
        return false;
    }
    msg_body[hdr->len] = 0;
    if (hdr->type == XS_WATCH_EVENT)
        queue_event(hdr->len);
    return true;
}

int xs_request(uint32_t type, uint32_t tx, const void *payload, uint32_t len,
               char *reply, size_t size)
{
    if (size)
        reply[0] = 0;
    if (!xs_ready() || len > XENSTORE_PAYLOAD_MAX)
        return -1;
    struct xsd_sockmsg hdr = { .type = type, .req_id = next_req_id++, .tx_id = tx, .len = len };
    if (!ring_write(&hdr, sizeof(hdr)) || !ring_write(payload, len))
        return -1;
    uint64_t deadline = hv_now_ns() + WAIT_BOUND_NS;
    struct xsd_sockmsg rh;
    for (;;) {
        if (!read_message(&rh, deadline))
            return -1;
        if (rh.type == XS_WATCH_EVENT || rh.req_id != hdr.req_id)
            continue;        /* an event (queued), or the late reply to a request given up on */
        if (size) {
            size_t n = rh.len < size - 1 ? rh.len : size - 1;
            memcpy(reply, msg_body, n);
            reply[n] = 0;
        }
        if (rh.type == XS_ERROR) {
            size_t n = strnlen(msg_body, sizeof(last_error) - 1);
            memcpy(last_error, msg_body, n);
            last_error[n] = 0;
        }
        return (int)rh.type;
    }
}

/* path + NUL (+ second + NUL when `second` is given; a value carries no NUL). */
static uint32_t build(char *buf, const char *path, const char *second, bool second_nul)
{
    size_t pl = strlen(path) + 1, sl = second ? strlen(second) + (second_nul ? 1 : 0) : 0;
    if (pl + sl > XENSTORE_PAYLOAD_MAX)
        return 0;
    memcpy(buf, path, pl);
    if (second)
        memcpy(buf + pl, second, sl);
    return (uint32_t)(pl + sl);
}

static char req_buf[XENSTORE_PAYLOAD_MAX];
static char small_reply[64];

int xs_read(uint32_t tx, const char *path, char *out, size_t size)
{
    uint32_t n = build(req_buf, path, NULL, false);
    return n ? xs_request(XS_READ, tx, req_buf, n, out, size) : -1;
}

int xs_write(uint32_t tx, const char *path, const char *value)
{
    uint32_t n = build(req_buf, path, value, false);
    return n ? xs_request(XS_WRITE, tx, req_buf, n, small_reply, sizeof(small_reply)) : -1;
}

int xs_watch(const char *path, const char *token)
{
    uint32_t n = build(req_buf, path, token, true);
    return n ? xs_request(XS_WATCH, 0, req_buf, n, small_reply, sizeof(small_reply)) : -1;
}

int xs_unwatch(const char *path, const char *token)
{
    uint32_t n = build(req_buf, path, token, true);
    return n ? xs_request(XS_UNWATCH, 0, req_buf, n, small_reply, sizeof(small_reply)) : -1;
}

int xs_transaction_start(uint32_t *tx)
{
    int t = xs_request(XS_TRANSACTION_START, 0, "", 1, small_reply, sizeof(small_reply));
    *tx = t == XS_TRANSACTION_START ? (uint32_t)strtoul(small_reply, NULL, 10) : 0;
    return t;
}

int xs_transaction_end(uint32_t tx, bool commit)
{
    return xs_request(XS_TRANSACTION_END, tx, commit ? "T" : "F", 2, small_reply,
                      sizeof(small_reply));
}

bool xs_pending(void)
{
    return ev_count || (xs_ready() && rsp_avail());
}

bool xs_read_watch(char *path, size_t psize, char *token, size_t tsize, uint64_t deadline)
{
    struct xsd_sockmsg hdr;
    while (!ev_count) {
        if (!read_message(&hdr, deadline))
            return false;
        /* anything but an event here is the late reply to a request given up on: dropped */
    }
    struct event *e = &events[ev_head];
    ev_head = (ev_head + 1) % EVENTS_MAX;
    ev_count--;
    if (psize) {
        size_t n = strnlen(e->path, psize - 1);
        memcpy(path, e->path, n);
        path[n] = 0;
    }
    if (tsize) {
        size_t n = strnlen(e->token, tsize - 1);
        memcpy(token, e->token, n);
        token[n] = 0;
    }
    return true;
}

/* ---- helpers the paired guests (interdomain, vchan) share ---- */

#define WAIT_POLL_NS 500000000ULL     /* xs_wait reads the node again at least this often */

unsigned xs_domid(void)
{
    char v[16];
    if (!boot.domid_present && xs_read(0, "domid", v, sizeof(v)) == XS_READ)
        return (unsigned)strtoul(v, NULL, 10);
    return boot.domid;
}

bool xs_wait(const char *path, const char *want, const char *stop, char *out, size_t size,
             uint64_t bound)
{
    static char last[128];            /* the last other value read */
    uint64_t deadline = hv_now_ns() + bound;
    bool watched = xs_watch(path, "xs_wait") == XS_WATCH;
    bool ok = false;
    last[0] = 0;
    for (;;) {
        if (xs_read(0, path, out, size) == XS_READ && out[0]) {
            if (!want || !strcmp(out, want)) {
                ok = true;
                break;
            }
            snprintf(last, sizeof(last), "%s", out);
            if (stop && !strcmp(out, stop))
                break;
        }
        uint64_t now = hv_now_ns();
        if (now >= deadline || !xs_ready())
            break;
        uint64_t slice = now + WAIT_POLL_NS < deadline ? now + WAIT_POLL_NS : deadline;
        if (!watched || !xs_read_watch(NULL, 0, NULL, 0, slice))
            poll_port(port, slice);   /* no watch, or no event: sleep out the slice */
    }
    if (!ok && size)
        snprintf(out, size, "%s", last);
    if (watched)
        xs_unwatch(path, "xs_wait");
    while (xs_read_watch(NULL, 0, NULL, 0, 0))
        ;                             /* drop what the watch left queued */
    return ok;
}

bool xs_write_shared(uint32_t tx, const char *path, const char *value, unsigned owner,
                     unsigned reader, char *why, size_t wsize)
{
    int t = xs_write(tx, path, value);
    if (t != XS_WRITE) {
        if (wsize)
            snprintf(why, wsize, "write %s: type %d %s", path, t, xs_error());
        return false;
    }
    /* XS_SET_PERMS "path\0n<owner>\0r<reader>\0": the first entry is the owner (and what
     * every other domain may do: nothing), then one reader (tools/xenstore). */
    size_t n = strlen(path) + 1;
    t = -1;
    small_reply[0] = 0;
    if (n + 24 <= sizeof(req_buf)) {
        memcpy(req_buf, path, n);
        n += (size_t)snprintf(req_buf + n, sizeof(req_buf) - n, "n%u", owner) + 1;
        n += (size_t)snprintf(req_buf + n, sizeof(req_buf) - n, "r%u", reader) + 1;
        t = xs_request(XS_SET_PERMS, tx, req_buf, (uint32_t)n, small_reply,
                       sizeof(small_reply));
    }
    if (t != XS_SET_PERMS) {
        if (wsize)
            snprintf(why, wsize, "set_perms %s n%u r%u: type %d %s", path, owner, reader, t,
                     t == XS_ERROR ? xs_error() : small_reply);
        return false;
    }
    return true;
}

int xs_wait_peer(unsigned self, char *out, size_t size, uint64_t bound)
{
    if (!xs_wait("data/peer", NULL, NULL, out, size, bound))
        return -1;
    const char *s = out;
    while (*s == ' ')
        s++;
    if (*s < '0' || *s > '9')
        return -1;
    unsigned long v = strtoul(s, NULL, 10);
    return v < DOMID_FIRST_RESERVED && v != self ? (int)v : -1;
}
