/*
 * The PV console ring -- what Linux calls hvc0 -- as a driver of the kit.
 *
 * Every xl domain gets one: struct xencons_interface (<xen/io/console.h>) in the page
 * HVM_PARAM_CONSOLE_PFN names, signalled through the event channel in
 * HVM_PARAM_CONSOLE_EVTCHN, whose other end is the console back end in dom0
 * (xenconsoled). Output: copy into `out`, publish out_prod after the bytes, notify;
 * the back end moves out_cons and notifies back. Input the other way round through `in`.
 * This is what `xl console` shows; console_io goes to the hypervisor's log (`xl dmesg`).
 *
 * The kit polls the port (SCHEDOP_poll) instead of taking an upcall: the port is masked
 * (a masked port still wakes SCHEDOP_poll, xen/common/sched/core.c do_poll), so its
 * events never reach a guest's upcall handler, never wake its SCHEDOP_block and never
 * count as spurious. Every wait is bounded by HVMOP_get_time (right even after a guest
 * moved its vcpu_info, which freezes shared_info's copy of the pvclock).
 *
 * `console=hvc0` on the command line (any of the console= words, as Linux accepts
 * several) sends console_write() through the ring; a domain without a ring keeps
 * console_io. Only vCPU 0 is meant to print: a write that finds the ring busy (another
 * vCPU, or a fault inside the writer) goes to console_io rather than mix bytes.
 */
#include "runtime.h"

/* The top page below 2 GiB: outside the boot identity map (the first GiB) and away from
 * the windows guests map at ALIAS_BASE (1 GiB) and 0x80000000. */
#define HVC_VA 0x7ffff000ULL

static volatile struct xencons_interface *ring;
static evtchn_port_t port;
static bool on_ring;           /* console_write() goes through the ring */
static bool dead;              /* the port went away: nothing more through the ring */
static int busy;               /* one writer at a time */
static bool last_cr;           /* the line reader saw '\r': a '\n' right after is the same end */

volatile struct xencons_interface *hvc_ring(void) { return ring; }
evtchn_port_t hvc_port(void) { return port; }
bool hvc_console(void) { return on_ring; }

/* Xen system time from the hypervisor itself. */
/* Tell the back end; false once the port is gone (closed by a reset, say). */
static bool notify(void)
{
    struct evtchn_send send = { .port = port };
    if (HYPERVISOR_event_channel_op(EVTCHNOP_send, &send) == 0)
        return true;
    dead = true;
    return false;
}

/* Sleep until the back end signals the port (or the deadline); the pending bit is
 * cleared before the caller looks at the indices again, so no signal is missed. */
static void wait_event(uint64_t deadline)
{
    poll_port(port, deadline);
}

long hvc_open(void)
{
    if (ring)
        return dead ? ENOENT_ : 0;
    long rc = map_service_ring(HVM_PARAM_CONSOLE_PFN, HVM_PARAM_CONSOLE_EVTCHN, HVC_VA, &port);
    if (rc)
        return rc;
    ring = (volatile struct xencons_interface *)HVC_VA;
    return 0;
}

size_t hvc_write(const char *s, size_t len)
{
    size_t done = 0;
    uint64_t deadline = 0;   /* set while there is no room: how long the back end may take */
    while (done < len && !dead) {
        XENCONS_RING_IDX cons = ring->out_cons, prod = ring->out_prod;
        rmb();
        if (prod - cons > sizeof(ring->out))
            break;           /* impossible indices: the ring is broken */
        uint32_t space = sizeof(ring->out) - (prod - cons);
        /* What fits in the ring goes in whole (a kit line is never split between the ring
         * and console_io); bigger writes go as room comes. */
        size_t need = len - done <= sizeof(ring->out) ? len - done : 1;
        if (space < need) {
            uint64_t t = hv_now_ns();
            if (!deadline)
                deadline = t + WAIT_BOUND_NS;
            else if (t >= deadline)
                break;
            if (!notify())
                break;
            wait_event(deadline);
            continue;
        }
        uint32_t n = len - done < space ? (uint32_t)(len - done) : space;
        for (uint32_t i = 0; i < n; i++)
            ring->out[MASK_XENCONS_IDX(prod + i, ring->out)] = s[done + i];
        barrier();           /* the bytes before the index (x86 keeps stores in order) */
        ring->out_prod = prod + n;
        done += n;
        deadline = 0;        /* progress: a new bound for the next wait */
        notify();
    }
    return done;
}

bool hvc_drain(uint64_t deadline)
{
    while (!dead && ring->out_cons != ring->out_prod) {
        if (hv_now_ns() >= deadline)
            return false;
        wait_event(deadline);
    }
    return ring->out_cons == ring->out_prod;
}

size_t hvc_read(char *buf, size_t n, uint64_t deadline)
{
    size_t got = 0;
    while (got < n && !dead) {
        XENCONS_RING_IDX cons = ring->in_cons, prod = ring->in_prod;
        rmb();
        if (prod - cons > sizeof(ring->in))
            break;
        if (cons == prod) {
            if (hv_now_ns() >= deadline)
                break;
            wait_event(deadline);
            continue;
        }
        while (cons != prod && got < n)
            buf[got++] = ring->in[MASK_XENCONS_IDX(cons++, ring->in)];
        barrier();           /* the bytes are read before the slots are handed back */
        ring->in_cons = cons;
        notify();            /* room in `in` for what the back end holds back */
    }
    return got;
}

int console_getc(uint64_t deadline)
{
    char c;
    if (!ring || hvc_read(&c, 1, deadline) != 1)
        return -1;
    return (uint8_t)c;
}

long console_readline(char *buf, size_t size, uint64_t deadline, bool echo)
{
    size_t len = 0;
    for (;;) {
        int c = console_getc(deadline);
        if (c < 0) {
            if (size)
                buf[len] = '\0';
            return -1;
        }
        bool after_cr = last_cr;
        last_cr = c == '\r';
        if (c == '\n' && after_cr)
            continue;        /* the '\n' of a "\r\n" */
        if (c == '\r' || c == '\n') {
            if (echo)
                console_write("\n", 1);
            if (size)
                buf[len] = '\0';
            return (long)len;
        }
        if (c == 0x7f || c == '\b') {
            if (len) {
                len--;
                if (echo)
                    console_write("\b \b", 3);
            }
            continue;
        }
        if (len + 1 < size) {
            buf[len++] = (char)c;
            if (echo)
                console_write(&buf[len - 1], 1);
        }
    }
}

/* ---- console_write's side ---- */

/* Is one of the command line's words exactly "console=hvc0"? */
static bool cmdline_wants_hvc0(void)
{
    static const char want[] = "console=hvc0";
    const char *p = boot.cmdline ? boot.cmdline : "";
    while (*p) {
        while (*p == ' ')
            p++;
        const char *w = p;
        while (*p && *p != ' ')
            p++;
        if ((size_t)(p - w) == sizeof(want) - 1 && strncmp(w, want, sizeof(want) - 1) == 0)
            return true;
    }
    return false;
}

static void io_note(const char *fmt, ...) PRINTF_LIKE(1, 2);
static void io_note(const char *fmt, ...)
{
    char line[200];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    HYPERVISOR_console_io(CONSOLEIO_write, n < (int)sizeof(line) ? (unsigned)n : sizeof(line) - 1,
                          line);
}

void console_init(void)
{
    if (!boot.xen || !cmdline_wants_hvc0())
        return;
    long rc = hvc_open();
    if (rc == 0)
        on_ring = true;
    else
        io_note("hvc0: no console ring (error %ld): the console stays on console_io\n", rc);
}

/* The ring stopped taking output: say so where it can be seen, and use console_io. */
static void give_up(const char *why)
{
    on_ring = false;
    io_note("hvc0: %s (out_cons %u out_prod %u): the console continues on console_io\n",
            why, ring->out_cons, ring->out_prod);
}

bool hvc_console_write(const char *s, size_t len)
{
    if (!on_ring || __atomic_exchange_n(&busy, 1, __ATOMIC_ACQUIRE))
        return false;
    size_t done = hvc_write(s, len);
    if (done < len || dead)
        give_up(dead ? "the console port is gone" : "the back end took nothing for 10 s");
    __atomic_store_n(&busy, 0, __ATOMIC_RELEASE);
    if (done < len)
        HYPERVISOR_console_io(CONSOLEIO_write, (unsigned)(len - done), s + done);
    return true;
}

void console_flush(void)
{
    if (on_ring && !dead && !hvc_drain(hv_now_ns() + WAIT_BOUND_NS))
        give_up("the back end left output in the ring");
}

void hvc_evtchn_reset(bool done)
{
    if (!ring || dead)
        return;
    if (!done) {
        console_flush();     /* what is in the ring is shown before its port goes */
        return;
    }
    /* Every port is closed now: the number may come back for another channel, which must
     * not inherit our mask. Output continues on console_io. */
    dead = true;
    mask_port(port, false);
    if (on_ring) {
        on_ring = false;
        io_note("hvc0: event channels were reset: the console continues on console_io\n");
    }
}
