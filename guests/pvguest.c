/*
 * pvguest: a long-running guest that behaves as Linux does under xl, for host mode.
 *
 * It boots, says who it is (domid, and `name` from its XenStore home), then does what
 * Linux's drivers/xen/manage.c does: watches control/shutdown and announces
 * control/feature-poweroff and control/feature-reboot (after the watch is in place, as
 * Linux's setup_shutdown_watcher does, so a toolstack that sees the features knows its
 * request will be seen). Then it sleeps until there is something to do:
 *
 *   control/shutdown  "poweroff" or "halt": clear the node ("" in a transaction, retried on
 *                     EAGAIN, as Linux acknowledges a request it will carry out), say so, and
 *                     SCHEDOP_shutdown(poweroff); "reboot": the same with reboot. Anything
 *                     else -- "suspend" too, which a guest without suspend support does not
 *                     know -- is left in the node and ignored with a line saying so (Linux:
 *                     "Ignoring shutdown request: %s"); empty reads are the watch's own
 *                     first event and our clearing, and are ignored silently.
 *   console input     (with console=hvc0) each line is answered: "uptime" with the seconds
 *                     since boot by the pvclock, "crash" with SCHEDOP_shutdown(crash) (for
 *                     on_crash), anything else with "pvguest: you said <line>". Typed keys
 *                     are echoed, as a terminal's line discipline would.
 *
 * cmdline: idle_s=N  power off by itself after N seconds without console input (default:
 *                    never): a guest that ends by itself under `pyxen run --xenstore`.
 *
 * Idle costs nothing: the guest blocks in the hypervisor until one of its ports (the store's,
 * the console's) is signalled or idle_s falls due. Both ports are masked and polled by the
 * runtime's drivers (runtime/xs.c, runtime/hvc.c), so the block is SCHEDOP_poll on the two of
 * them -- SCHEDOP_block wakes only for an upcall, which masked ports never raise. Bounded
 * waits happen only where a reply is expected (a XenStore request, a console write).
 */
#include "runtime.h"

#define LINE_MAX_ 256

struct request {
    const char *command;      /* the value in control/shutdown */
    unsigned reason;          /* SCHEDOP_shutdown reason */
    const char *how;
};

/* manage.c's table for a kernel without suspend support: halt is a poweroff. */
static const struct request requests[] = {
    { "poweroff", SHUTDOWN_poweroff, "poweroff" },
    { "halt", SHUTDOWN_poweroff, "poweroff" },
    { "reboot", SHUTDOWN_reboot, "reboot" },
};

static uint64_t boot_ns;

/* ---- control/shutdown ---- */

/* Read the request and acknowledge it in one transaction (retried when another writer got
 * in between); returns the request to carry out, or NULL. */
static const struct request *take_request(void)
{
    static char value[64];
    for (;;) {
        uint32_t tx;
        if (xs_transaction_start(&tx) != XS_TRANSACTION_START)
            return NULL;
        if (xs_read(tx, "control/shutdown", value, sizeof(value)) != XS_READ || !value[0]) {
            xs_transaction_end(tx, false);
            return NULL;      /* missing or empty: nothing asked */
        }
        const struct request *r = NULL;
        for (size_t i = 0; i < ARRAY_SIZE(requests); i++)
            if (strcmp(value, requests[i].command) == 0)
                r = &requests[i];
        if (r)
            xs_write(tx, "control/shutdown", "");
        int t = xs_transaction_end(tx, true);
        if (t == XS_ERROR && strcmp(xs_error(), "EAGAIN") == 0)
            continue;
        if (!r)
            printf("pvguest: ignoring shutdown request: %s\n", value);
        return r;
    }
}

static void on_store_events(void)
{
    char path[128], token[32];
    while (xs_read_watch(path, sizeof(path), token, sizeof(token), 0)) {
        if (strcmp(token, "shutdown") != 0)
            continue;
        const struct request *r = take_request();
        if (r) {
            printf("pvguest: shutting down (%s)\n", r->how);
            shutdown(r->reason);
        }
    }
}

/* ---- console lines ---- */

static char line[LINE_MAX_];
static size_t line_len;
static bool line_cr;          /* the last key was '\r': a '\n' right after ends nothing */

static void run_line(void)
{
    if (!line[0])
        return;
    if (strcmp(line, "uptime") == 0) {
        uint64_t up = xen_now_ns() - boot_ns;
        printf("pvguest: up %lu.%03lu s\n", (unsigned long)(up / 1000000000ULL),
               (unsigned long)(up / 1000000ULL % 1000));
    } else if (strcmp(line, "crash") == 0) {
        printf("pvguest: crashing on request (SCHEDOP_shutdown crash)\n");
        shutdown(SHUTDOWN_crash);
    } else {
        printf("pvguest: you said %s\n", line);
    }
}

/* One typed key: echo it, edit the line, run the line at its end. */
static void key(int c)
{
    bool after_cr = line_cr;
    line_cr = c == '\r';
    if (c == '\n' && after_cr)
        return;               /* the '\n' of a "\r\n" */
    if (c == '\r' || c == '\n') {
        console_write("\n", 1);
        line[line_len] = 0;
        line_len = 0;
        run_line();
        return;
    }
    if (c == 0x7f || c == '\b') {
        if (line_len) {
            line_len--;
            console_write("\b \b", 3);
        }
        return;
    }
    if (line_len + 1 < sizeof(line)) {   /* a longer line is cut, as a tty's buffer would */
        line[line_len++] = (char)c;
        console_write(&line[line_len - 1], 1);
    }
}

/* What has been typed so far, without waiting; false if nothing was. */
static bool on_console_input(void)
{
    bool any = false;
    int c;
    while ((c = console_getc(0)) >= 0) {
        key(c);
        any = true;
    }
    return any;
}

/* ---- the loop ---- */

static void clear_pending(evtchn_port_t port)
{
    __atomic_fetch_and(&shared_info->evtchn_pending[port / 64], ~(1UL << (port % 64)),
                       __ATOMIC_SEQ_CST);
}

/* Sleep in the hypervisor until one of `ports` is signalled or system time `deadline`
 * (0: no deadline). */
static void block_on(const evtchn_port_t *ports, unsigned n, uint64_t deadline)
{
    struct sched_poll p = { .nr_ports = n, .timeout = deadline };
    set_xen_guest_handle(p.ports, (evtchn_port_t *)ports);
    HYPERVISOR_sched_op(SCHEDOP_poll, &p);
}

static bool parse_seconds(const char *s, uint64_t *out)
{
    const char *end;
    if (!s || !*s)
        return false;
    unsigned long v = strtoul(s, &end, 10);
    if (*end || v > 1000000000UL)
        return false;
    *out = v;
    return true;
}

int guest_main(void)
{
    map_shared_info();
    boot_ns = xen_now_ns();
    printf("pvguest: a PV guest for pyxen host mode, on Xen %u.%u\n", boot.version >> 16,
           boot.version & 0xffff);

    uint64_t idle_s = 0;
    bool idle_limit = false;
    const char *arg = cmdline_get("idle_s");
    if (arg && !(idle_limit = parse_seconds(arg, &idle_s)))
        printf("pvguest: idle_s=%s is not a number of seconds: ignored\n", arg);

    static char name[128] = "?";
    unsigned domid = boot.domid;
    long rc = xs_open();
    if (rc == 0) {
        if (xs_read(0, "name", name, sizeof(name)) != XS_READ)
            snprintf(name, sizeof(name), "? (%s)", xs_error());
        if (!boot.domid_present) {
            char d[16];
            if (xs_read(0, "domid", d, sizeof(d)) == XS_READ)
                domid = (unsigned)strtoul(d, NULL, 10);
        }
    }
    printf("pvguest: domid %u name %s\n", domid, name);

    if (rc == 0) {
        int t = xs_watch("control/shutdown", "shutdown");
        if (t != XS_WATCH)
            printf("pvguest: cannot watch control/shutdown (%s)\n", t == XS_ERROR ? xs_error() : "no reply");
        else if (xs_write(0, "control/feature-poweroff", "1") != XS_WRITE ||
                 xs_write(0, "control/feature-reboot", "1") != XS_WRITE)
            printf("pvguest: cannot write control/feature-* (%s)\n", xs_error());
        else
            printf("pvguest: watching control/shutdown (poweroff, halt, reboot)\n");
    } else {
        printf("pvguest: no XenStore (error %ld): control/shutdown is not watched\n", rc);
    }
    if (hvc_console())
        printf("pvguest: type a line: \"uptime\", \"crash\", or anything to hear it back\n");
    if (idle_limit)
        printf("pvguest: powering off after %lu s without console input\n", (unsigned long)idle_s);

    uint64_t deadline = idle_limit ? xen_now_ns() + idle_s * 1000000000ULL : 0;
    for (;;) {
        evtchn_port_t ports[2];
        unsigned n = 0;
        if (xs_ready())
            ports[n++] = xs_port();
        if (hvc_console())
            ports[n++] = hvc_port();
        /* Pending bits first, then the rings: a signal that comes after this look at the
         * rings leaves its bit set, and the poll below returns at once for it. */
        for (unsigned i = 0; i < n; i++)
            clear_pending(ports[i]);
        bool busy = false;
        if (xs_pending()) {
            on_store_events();
            busy = true;
        }
        if (hvc_console() && on_console_input()) {
            busy = true;
            if (idle_limit)
                deadline = xen_now_ns() + idle_s * 1000000000ULL;
        }
        if (idle_limit && xen_now_ns() >= deadline) {
            printf("pvguest: idle for %lu s, shutting down (poweroff)\n", (unsigned long)idle_s);
            shutdown(SHUTDOWN_poweroff);
        }
        if (!busy)
            block_on(ports, n, deadline);
        /* else: what it did may have cleared a pending bit (a driver's own wait): look
         * at the rings again before sleeping */
    }
}
