/* The xenbus half of a PV front end (see xenbus_front.h). */
#include "xenbus_front.h"
#include "evtchn.h"
#include "gnttab.h"

bool xbf_read(const char *dir, const char *name, char *out, size_t size)
{
    char path[192];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return xs_read(0, path, out, size) == XS_READ;
}

bool xbf_uint(const char *dir, const char *name, unsigned long *v)
{
    char value[32];
    if (!xbf_read(dir, name, value, sizeof(value)) || !value[0])
        return false;
    const char *end;
    *v = strtoul(value, &end, 10);
    return *end == 0;
}

unsigned long xbf_uint_or(const char *dir, const char *name, unsigned long dflt)
{
    unsigned long v;
    return xbf_uint(dir, name, &v) ? v : dflt;
}

bool xbf_find(struct xenbus_front *f, const char *id)
{
    char top[32], first[64];
    snprintf(top, sizeof(top), "device/%s", f->class);
    if (!id) {
        int t = xs_request(XS_DIRECTORY, 0, top, (uint32_t)strlen(top) + 1, first,
                           sizeof(first));
        if (t != XS_DIRECTORY || !first[0]) {
            f->note("directory %s: type %d '%s'", top, t, t == XS_ERROR ? xs_error() : first);
            return false;
        }
        id = first;      /* the first entry (entries are NUL-separated) */
    }
    const char *end;
    f->id = strtoul(id, &end, 10);
    if (!id[0] || *end) {
        f->note("%s/%s is not a device number", top, id);
        return false;
    }
    snprintf(f->dir, sizeof(f->dir), "%s/%lu", top, f->id);
    unsigned long back_id;
    f->back[0] = 0;
    if (!xbf_read(f->dir, "backend", f->back, sizeof(f->back)) || f->back[0] != '/' ||
        !xbf_uint(f->dir, "backend-id", &back_id) || back_id >= DOMID_FIRST_RESERVED) {
        f->note("%s: backend '%s', backend-id missing or bad", f->dir, f->back);
        return false;
    }
    f->back_id = (domid_t)back_id;
    return true;
}

bool xbf_set_state(struct xenbus_front *f, enum xenbus_state st)
{
    char path[64], value[4];
    snprintf(path, sizeof(path), "%s/state", f->dir);
    snprintf(value, sizeof(value), "%d", st);
    int t = xs_write(0, path, value);
    if (t != XS_WRITE)
        f->note("write %s = %s: %d %s", path, value, t, xs_error());
    return t == XS_WRITE;
}

int xbf_back_state(const struct xenbus_front *f)
{
    unsigned long v;
    return xbf_uint(f->back, "state", &v) && v < 32 ? (int)v : -1;
}

int xbf_wait_back(struct xenbus_front *f, unsigned mask, uint64_t bound)
{
    char path[160];
    snprintf(path, sizeof(path), "%s/state", f->back);
    uint64_t deadline = hv_now_ns() + bound;
    bool watched = xs_watch(path, f->token) == XS_WATCH;
    int st;
    for (;;) {
        st = xbf_back_state(f);
        if (st >= 0 && (mask & (1u << st)))
            break;
        uint64_t now = hv_now_ns();
        if (now >= deadline || !xs_ready()) {
            f->note("%s is %d after %lu s, waited for one of %#x", path, st,
                    (unsigned long)(bound / 1000000000ULL), mask);
            st = -1;
            break;
        }
        uint64_t slice = now + XBF_WATCH_SLICE_NS < deadline ? now + XBF_WATCH_SLICE_NS
                                                             : deadline;
        if (!watched || !xs_read_watch(NULL, 0, NULL, 0, slice))
            poll_port(xs_port(), slice);
    }
    if (watched)
        xs_unwatch(path, f->token);
    /* Drop the events still queued (the guest's other watches too: it re-reads what it
     * watches after a wait for the back). */
    while (xs_read_watch(NULL, 0, NULL, 0, 0))
        ;
    return st;
}

bool xbf_put(struct xenbus_front *f, uint32_t tx, const char *name, const char *fmt, ...)
{
    char path[128], value[64];
    snprintf(path, sizeof(path), "%s/%s", f->dir, name);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(value, sizeof(value), fmt, ap);
    va_end(ap);
    int t = xs_write(tx, path, value);
    if (t != XS_WRITE)
        f->note("write %s = %s: %d %s", path, value, t, xs_error());
    return t == XS_WRITE;
}

bool xbf_write_keys(struct xenbus_front *f, xbf_keys_fn write, void *arg)
{
    for (unsigned attempt = 0;; attempt++) {
        uint32_t tx = 0;
        int t = xs_transaction_start(&tx);
        if (t != XS_TRANSACTION_START) {
            f->note("transaction_start: %d %s", t, xs_error());
            return false;
        }
        bool ok = write(f, tx, arg);
        t = xs_transaction_end(tx, ok);
        if (!ok)
            return false;
        if (t == XS_TRANSACTION_END)
            return true;
        if (t != XS_ERROR || strcmp(xs_error(), "EAGAIN") || attempt + 1 >= XBF_TX_ATTEMPTS) {
            f->note("transaction_end: %d %s (attempt %u)", t, xs_error(), attempt + 1);
            return false;
        }
    }
}

bool xbf_close(struct xenbus_front *f)
{
    if (!xbf_set_state(f, XenbusStateClosing))
        return false;
    int st = xbf_wait_back(f, 1u << XenbusStateClosing | 1u << XenbusStateClosed,
                           XBF_BACK_BOUND_NS);
    if (st < 0 || !xbf_set_state(f, XenbusStateClosed))
        return false;
    return xbf_wait_back(f, 1u << XenbusStateClosed, XBF_BACK_BOUND_NS) >= 0;
}

void xbf_grant(const struct xenbus_front *f, grant_ref_t ref, const void *page, bool readonly)
{
    gnttab_grant(ref, f->back_id, pfn_of(page),
                 GTF_permit_access | (readonly ? GTF_readonly : 0));
}

bool xbf_take_back(const struct xenbus_front *f, grant_ref_t ref, const char *what)
{
    if (gnttab_end_access(ref))
        return true;
    f->note("%s (gref %u) still in use by the back end: flags %#x", what, ref,
            gnttab_v1[ref].flags);
    return false;
}

bool xbf_port_released(const struct xenbus_front *f, evtchn_port_t port)
{
    struct evtchn_status es;
    long rc = evtchn_status(DOMID_SELF, port, &es);
    if (rc == 0 && es.status == EVTCHNSTAT_unbound && es.u.unbound.dom == f->back_id)
        return true;
    f->note("our port %u after the back's Closed: rc %ld status %u (unbound for %u "
            "expected: the back closes its end)", port, rc, es.status, f->back_id);
    return false;
}

bool xbf_poll(const evtchn_port_t *ports, unsigned n, uint64_t deadline)
{
    evtchn_port_t copy[16];
    if (n > ARRAY_SIZE(copy))
        n = ARRAY_SIZE(copy);
    for (unsigned i = 0; i < n; i++)
        copy[i] = ports[i];
    struct sched_poll p = { .nr_ports = n, .timeout = deadline };
    set_xen_guest_handle(p.ports, copy);
    HYPERVISOR_sched_op(SCHEDOP_poll, &p);
    for (unsigned i = 0; i < n; i++) {
        volatile unsigned long *pending = &shared_info->evtchn_pending[copy[i] / 64];
        __atomic_fetch_and(pending, ~(1UL << (copy[i] % 64)), __ATOMIC_SEQ_CST);
    }
    return xen_now_ns() < deadline;
}
