/*
 * xenstore: talk to XenStore over the guest ring (xenstore_domain_interface in the page
 * named by HVM_PARAM_STORE_PFN, notified through HVM_PARAM_STORE_EVTCHN), the way a PV
 * driver's xenbus does: read, write, list, watch our own /local/domain/<id> subtree, a
 * transaction, and be refused what the permissions forbid.
 *
 * Needs a host that serves the store (pyxen with a xenstore attached). Waiting for replies
 * uses SCHEDOP_poll on the store port, so no upcall handler is involved.
 */
#include "guest.h"
#include <xen/io/xs_wire.h>
#include <xen/event_channel.h>

#define STORE_VA (ALIAS_BASE + 0x200000ULL)
#define POLL_NS  WAIT_BOUND_NS   /* give up on a reply after this much system time */

static volatile struct xenstore_domain_interface *ring;
static evtchn_port_t port;
static uint32_t next_req = 1;
static char home[64];

/* A watch event that arrived while we waited for a reply. */
static char event_path[256], event_token[64];
static int events_seen;

static void ring_write(const void *data, uint32_t len)
{
    const char *p = data;
    while (len) {
        XENSTORE_RING_IDX cons = ring->req_cons, prod = ring->req_prod;
        uint32_t space = XENSTORE_RING_SIZE - (prod - cons);
        if (!space) { notify_port(port); poll_port(port, xen_now_ns() + POLL_NS); continue; }
        uint32_t n = len < space ? len : space;
        for (uint32_t i = 0; i < n; i++)
            ring->req[MASK_XENSTORE_IDX(prod + i)] = p[i];
        barrier();  /* data before index (x86 keeps stores in order) */
        ring->req_prod = prod + n;
        p += n;
        len -= n;
    }
    notify_port(port);
}

/* Read exactly len bytes of response; false on timeout. */
static bool ring_read(void *data, uint32_t len)
{
    char *p = data;
    uint64_t deadline = xen_now_ns() + POLL_NS;
    while (len) {
        XENSTORE_RING_IDX cons = ring->rsp_cons, prod = ring->rsp_prod;
        barrier();
        if (prod == cons) {
            if (!poll_port(port, deadline))
                return false;
            continue;
        }
        uint32_t n = prod - cons < len ? prod - cons : len;
        for (uint32_t i = 0; i < n; i++)
            p[i] = ring->rsp[MASK_XENSTORE_IDX(cons + i)];
        barrier();
        ring->rsp_cons = cons + n;
        notify_port(port);  /* room in the response ring for anything xenstored holds back */
        p += n;
        len -= n;
    }
    return true;
}

/* One message in (header + payload), stashing watch events; returns the reply type or -1. */
static int read_message(struct xsd_sockmsg *hdr, char *body, uint32_t max)
{
    for (;;) {
        if (!ring_read(hdr, sizeof(*hdr)) || hdr->len > XENSTORE_PAYLOAD_MAX)
            return -1;
        static char scratch[XENSTORE_PAYLOAD_MAX + 1];
        if (!ring_read(scratch, hdr->len))
            return -1;
        scratch[hdr->len] = 0;
        if (hdr->type == XS_WATCH_EVENT) {
            size_t plen = strnlen(scratch, hdr->len);
            memcpy(event_path, scratch, plen < sizeof(event_path) - 1 ? plen + 1 : sizeof(event_path));
            event_path[sizeof(event_path) - 1] = 0;
            const char *tok = scratch + plen + 1;
            size_t tlen = strnlen(tok, sizeof(event_token) - 1);
            memcpy(event_token, tok, tlen);
            event_token[tlen] = 0;
            events_seen++;
            continue;
        }
        uint32_t n = hdr->len < max ? hdr->len : max;
        memcpy(body, scratch, n);
        if (n < max) body[n] = 0;
        return (int)hdr->type;
    }
}

/* Send one request of `count` NUL-separated parts; the reply in `reply` (NUL-terminated).
 * Returns the reply type (XS_ERROR carries the errno name) or -1 on timeout. */
static int xs_request(uint32_t type, uint32_t tx, const char *payload, uint32_t len,
                      char *reply, uint32_t max)
{
    struct xsd_sockmsg hdr = { .type = type, .req_id = next_req++, .tx_id = tx, .len = len };
    ring_write(&hdr, sizeof(hdr));
    ring_write(payload, len);
    struct xsd_sockmsg rh;
    int t = read_message(&rh, reply, max);
    if (t >= 0 && rh.req_id != hdr.req_id)
        return -1;
    return t;
}

static int xs_read(const char *path, char *out, uint32_t max)
{
    return xs_request(XS_READ, 0, path, strlen(path) + 1, out, max);
}

static int xs_write(const char *path, const char *value, uint32_t tx)
{
    static char buf[512], reply[64];
    size_t pl = strlen(path) + 1, vl = strlen(value);
    memcpy(buf, path, pl);
    memcpy(buf + pl, value, vl);
    return xs_request(XS_WRITE, tx, buf, pl + vl, reply, sizeof(reply));
}

/* "XS_ERROR EACCES" style outcome: returns true if the reply was that error. */
static bool is_error(int type, const char *reply, const char *name)
{
    return type == XS_ERROR && strcmp(reply, name) == 0;
}

int guest_main(void)
{
    uint64_t pfn = 0, evtchn = 0;
    hvm_get_param(DOMID_SELF, HVM_PARAM_STORE_PFN, &pfn);
    hvm_get_param(DOMID_SELF, HVM_PARAM_STORE_EVTCHN, &evtchn);
    info("store_pfn", "%#lx", (unsigned long)pfn);
    info("store_evtchn", "%lu", (unsigned long)evtchn);
    if (!check("xenstore.advertised", pfn && evtchn, "store pfn %#lx evtchn %lu",
               (unsigned long)pfn, (unsigned long)evtchn))
        return 0;
    check_eq("xenstore.map_shared_info", map_shared_info(), 0);
    check_eq("xenstore.map_ring", map_4k(STORE_VA, pfn << 12, PTE_P | PTE_W), 0);
    ring = (volatile struct xenstore_domain_interface *)STORE_VA;
    port = (evtchn_port_t)evtchn;

    struct evtchn_status st = { .dom = DOMID_SELF, .port = port };
    check_eq("xenstore.port_status", HYPERVISOR_event_channel_op(EVTCHNOP_status, &st), 0);
    check_eq("xenstore.port_is_interdomain", st.status, EVTCHNSTAT_interdomain);
    check_eq("xenstore.port_peer_is_dom0", st.u.interdomain.dom, 0);

    static char reply[1024];
    unsigned domid = boot.domid;
    snprintf(home, sizeof(home), "/local/domain/%u", domid);

    /* Our own nodes, by absolute and by relative path. */
    char path[128];
    snprintf(path, sizeof(path), "%s/domid", home);
    int t = xs_read(path, reply, sizeof(reply));
    check_eq("xenstore.read_domid_type", t, XS_READ);
    check_eq("xenstore.read_domid", (long)strtoul(reply, NULL, 10), domid);
    t = xs_read("name", reply, sizeof(reply));
    check_eq("xenstore.read_relative_name", t, XS_READ);
    info("xs_name", "%s", reply);

    /* Write, read back, list. */
    check_eq("xenstore.write_data", xs_write("data/greeting", "hello from the ring", 0), XS_WRITE);
    t = xs_read("data/greeting", reply, sizeof(reply));
    check("xenstore.read_back", t == XS_READ && strcmp(reply, "hello from the ring") == 0,
          "type %d value '%s'", t, reply);
    t = xs_request(XS_DIRECTORY, 0, home, strlen(home) + 1, reply, sizeof(reply));
    bool has_name = false, has_data = false;
    for (const char *p = reply; t == XS_DIRECTORY && p < reply + sizeof(reply) && *p; p += strlen(p) + 1) {
        has_name |= strcmp(p, "name") == 0;
        has_data |= strcmp(p, "data") == 0;
    }
    check("xenstore.directory", has_name && has_data, "type %d name %d data %d", t, has_name, has_data);
    t = xs_request(XS_GET_PERMS, 0, "data", 5, reply, sizeof(reply));
    snprintf(path, sizeof(path), "n%u", domid);
    check("xenstore.data_owned_by_us", t == XS_GET_PERMS && strcmp(reply, path) == 0,
          "type %d perms '%s'", t, reply);

    /* A watch: the initial event, then one per change. */
    static const char watch[] = "data\0tok-1";
    events_seen = 0;
    t = xs_request(XS_WATCH, 0, watch, sizeof(watch), reply, sizeof(reply));
    check_eq("xenstore.watch", t, XS_WATCH);
    check_eq("xenstore.xs_read_to_drain_event", xs_read("name", reply, sizeof(reply)), XS_READ);
    check("xenstore.watch_initial_event", events_seen >= 1 && strcmp(event_token, "tok-1") == 0,
          "%d events, token '%s'", events_seen, event_token);
    events_seen = 0;
    xs_write("data/greeting", "changed", 0);
    xs_read("name", reply, sizeof(reply));
    /* A watch set on a relative path reports relative paths (as Xen's xenstored does). */
    check("xenstore.watch_fires_on_write", events_seen == 1 && strcmp(event_path, "data/greeting") == 0,
          "%d events, path '%s'", events_seen, event_path);
    info("xs_watch_event", "%s %s", event_path, event_token);

    /* A transaction. */
    t = xs_request(XS_TRANSACTION_START, 0, "", 1, reply, sizeof(reply));
    uint32_t tx = (uint32_t)strtoul(reply, NULL, 10);
    check("xenstore.transaction_start", t == XS_TRANSACTION_START && tx != 0, "type %d id '%s'", t, reply);
    check_eq("xenstore.transaction_write", xs_write("data/in-tx", "1", tx), XS_WRITE);
    t = xs_request(XS_TRANSACTION_END, tx, "T", 2, reply, sizeof(reply));
    check_eq("xenstore.transaction_commit", t, XS_TRANSACTION_END);
    t = xs_read("data/in-tx", reply, sizeof(reply));
    check("xenstore.transaction_visible", t == XS_READ && strcmp(reply, "1") == 0, "type %d '%s'", t, reply);

    /* What our permissions forbid. */
    t = xs_write("name", "renamed", 0);
    check("xenstore.write_readonly_refused", is_error(t, reply, "EACCES") || t == XS_ERROR,
          "type %d", t);
    t = xs_write("/tool/pyxen-test", "x", 0);
    check("xenstore.write_outside_refused", t == XS_ERROR, "type %d", t);
    t = xs_read("/local", reply, sizeof(reply));
    check("xenstore.read_unreadable_refused", is_error(t, reply, "EACCES"), "type %d '%s'", t, reply);
    t = xs_request(XS_INTRODUCE, 0, "5\0" "1\0" "1", 6, reply, sizeof(reply));
    check("xenstore.introduce_refused", is_error(t, reply, "EACCES"), "type %d '%s'", t, reply);
    t = xs_read("data/nope", reply, sizeof(reply));
    check("xenstore.read_missing_enoent", is_error(t, reply, "ENOENT"), "type %d '%s'", t, reply);

    /* Leave a node for the host to find. */
    check_eq("xenstore.write_for_host", xs_write("data/from-guest", "ring ok", 0), XS_WRITE);
    return 0;
}
