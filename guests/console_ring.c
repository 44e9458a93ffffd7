/*
 * console_ring: the PV console ring every xl domain has (struct xencons_interface from
 * <xen/io/console.h>, in the page HVM_PARAM_CONSOLE_PFN names, notified through
 * HVM_PARAM_CONSOLE_EVTCHN), used as Mini-OS and Linux's hvc_xen use it: write `out` and
 * bump out_prod, notify; read `in` and bump in_cons, notify.
 *
 * Xen 4.17 (xen/arch/x86/hvm/hvm.c hvm_allow_get_param): a domU may read both parameters
 * about itself; libxc puts the ring in special page 7 of the region below 0xFF000000,
 * which the memory map reserves; libxl binds the port to the console back end in dom0.
 *
 * cmdline (one mode per run; default: the checks plus a wrapping pattern):
 *   only_ring=1     every TEST/INFO/RESULT line goes through the ring, none via console_io
 *   pattern=N       N pattern lines "P<nnnnn> <text>" through the ring (default 150:
 *                   more than 2048 bytes, so the indices wrap; the host checks every byte)
 *   interleave=N    N rounds of a ring line, a console_io line and a debug-port (0xE9)
 *                   line ("ORDER <k> <source>")
 *   echo=N          read N bytes from `in` and write back "ECHO <bytes>" (wait_s=S: give
 *                   up waiting for input after S seconds; default 30)
 *   interactive=1   for a person at the domain's console: read lines from `in`
 *                   (typed keys are echoed), answer each with "echo: <line>" until "quit"
 *                   (wait_s=S: give up after S idle seconds; default 600)
 *   corrupt=1       set impossible out indices, then check the host stopped serving
 *   bench_kib=N     N KiB through the ring flat out, then the same through console_io;
 *                   INFO ring_ns / io_ns (pvclock)
 * The ring driver is the runtime's (runtime/hvc.c), the one `console=hvc0` sends every line
 * through; waits poll the console port (SCHEDOP_poll), so no upcall handler is involved.
 */
#include "guest.h"   /* runtime.h brings <xen/io/console.h> */

#define SPECIAL_PAGES_END_PFN 0xff000UL    /* libxc: X86_HVM_END_SPECIAL_REGION */
#define SPECIALPAGE_CONSOLE 7
#define NR_SPECIAL_PAGES 8

static volatile struct xencons_interface *intf;   /* the runtime's mapping (runtime/hvc.c) */
static bool only_ring;
static unsigned passed, failed;   /* only_ring's own counts (the runtime's print via console_io) */

/* The runtime's ring driver, all or nothing. */
static bool ring_write(const char *s, size_t len) { return hvc_write(s, len) == len; }
static bool ring_drained(void) { return hvc_drain(xen_now_ns() + WAIT_BOUND_NS); }

/* ---- reports: through console_io, or only through the ring ---- */
static void say(const char *fmt, ...) PRINTF_LIKE(1, 2);
static void say(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n > (int)sizeof(line) - 1)
        n = sizeof(line) - 1;
    if (only_ring)
        ring_write(line, (size_t)n);
    else
        console_write(line, (size_t)n);
}

static bool rcheck(const char *name, bool ok, const char *fmt, ...) PRINTF_LIKE(3, 4);
static bool rcheck(const char *name, bool ok, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (!only_ring)
        return check(name, ok, "%s", why);
    if (ok) {
        passed++;
        say("TEST %s PASS\n", name);
    } else {
        failed++;
        say("TEST %s FAIL %s\n", name, why);
    }
    return ok;
}

static bool rcheck_eq(const char *name, long got, long want)
{
    return rcheck(name, got == want, "expected %ld (%#lx) got %ld (%#lx)", want, want, got, got);
}

static NORETURN void done(void)
{
    if (!only_ring)
        finish();
    say("RESULT %u %u\n", passed, failed);
    ring_drained();
    shutdown(SHUTDOWN_poweroff);
}

/* ---- the modes ---- */
static const char TEXT[] = "the quick brown fox jumps over the lazy dog";

static void pattern(unsigned lines)
{
    char line[80];
    unsigned bytes = 0;
    bool ok = true;
    for (unsigned i = 0; i < lines && ok; i++) {
        int n = snprintf(line, sizeof(line), "P%05u %s\n", i, TEXT);
        ok = ring_write(line, (size_t)n);
        bytes += (unsigned)n;
    }
    rcheck("console_ring.pattern_written", ok, "the host made no room in the ring");
    rcheck("console_ring.pattern_drained", ring_drained(),
           "out_cons %u out_prod %u", intf->out_cons, intf->out_prod);
    say("INFO pattern_bytes %u\n", bytes);
    say("INFO out_prod %u\n", intf->out_prod);
}

static void interleave(unsigned rounds)
{
    char line[64];
    for (unsigned i = 0; i < rounds; i++) {
        int n = snprintf(line, sizeof(line), "ORDER %u ring\n", 3 * i);
        ring_write(line, (size_t)n);
        n = snprintf(line, sizeof(line), "ORDER %u console_io\n", 3 * i + 1);
        console_write(line, (size_t)n);
        n = snprintf(line, sizeof(line), "ORDER %u debugcon\n", 3 * i + 2);
        for (int k = 0; k < n; k++)
            outb(0xe9, (uint8_t)line[k]);   /* Xen's HVM debug port */
    }
}

static void echo(unsigned n)
{
    static char buf[1024], line[1100];
    if (n > sizeof(buf))
        n = sizeof(buf);
    say("INFO echo_ready %u\n", n);
    const char *w = cmdline_get("wait_s");   /* how long input may take (default 3 bounds) */
    uint64_t wait = w ? strtoul(w, NULL, 10) * 1000000000ULL : 3 * WAIT_BOUND_NS;
    size_t got = hvc_read(buf, n, xen_now_ns() + wait);
    int len = snprintf(line, sizeof(line), "ECHO ");
    memcpy(line + len, buf, got);
    len += (int)got;
    line[len++] = '\n';
    ring_write(line, (size_t)len);
    rcheck_eq("console_ring.echo_received", (long)got, (long)n);
}

static void interactive(void)
{
    static char line[256];
    const char *w = cmdline_get("wait_s");   /* a person may pause: 10 minutes by default */
    uint64_t idle = (w ? strtoul(w, NULL, 10) : 600) * 1000000000ULL;
    unsigned lines = 0;
    printf("console_ring: type a line and press Enter; \"quit\" ends\n");
    for (;;) {
        printf("> ");
        long n = console_readline(line, sizeof(line), xen_now_ns() + idle, true);
        if (n < 0) {
            printf("\n");
            rcheck("console_ring.interactive_quit", false, "no \"quit\" within %lu s (%u lines)",
                   (unsigned long)(idle / 1000000000ULL), lines);
            break;
        }
        if (strcmp(line, "quit") == 0) {
            rcheck("console_ring.interactive_quit", true, "-");
            break;
        }
        lines++;
        printf("echo: %s\n", line);
    }
    say("INFO interactive_lines %u\n", lines);
}

static void corrupt(void)
{
    static const char before[] = "BEFORE corruption\n", after[] = "AFTER corruption\n";
    ring_write(before, sizeof(before) - 1);
    rcheck("console_ring.drained_before", ring_drained(), "not drained");
    XENCONS_RING_IDX cons = intf->out_cons;
    intf->out_prod = cons + 0x10000;   /* 64 KiB outstanding in a 2 KiB ring: impossible */
    notify_port(hvc_port());
    intf->out_prod = cons;             /* sane again: the host must not come back */
    ring_write(after, sizeof(after) - 1);
    sleep_until(xen_now_ns() + 300000000ULL);  /* a window for a consumer that should not come */
    rcheck_eq("console_ring.cut_off", (long)(intf->out_prod - intf->out_cons),
              (long)(sizeof(after) - 1));
}

static void bench(unsigned kib)
{
    static char chunk[1024];
    for (unsigned i = 0; i < sizeof(chunk); i++)
        chunk[i] = (i % 64 == 63) ? '\n' : (char)('a' + i % 26);
    uint64_t t0 = xen_now_ns();
    bool ok = true;
    for (unsigned i = 0; i < kib && ok; i++)
        ok = ring_write(chunk, sizeof(chunk));
    ok = ok && ring_drained();
    uint64_t t1 = xen_now_ns();
    for (unsigned i = 0; i < kib; i++)
        console_write(chunk, sizeof(chunk));
    uint64_t t2 = xen_now_ns();
    rcheck("console_ring.bench_ring_ok", ok, "the ring stalled");
    say("INFO bench_bytes %u\n", kib * 1024);
    say("INFO ring_ns %lu\n", (unsigned long)(t1 - t0));
    say("INFO io_ns %lu\n", (unsigned long)(t2 - t1));
}

static bool reserved_in_memmap(uint64_t addr)
{
    struct hvm_start_info *si = boot.start_info;
    if (!si || si->version < 1 || !si->memmap_paddr)
        return false;
    struct hvm_memmap_table_entry *m = (void *)(uintptr_t)si->memmap_paddr;
    for (uint32_t i = 0; i < si->memmap_entries; i++)
        if (addr >= m[i].addr && addr + PAGE_SIZE <= m[i].addr + m[i].size)
            return m[i].type == XEN_HVM_MEMMAP_TYPE_RESERVED;
    return false;
}

int guest_main(void)
{
    only_ring = cmdline_has("only_ring");
    uint64_t pfn = 0, evtchn = 0;
    long rc;
    long rc_pfn = hvm_get_param(DOMID_SELF, HVM_PARAM_CONSOLE_PFN, &pfn);
    long rc_evtchn = hvm_get_param(DOMID_SELF, HVM_PARAM_CONSOLE_EVTCHN, &evtchn);
    if (!pfn || !evtchn || rc_pfn || rc_evtchn) {
        only_ring = false;  /* no ring to report through */
        check("console_ring.advertised", false, "rc %ld/%ld pfn %#lx evtchn %lu", rc_pfn,
              rc_evtchn, (unsigned long)pfn, (unsigned long)evtchn);
        return 0;
    }
    if ((rc = hvc_open())) {
        only_ring = false;
        check("console_ring.mapped", false, "hvc_open: %ld (shared_info or the ring page)", rc);
        return 0;
    }
    intf = hvc_ring();
    evtchn_port_t port = hvc_port();

    XENCONS_RING_IDX out_cons0 = intf->out_cons, out_prod0 = intf->out_prod;
    rcheck("console_ring.advertised", true, "-");
    rcheck("console_ring.fresh", out_cons0 == 0 && out_prod0 == 0, "out_cons %u out_prod %u",
           out_cons0, out_prod0);
    say("INFO console_pfn %#lx\n", (unsigned long)pfn);
    say("INFO console_evtchn %lu\n", (unsigned long)evtchn);
    rcheck_eq("console_ring.special_page", (long)pfn,
              (long)(SPECIAL_PAGES_END_PFN - NR_SPECIAL_PAGES + SPECIALPAGE_CONSOLE));
    rcheck("console_ring.reserved_in_memmap", reserved_in_memmap(pfn << PAGE_SHIFT),
           "pfn %#lx is not in a reserved memory-map range", (unsigned long)pfn);
    struct evtchn_status st = { .dom = DOMID_SELF, .port = port };
    rc = HYPERVISOR_event_channel_op(EVTCHNOP_status, &st);
    rcheck("console_ring.port_interdomain_to_dom0",
           rc == 0 && st.status == EVTCHNSTAT_interdomain && st.u.interdomain.dom == 0,
           "rc %ld status %u dom %u", rc, st.status, st.u.interdomain.dom);

    const char *v;
    if ((v = cmdline_get("interleave")))
        interleave((unsigned)strtoul(v, NULL, 10));
    else if ((v = cmdline_get("echo")))
        echo((unsigned)strtoul(v, NULL, 10));
    else if (cmdline_has("interactive"))
        interactive();
    else if (cmdline_has("corrupt"))
        corrupt();
    else if ((v = cmdline_get("bench_kib")))
        bench((unsigned)strtoul(v, NULL, 10));
    else
        pattern((v = cmdline_get("pattern")) ? (unsigned)strtoul(v, NULL, 10) : 150);
    done();
}
