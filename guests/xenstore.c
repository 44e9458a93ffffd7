/*
 * xenstore: talk to XenStore over the guest ring (xenstore_domain_interface in the page
 * named by HVM_PARAM_STORE_PFN, notified through HVM_PARAM_STORE_EVTCHN), the way a PV
 * driver's xenbus does: read, write, list, watch our own /local/domain/<id> subtree, a
 * transaction, and be refused what the permissions forbid.
 *
 * Needs a host that serves the store (pyxen with a xenstore attached). The ring client is
 * the runtime's (runtime/xs.c): it polls the store port (SCHEDOP_poll), so no upcall
 * handler is involved.
 */
#include "guest.h"

static char home[64];

/* "XS_ERROR EACCES" style outcome: returns true if the reply was that error. */
static bool is_error(int type, const char *name)
{
    return type == XS_ERROR && strcmp(xs_error(), name) == 0;
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
    if (!check_eq("xenstore.open_ring", xs_open(), 0))
        return 0;
    check_eq("xenstore.port_is_advertised", xs_port(), (long)evtchn);

    struct evtchn_status st = { .dom = DOMID_SELF, .port = xs_port() };
    check_eq("xenstore.port_status", HYPERVISOR_event_channel_op(EVTCHNOP_status, &st), 0);
    check_eq("xenstore.port_is_interdomain", st.status, EVTCHNSTAT_interdomain);
    check_eq("xenstore.port_peer_is_dom0", st.u.interdomain.dom, 0);

    static char reply[1024];
    unsigned domid = boot.domid;
    snprintf(home, sizeof(home), "/local/domain/%u", domid);

    /* Our own nodes, by absolute and by relative path. */
    char path[128];
    snprintf(path, sizeof(path), "%s/domid", home);
    int t = xs_read(0, path, reply, sizeof(reply));
    check_eq("xenstore.read_domid_type", t, XS_READ);
    check_eq("xenstore.read_domid", (long)strtoul(reply, NULL, 10), domid);
    t = xs_read(0, "name", reply, sizeof(reply));
    check_eq("xenstore.read_relative_name", t, XS_READ);
    info("xs_name", "%s", reply);

    /* Write, read back, list. */
    check_eq("xenstore.write_data", xs_write(0, "data/greeting", "hello from the ring"), XS_WRITE);
    t = xs_read(0, "data/greeting", reply, sizeof(reply));
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

    /* A watch: the initial event (xenstored fires one as it is set), then one per change. */
    char ev_path[128], ev_token[32];
    check_eq("xenstore.watch", xs_watch("data", "tok-1"), XS_WATCH);
    bool got = xs_read_watch(ev_path, sizeof(ev_path), ev_token, sizeof(ev_token),
                             xen_now_ns() + WAIT_BOUND_NS);
    check("xenstore.watch_initial_event", got && strcmp(ev_token, "tok-1") == 0 &&
          strcmp(ev_path, "data") == 0, "event %d, path '%s' token '%s'", got, ev_path, ev_token);
    xs_write(0, "data/greeting", "changed");
    got = xs_read_watch(ev_path, sizeof(ev_path), ev_token, sizeof(ev_token),
                        xen_now_ns() + WAIT_BOUND_NS);
    xs_read(0, "name", reply, sizeof(reply));   /* whatever else the write fired is in by now */
    unsigned more = 0;
    char spare[128];
    while (xs_read_watch(spare, sizeof(spare), NULL, 0, 0))
        more++;
    /* A watch set on a relative path reports relative paths (as Xen's xenstored does). */
    check("xenstore.watch_fires_on_write", got && more == 0 &&
          strcmp(ev_path, "data/greeting") == 0 && strcmp(ev_token, "tok-1") == 0,
          "event %d (+%u more), path '%s' token '%s'", got, more, ev_path, ev_token);
    info("xs_watch_event", "%s %s", ev_path, ev_token);
    check_eq("xenstore.unwatch", xs_unwatch("data", "tok-1"), XS_UNWATCH);
    xs_write(0, "data/greeting", "unwatched");
    xs_read(0, "name", reply, sizeof(reply));
    check("xenstore.unwatch_silences", !xs_read_watch(spare, sizeof(spare), NULL, 0, 0),
          "an event for '%s' after XS_UNWATCH", spare);

    /* A transaction. */
    uint32_t tx = 0;
    t = xs_transaction_start(&tx);
    check("xenstore.transaction_start", t == XS_TRANSACTION_START && tx != 0, "type %d id %u", t, tx);
    check_eq("xenstore.transaction_write", xs_write(tx, "data/in-tx", "1"), XS_WRITE);
    t = xs_transaction_end(tx, true);
    check_eq("xenstore.transaction_commit", t, XS_TRANSACTION_END);
    t = xs_read(0, "data/in-tx", reply, sizeof(reply));
    check("xenstore.transaction_visible", t == XS_READ && strcmp(reply, "1") == 0, "type %d '%s'", t, reply);

    /* What our permissions forbid. */
    t = xs_write(0, "name", "renamed");
    check("xenstore.write_readonly_refused", is_error(t, "EACCES"), "type %d '%s'", t, xs_error());
    t = xs_write(0, "/tool/pyxen-test", "x");
    check("xenstore.write_outside_refused", t == XS_ERROR, "type %d", t);
    t = xs_read(0, "/local", reply, sizeof(reply));
    check("xenstore.read_unreadable_refused", is_error(t, "EACCES"), "type %d '%s'", t, reply);
    t = xs_request(XS_INTRODUCE, 0, "5\0" "1\0" "1", 6, reply, sizeof(reply));
    check("xenstore.introduce_refused", is_error(t, "EACCES"), "type %d '%s'", t, reply);
    t = xs_read(0, "data/nope", reply, sizeof(reply));
    check("xenstore.read_missing_enoent", is_error(t, "ENOENT"), "type %d '%s'", t, reply);

    /* Leave a node for the host to find. */
    check_eq("xenstore.write_for_host", xs_write(0, "data/from-guest", "ring ok"), XS_WRITE);
    return 0;
}
