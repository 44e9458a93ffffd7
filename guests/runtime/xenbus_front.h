/*
 * The xenbus half of a PV front end, shared by the kit's blkfront and netfront: what Linux's
 * xenbus (drivers/xen/xenbus/xenbus_client.c, xenbus_probe_frontend.c) does for its front
 * ends, over the kit's store client (runtime/xs.c). Linked only into the front-end guests
 * (XBF_OBJS in the Makefile).
 *
 * Store layout (libxl's): our node device/<class>/<V> (relative to our home) holds backend
 * (the back's directory, absolute), backend-id and state; the back's directory holds its
 * state and features. States are xen/io/xenbus.h's.
 *
 * The helpers return results and print no TEST lines: a problem goes to the guest's own
 * `note` (printf-like; the guest keeps the first and counts them), and the guest checks.
 */
#ifndef PYXEN_GUEST_XENBUS_FRONT_H
#define PYXEN_GUEST_XENBUS_FRONT_H
#include "runtime.h"
#include <xen/io/xenbus.h>

#define XBF_BACK_BOUND_NS  (3 * WAIT_BOUND_NS)  /* a state change of the back end */
#define XBF_WATCH_SLICE_NS 500000000ULL         /* re-read a watched node at least this often */
#define XBF_TX_ATTEMPTS    8                    /* transactions that lost a race (EAGAIN) */

typedef void (*xbf_note_fn)(const char *fmt, ...) PRINTF_LIKE(1, 2);

struct xenbus_front {
    const char *class;          /* "vbd", "vif": the device's class under device/ */
    const char *token;          /* the token of our watches */
    xbf_note_fn note;           /* where problems go */
    unsigned long id;           /* V */
    char dir[48];               /* device/<class>/<V>, relative to our home */
    char back[128];             /* the back's directory (absolute), from our node backend */
    domid_t back_id;            /* from our node backend-id */
};

/* Find the device: V is `id` (decimal; NULL: the first entry of device/<class>), then our
 * nodes backend (an absolute path) and backend-id (a domid). */
bool xbf_find(struct xenbus_front *f, const char *id);

/* Nodes <dir>/<name>: the value (true when readable); a decimal number (true when there and
 * nothing but digits); the number, or `dflt` when absent or not a number. */
bool xbf_read(const char *dir, const char *name, char *out, size_t size);
bool xbf_uint(const char *dir, const char *name, unsigned long *v);
unsigned long xbf_uint_or(const char *dir, const char *name, unsigned long dflt);

/* Our state node; the back's state (-1: missing or not a state). */
bool xbf_set_state(struct xenbus_front *f, enum xenbus_state st);
int xbf_back_state(const struct xenbus_front *f);
/* Wait (under a watch, re-reading at least every XBF_WATCH_SLICE_NS) until the back's state
 * is one of `mask` (a bit per state): that state, or -1 after `bound` ns with a note. */
int xbf_wait_back(struct xenbus_front *f, unsigned mask, uint64_t bound);

/* One transaction (retried while it loses a race with EAGAIN, at most XBF_TX_ATTEMPTS
 * times): `write` puts the keys with xbf_put and says whether all went in; false (with a
 * note) when a write or the commit failed. */
typedef bool (*xbf_keys_fn)(struct xenbus_front *f, uint32_t tx, void *arg);
bool xbf_write_keys(struct xenbus_front *f, xbf_keys_fn write, void *arg);
/* <dir>/<name> = printf(fmt, ...) in transaction `tx`; a note when it failed. */
bool xbf_put(struct xenbus_front *f, uint32_t tx, const char *name, const char *fmt, ...)
    PRINTF_LIKE(4, 5);

/* The front's half of a disconnection (Linux's xenbus_dev_remove order): Closing, wait for
 * the back's Closing or Closed, Closed, wait for the back's Closed. Then the back has
 * unmapped our pages and closed its end of our channels. */
bool xbf_close(struct xenbus_front *f);

/* Grant `page` to the back end (read-only if asked). End foreign access to `ref`, which the
 * back must have released: false, with a note naming `what`, while it has not. */
void xbf_grant(const struct xenbus_front *f, grant_ref_t ref, const void *page, bool readonly);
bool xbf_take_back(const struct xenbus_front *f, grant_ref_t ref, const char *what);
/* After the back closed its end: our `port` is unbound for the back again (a note if not). */
bool xbf_port_released(const struct xenbus_front *f, evtchn_port_t port);

/* SCHEDOP_poll on `n` (masked) ports until one is pending or system time `deadline`, then
 * clear their pending bits (the caller then looks at its rings: what arrives after the
 * clear sets the bit again). false once the deadline has passed. */
bool xbf_poll(const evtchn_port_t *ports, unsigned n, uint64_t deadline);

#endif
