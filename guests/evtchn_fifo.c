/*
 * evtchn_fifo: the FIFO event-channel ABI -- EVTCHNOP_init_control,
 * expand_array and set_priority with good and bad input, then delivery
 * through per-vCPU priority queues that this guest consumes itself.
 *
 * Semantics (Xen 4.17, xen/common/event_fifo.c and event_channel.c):
 *  - init_control: no such vCPU -> -ENOENT (first); offset beyond
 *    PAGE_SIZE - sizeof(control block) (4024) -> -EINVAL; offset not 8-byte
 *    aligned -> -EINVAL; a control gfn that is not the domain's RAM -> -EINVAL;
 *    a second control block for the same vCPU -> -EINVAL. link_bits = 17 out.
 *    A failed first call leaves the domain 2-level. The first success
 *    switches the domain to FIFO: bound ports keep their pending state
 *    (raised when their event-array page is added) and get priority 7.
 *  - expand_array: before init_control -> -EOPNOTSUPP; a gfn that is not RAM
 *    -> -EINVAL; more than 128 pages (2^17 ports) -> -ENOSPC.
 *  - set_priority: port not valid -> -EINVAL (first); 2-level ABI -> -ENOSYS; port
 *    not bound -> -EACCES; priority > 15 -> -EINVAL.
 *  - the port limit is 4096 in 2-level mode and 2^17 in FIFO mode, below
 *    max_event_channels (-ENOSPC after the last port).
 *  - set_pending: PENDING; if not MASKED and not LINKED: LINKED, link onto
 *    the tail of the notify vCPU's queue for the port's priority (or write
 *    head[] if that queue was empty), set the priority's ready bit, upcall.
 *    A masked event is pending but not linked; EVTCHNOP_unmask links it.
 *  - EVTCHNOP_reset goes back to the 2-level ABI.
 * The consumer (Linux's drivers/xen/events/events_fifo.c model): take the
 * ready bits, always the highest priority (lowest bit) first, walk each
 * queue from head[] with a per-vCPU local head, unlink words with cmpxchg.
 *
 * cmdline: max_port=N -- the domain's max_event_channels (xl default 1023);
 *          the exhaustion checks expect it.
 *          bench=N -- only time N sends from vCPU 0 to an IPI port of vCPU 1
 *          (needs --vcpus 2; INFO send_to_upcall_median_ns/_p99_ns).
 * INFO keys: max_port_2l, max_port_fifo, high_port, upcalls.
 */
#include "guest.h"
#include "evtchn.h"

#define NR_ARRAY_PAGES   128                /* EVTCHN_FIFO_NR_CHANNELS / 1024 */
#define WORDS_PER_PAGE   (PAGE_SIZE / sizeof(event_word_t))
#define MAX_TRACKED      16384              /* ports with a hit counter */
#define CB_OFFSET0       (PAGE_SIZE - sizeof(struct evtchn_fifo_control_block))
#define LOG_MAX          16
#define FIFO_WAIT_NS     WAIT_BOUND_NS

static uint8_t cb_pages[MAX_VCPUS][PAGE_SIZE] ALIGNED(PAGE_SIZE);
static event_word_t array_pages[NR_ARRAY_PAGES][WORDS_PER_PAGE] ALIGNED(PAGE_SIZE);
static unsigned nr_array_pages;

static volatile struct evtchn_fifo_control_block *cb[MAX_VCPUS];
static uint32_t local_head[MAX_VCPUS][EVTCHN_FIFO_MAX_QUEUES];
static volatile bool fifo_active;
static volatile uint64_t hits[MAX_TRACKED];
static volatile uint64_t cpu_hits[MAX_VCPUS];
static volatile uint32_t order_log[LOG_MAX];
static volatile unsigned order_n;
static volatile bool logging;
static unsigned nr_vcpus;
static unsigned long max_port = 1023;
static volatile evtchn_port_t bench_port;      /* bench=N: the IPI port timed on vCPU 1 */
static volatile evtchn_port_t bench_reply;     /* ... and vCPU 1's answer to vCPU 0 */
static volatile uint64_t bench_t, bench_count;

static long raw_op(int cmd, void *arg) { return HYPERVISOR_event_channel_op(cmd, arg); }

/* ---- atomics on 32-bit event words ---- */
static inline uint32_t cmpxchg32(volatile uint32_t *p, uint32_t old, uint32_t new)
{
    asm volatile("lock cmpxchgl %2, %1" : "+a"(old), "+m"(*p) : "r"(new) : "memory", "cc");
    return old;
}
static inline void set_bit32(volatile uint32_t *p, unsigned bit)
{
    asm volatile("lock btsl %1, %0" : "+m"(*p) : "r"(bit) : "memory", "cc");
}
static inline bool test_and_clear_bit32(volatile uint32_t *p, unsigned bit)
{
    bool old;
    asm volatile("lock btrl %2, %1; setc %0" : "=q"(old), "+m"(*p) : "r"(bit) : "memory", "cc");
    return old;
}
static inline uint32_t xchg32(volatile uint32_t *p, uint32_t v)
{
    asm volatile("xchgl %0, %1" : "+r"(v), "+m"(*p) :: "memory");
    return v;
}
static inline unsigned ctz32(uint32_t v)
{
    uint32_t r;
    asm("bsfl %1, %0" : "=r"(r) : "rm"(v) : "cc");
    return r;
}

static volatile event_word_t *word_of(evtchn_port_t port)
{
    return &array_pages[port / WORDS_PER_PAGE][port % WORDS_PER_PAGE];
}
static bool w_pending(evtchn_port_t p) { return (*word_of(p) >> EVTCHN_FIFO_PENDING) & 1; }
static bool w_linked(evtchn_port_t p) { return (*word_of(p) >> EVTCHN_FIFO_LINKED) & 1; }
static bool w_masked(evtchn_port_t p) { return (*word_of(p) >> EVTCHN_FIFO_MASKED) & 1; }
static void w_mask(evtchn_port_t p) { set_bit32(word_of(p), EVTCHN_FIFO_MASKED); }

/* ---- the consumer ---- */
/* Unlink a word: clear LINKED and LINK, return the next port in the queue. */
static uint32_t clear_linked(volatile event_word_t *word)
{
    uint32_t w = *word, old;
    do {
        old = w;
        w = cmpxchg32(word, old, old & ~((1u << EVTCHN_FIFO_LINKED) | EVTCHN_FIFO_LINK_MASK));
    } while (w != old);
    return w & EVTCHN_FIFO_LINK_MASK;
}

static void dispatch(unsigned cpu, evtchn_port_t port)
{
    struct evtchn_cpu *c = &evtchn_cpu[cpu];
    c->events++;
    cpu_hits[cpu]++;
    if (port < MAX_TRACKED)
        hits[port]++;
    if (logging && port != c->timer_port && order_n < LOG_MAX)  /* a stray tick: not ours */
        order_log[order_n++] = port;
    if (port == bench_port) {
        bench_t = now_ns();
        bench_count++;
        evtchn_send(bench_reply);       /* wakes vCPU 0 from its hlt */
    }
    if (port == c->timer_port) {
        c->timer_events++;
        c->last_timer_ns = now_ns();
    }
}

static void consume_one_event(unsigned cpu, unsigned q, uint32_t *ready)
{
    volatile struct evtchn_fifo_control_block *b = cb[cpu];
    uint32_t head = local_head[cpu][q];
    if (head == 0) {
        rmb();
        head = b->head[q];
    }
    evtchn_port_t port = head;
    volatile event_word_t *word = word_of(port);
    head = clear_linked(word);
    if (head == 0)
        *ready &= ~(1u << q);      /* that was the last event of this queue */
    if (!((*word >> EVTCHN_FIFO_MASKED) & 1) &&
        test_and_clear_bit32(word, EVTCHN_FIFO_PENDING))
        dispatch(cpu, port);
    local_head[cpu][q] = head;
}

static void fifo_handle_events(unsigned cpu)
{
    volatile struct evtchn_fifo_control_block *b = cb[cpu];
    if (!b)
        return;
    uint32_t ready = xchg32(&b->ready, 0);
    while (ready) {
        consume_one_event(cpu, ctz32(ready), &ready);
        ready |= xchg32(&b->ready, 0);
    }
}

void evtchn_do_upcall(void);     /* the library's 2-level handler */
void fifo_do_upcall(void);

/* Called from fifo_upcall_entry with interrupts off. */
void fifo_do_upcall(void)
{
    if (!fifo_active) {
        evtchn_do_upcall();
        return;
    }
    unsigned cpu = smp_id();
    struct evtchn_cpu *c = &evtchn_cpu[cpu];
    volatile struct vcpu_info *vi = c->vi;
    c->upcalls++;
    if (!vi)
        return;
    do {
        vi->evtchn_upcall_pending = 0;
        fifo_handle_events(cpu);
        rmb();
    } while (vi->evtchn_upcall_pending);
}

/* The upcall gate: the library's entry, calling fifo_do_upcall instead. */
asm(".text\n"
    ".globl fifo_upcall_entry\n"
    ".p2align 4\n"
    "fifo_upcall_entry:\n"
    "  cld\n"
    "  pushq %rax\n  pushq %rcx\n  pushq %rdx\n  pushq %rsi\n  pushq %rdi\n"
    "  pushq %r8\n  pushq %r9\n  pushq %r10\n  pushq %r11\n  pushq %rbx\n"
    "  movq %rsp, %rbx\n"
    "  andq $-16, %rsp\n"
    "  call fifo_do_upcall\n"
    "  movq %rbx, %rsp\n"
    "  popq %rbx\n  popq %r11\n  popq %r10\n  popq %r9\n  popq %r8\n"
    "  popq %rdi\n  popq %rsi\n  popq %rdx\n  popq %rcx\n  popq %rax\n"
    "  iretq\n");
extern char fifo_upcall_entry[];

static void install_fifo_gate(void)
{
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) idtr;
    asm volatile("sidt %0" : "=m"(idtr));
    volatile uint8_t *g = (volatile uint8_t *)(uintptr_t)idtr.base + 16 * EVTCHN_VECTOR;
    uint64_t h = (uint64_t)(uintptr_t)fifo_upcall_entry;
    uint64_t flags = irq_save();
    *(volatile uint16_t *)(g + 0) = h & 0xffff;
    *(volatile uint16_t *)(g + 6) = (h >> 16) & 0xffff;
    *(volatile uint32_t *)(g + 8) = h >> 32;
    irq_restore(flags);
}

/* ---- hypercall wrappers ---- */
static long init_control(uint64_t gfn, uint32_t offset, uint32_t vcpu, uint8_t *link_bits)
{
    struct evtchn_init_control ic = { .control_gfn = gfn, .offset = offset, .vcpu = vcpu };
    long rc = raw_op(EVTCHNOP_init_control, &ic);
    if (link_bits)
        *link_bits = ic.link_bits;
    return rc;
}

static long expand_array(uint64_t gfn)
{
    struct evtchn_expand_array ea = { .array_gfn = gfn };
    return raw_op(EVTCHNOP_expand_array, &ea);
}

static long set_priority(evtchn_port_t port, uint32_t priority)
{
    struct evtchn_set_priority sp = { .port = port, .priority = priority };
    return raw_op(EVTCHNOP_set_priority, &sp);
}

/* Add the next event-array page, every word masked first (as Linux does). */
static long add_array_page(void)
{
    event_word_t *page = array_pages[nr_array_pages];
    for (unsigned i = 0; i < WORDS_PER_PAGE; i++)
        page[i] = 1u << EVTCHN_FIFO_MASKED;
    long rc = expand_array(pfn_of(page));
    if (rc == 0)
        nr_array_pages++;
    return rc;
}

static bool wait_hits(evtchn_port_t port, uint64_t target)
{
    return wait_for_count(&hits[port], target, now_ns() + FIFO_WAIT_NS);
}

/* ---------------------------------------------------------------- */
static void test_errors_before_init(void)
{
    uint8_t lb = 0;
    uint64_t good = pfn_of(cb_pages[0]);
    check_eq("fifo.set_priority_2level", set_priority(1, 3), ENOSYS_);
    check_eq("fifo.set_priority_2level_bad_port_first", set_priority(200000, 3), EINVAL_);
    check_eq("fifo.expand_array_before_init", expand_array(pfn_of(array_pages[0])), EOPNOTSUPP_);
    check_eq("fifo.init_control_bad_vcpu", init_control(good, 0, nr_vcpus, &lb), ENOENT_);
    check_eq("fifo.init_control_bad_vcpu_first", init_control(~0ULL, 5, 4096, &lb), ENOENT_);
    check_eq("fifo.init_control_offset_crosses_page",
             init_control(good, CB_OFFSET0 + 8, 0, &lb), EINVAL_);
    check_eq("fifo.init_control_offset_unaligned", init_control(good, 4, 0, &lb), EINVAL_);
    check_eq("fifo.init_control_offset_far", init_control(good, 0x10000, 0, &lb), EINVAL_);
    check_eq("fifo.init_control_gfn_not_ram", init_control(0xf0000, 0, 0, &lb), EINVAL_);
    check_eq("fifo.init_control_gfn_huge", init_control(1ULL << 40, 0, 0, &lb), EINVAL_);
    check_eq("fifo.init_control_badptr", raw_op(EVTCHNOP_init_control, BAD_PTR), EFAULT_);
    /* XSA-188's sequence (XTF): a bad gfn, then expand_array must not use the
     * control block that failed. */
    check_eq("fifo.init_control_gfn_minus_2", init_control((uint64_t)-2, 0, 0, &lb), EINVAL_);
    check_eq("fifo.expand_array_after_failed_init", expand_array(pfn_of(array_pages[0])),
             EOPNOTSUPP_);
    /* Nothing above switched the domain. */
    check_eq("fifo.still_2level_after_failures", set_priority(1, 3), ENOSYS_);
}

/* Allocate unbound ports until the domain runs out; the last port given. */
static long exhaust(long *last_rc)
{
    evtchn_port_t p = 0;
    long last = -1, rc;
    while ((rc = evtchn_alloc_unbound(DOMID_SELF, DOMID_SELF, &p)) == 0)
        last = p;
    *last_rc = rc;
    return last;
}

static evtchn_port_t early_port;
static long top_port;

static void test_switch(void)
{
    long rc;
    /* A port raised under the 2-level ABI, not yet seen by the guest. */
    check_eq("fifo.early_bind_ipi", evtchn_bind_ipi(0, &early_port), 0);
    irq_disable();
    check_eq("fifo.early_send", evtchn_send(early_port), 0);
    check("fifo.early_pending_2level", evtchn_is_pending(early_port), "bit clear");

    long last = exhaust(&rc);
    long want = max_port < NR_PORTS_2L - 1 ? (long)max_port : (long)NR_PORTS_2L - 1;
    info("max_port_2l", "%ld", last);
    check_eq("fifo.exhaust_2level_enospc", rc, ENOSPC_);
    check_eq("fifo.exhaust_2level_last_port", last, want);

    uint8_t lb = 0;
    rc = init_control(pfn_of(cb_pages[0]), CB_OFFSET0, 0, &lb);
    check_eq("fifo.init_control", rc, 0);
    if (rc)
        return;
    cb[0] = (volatile struct evtchn_fifo_control_block *)(cb_pages[0] + CB_OFFSET0);
    fifo_active = true;
    check_eq("fifo.init_control_link_bits", lb, EVTCHN_FIFO_LINK_BITS);
    check_eq("fifo.init_control_repeat", init_control(pfn_of(cb_pages[0]), 0, 0, NULL), EINVAL_);
    check_eq("fifo.set_priority_needs_valid_port", set_priority(EVTCHN_FIFO_NR_CHANNELS, 3),
             EINVAL_);

    /* Enough event-array pages for every port the domain may have. */
    unsigned want_pages = (unsigned)((max_port + WORDS_PER_PAGE) / WORDS_PER_PAGE);
    if (want_pages > NR_ARRAY_PAGES)
        want_pages = NR_ARRAY_PAGES;
    rc = 0;
    while (nr_array_pages < want_pages && rc == 0)
        rc = add_array_page();
    check_eq("fifo.expand_array", rc, 0);
    info("array_pages", "%u", nr_array_pages);

    /* The early event: pending in its event word, not linked (masked). */
    check("fifo.early_pending_after_switch", w_pending(early_port), "word %#x",
          *word_of(early_port));
    check("fifo.early_not_linked_while_masked", !w_linked(early_port), "word %#x",
          *word_of(early_port));
    for (unsigned i = 0; i < nr_vcpus && i < MAX_VCPUS; i++)
        if (evtchn_cpu[i].timer_port)
            evtchn_unmask(evtchn_cpu[i].timer_port);
    check_eq("fifo.early_unmask", evtchn_unmask(early_port), 0);
    irq_enable();
    check("fifo.early_delivered_after_switch", wait_hits(early_port, 1), "hits %lu",
          (unsigned long)hits[early_port]);
    check("fifo.early_unlinked_by_guest", !w_linked(early_port) && !w_pending(early_port),
          "word %#x", *word_of(early_port));

    /* The FIFO limit: the rest of max_event_channels, beyond 2-level's 4096. */
    long more = exhaust(&rc);
    if (more >= 0)
        last = more;
    want = max_port < EVTCHN_FIFO_NR_CHANNELS - 1 ? (long)max_port : EVTCHN_FIFO_NR_CHANNELS - 1;
    info("max_port_fifo", "%ld", last);
    check_eq("fifo.exhaust_fifo_enospc", rc, ENOSPC_);
    check_eq("fifo.exhaust_fifo_last_port", last, want);
    top_port = last;
    /* Free the top 64 ports again: the ports bound below get those numbers. */
    bool ok = true;
    for (long p = last; p > last - 64 && p > early_port; p--)
        ok &= evtchn_close((evtchn_port_t)p) == 0;
    check("fifo.close_top_ports", ok, "a close failed");
}

static evtchn_port_t bind_ipi_unmasked(unsigned cpu)
{
    evtchn_port_t p = 0;
    if (evtchn_bind_ipi(cpu, &p))
        return 0;
    evtchn_unmask(p);
    return p;
}

static void test_delivery(void)
{
    /* A high port: beyond the 2-level limit when max_port allows it. */
    evtchn_port_t hp = bind_ipi_unmasked(0);
    check("fifo.high_port_bound", hp != 0 && hp < MAX_TRACKED, "port %u", hp);
    if (!hp || hp >= MAX_TRACKED)
        return;
    info("high_port", "%u", hp);
    if (max_port >= NR_PORTS_2L + 64)
        check("fifo.high_port_beyond_2level", hp >= NR_PORTS_2L, "port %u", hp);
    uint64_t h0 = hits[hp];
    check_eq("fifo.high_port_send", evtchn_send(hp), 0);
    check("fifo.high_port_delivered", wait_hits(hp, h0 + 1), "hits %lu", (unsigned long)hits[hp]);

    /* Priorities: low (10) sent first, high (2) second; high is consumed first. */
    evtchn_port_t lo = bind_ipi_unmasked(0), hi = bind_ipi_unmasked(0);
    check_eq("fifo.set_priority_low", set_priority(lo, 10), 0);
    check_eq("fifo.set_priority_high", set_priority(hi, 2), 0);
    irq_disable();
    order_n = 0;
    logging = true;
    evtchn_send(lo);
    evtchn_send(hi);
    uint32_t ready = cb[0]->ready;
    check("fifo.ready_bits", (ready & ((1u << 10) | (1u << 2))) == ((1u << 10) | (1u << 2)),
          "ready %#x", ready);
    check_eq("fifo.head_low", cb[0]->head[10], lo);
    check_eq("fifo.head_high", cb[0]->head[2], hi);
    irq_enable();
    wait_hits(lo, 1);
    logging = false;
    check("fifo.priority_order", order_n == 2 && order_log[0] == hi && order_log[1] == lo,
          "n=%u first=%u second=%u (hi=%u lo=%u)", order_n, order_log[0], order_log[1], hi, lo);

    /* One priority is first-in first-out, not port order. */
    evtchn_port_t a = bind_ipi_unmasked(0), b = bind_ipi_unmasked(0), c = bind_ipi_unmasked(0);
    /* A queue of their own: a stray VIRQ_TIMER tick (priority 7) cannot join it. */
    check("fifo.set_priority_5", !set_priority(a, 5) && !set_priority(b, 5) && !set_priority(c, 5),
          "set_priority failed");
    irq_disable();
    order_n = 0;
    logging = true;
    evtchn_send(c);
    evtchn_send(a);
    evtchn_send(b);
    check("fifo.linked_chain",
          (*word_of(c) & EVTCHN_FIFO_LINK_MASK) == a && (*word_of(a) & EVTCHN_FIFO_LINK_MASK) == b,
          "c->%u a->%u", *word_of(c) & EVTCHN_FIFO_LINK_MASK, *word_of(a) & EVTCHN_FIFO_LINK_MASK);
    irq_enable();
    wait_hits(b, 1);
    logging = false;
    check("fifo.fifo_order",
          order_n == 3 && order_log[0] == c && order_log[1] == a && order_log[2] == b,
          "n=%u %u %u %u (want %u %u %u)", order_n, order_log[0], order_log[1], order_log[2],
          c, a, b);

    /* A masked port: pending but not linked, no event, until unmask. */
    evtchn_port_t m = 0;
    check_eq("fifo.masked_bind", evtchn_bind_ipi(0, &m), 0);
    check("fifo.masked_initially", w_masked(m), "word %#x", *word_of(m));
    check_eq("fifo.masked_send", evtchn_send(m), 0);
    check("fifo.masked_pending_not_linked", w_pending(m) && !w_linked(m), "word %#x",
          *word_of(m));
    block_until(now_ns() + 2000000);
    check_eq("fifo.masked_not_delivered", (long)hits[m], 0);
    check_eq("fifo.masked_unmask", evtchn_unmask(m), 0);
    check("fifo.masked_delivered_on_unmask", wait_hits(m, 1), "hits %lu",
          (unsigned long)hits[m]);

    /* set_priority: bounds, unbound ports. */
    check_eq("fifo.set_priority_too_low", set_priority(m, EVTCHN_FIFO_PRIORITY_MIN + 1), EINVAL_);
    check_eq("fifo.set_priority_lowest", set_priority(m, EVTCHN_FIFO_PRIORITY_MIN), 0);
    check_eq("fifo.set_priority_highest", set_priority(m, EVTCHN_FIFO_PRIORITY_MAX), 0);
    check_eq("fifo.close_masked", evtchn_close(m), 0);
    check_eq("fifo.set_priority_free_port", set_priority(m, 3), EACCES_);
    check_eq("fifo.set_priority_port0", set_priority(0, 3), EACCES_);

    /* VIRQ_TIMER through FIFO. */
    struct evtchn_cpu *c0 = &evtchn_cpu[0];
    uint64_t t0 = c0->timer_events;
    check_eq("fifo.timer_set", vcpu_set_singleshot(0, now_ns() + 1000000, 0), 0);
    check("fifo.timer_delivered", wait_for_count(&c0->timer_events, t0 + 1,
                                                 now_ns() + FIFO_WAIT_NS),
          "timer events %lu", (unsigned long)c0->timer_events);

    /* SCHEDOP_poll on FIFO ports: a pending one returns at once; the timer's
     * port (masked, so no upcall) wakes the poller when it fires. */
    evtchn_port_t pp = 0;
    check_eq("fifo.poll_bind", evtchn_bind_ipi(0, &pp), 0);
    irq_disable();
    evtchn_send(pp);
    uint64_t before = now_ns();
    check_eq("fifo.poll_pending_port", sched_poll(&pp, 1, before + FIFO_WAIT_NS), 0);
    check("fifo.poll_pending_returns", now_ns() - before < FIFO_WAIT_NS, "slept");
    evtchn_port_t tp = c0->timer_port;
    w_mask(tp);
    test_and_clear_bit32(word_of(tp), EVTCHN_FIFO_PENDING);
    vcpu_set_singleshot(0, now_ns() + 2000000, 0);
    before = now_ns();
    long rc = sched_poll(&tp, 1, before + FIFO_WAIT_NS);
    check_eq("fifo.poll_timer_port", rc, 0);
    check("fifo.poll_woken_by_timer", w_pending(tp) && now_ns() - before < FIFO_WAIT_NS,
          "word %#x", *word_of(tp));
    evtchn_unmask(tp);      /* the pending tick is linked and delivered now */
    irq_enable();
    evtchn_close(pp);
}

static volatile uint64_t ap_ready;
static void ap_fn(unsigned cpu) { ap_ready = 1; }

static void test_second_vcpu(void)
{
    if (nr_vcpus < 2) {
        info("second_vcpu", "skipped (1 vCPU)");
        return;
    }
    check("fifo.ap_online", wait_for_count(&ap_ready, 1, now_ns() + FIFO_WAIT_NS), "AP silent");
    /* vCPU 1 has no control block yet: its events stay pending, unlinked. */
    evtchn_port_t p = 0;
    check_eq("fifo.ap_bind_ipi", evtchn_bind_ipi(1, &p), 0);
    evtchn_unmask(p);
    check_eq("fifo.ap_send_without_control_block", evtchn_send(p), 0);
    check("fifo.ap_pending_not_linked", w_pending(p) && !w_linked(p), "word %#x", *word_of(p));
    check_eq("fifo.ap_init_control", init_control(pfn_of(cb_pages[1]), 0, 1, NULL), 0);
    cb[1] = (volatile struct evtchn_fifo_control_block *)cb_pages[1];
    check_eq("fifo.ap_init_control_repeat", init_control(pfn_of(cb_pages[1]), 64, 1, NULL),
             EINVAL_);
    test_and_clear_bit32(word_of(p), EVTCHN_FIFO_PENDING);
    uint64_t c1 = cpu_hits[1], h = hits[p];
    check_eq("fifo.ap_send", evtchn_send(p), 0);
    check("fifo.ap_ipi_delivered", wait_for_count(&cpu_hits[1], c1 + 1, now_ns() + FIFO_WAIT_NS),
          "vCPU1 hits %lu", (unsigned long)cpu_hits[1]);
    check_eq("fifo.ap_ipi_once", (long)(hits[p] - h), 1);
    check_eq("fifo.ap_close", evtchn_close(p), 0);
}

static void test_array_limits(void)
{
    check_eq("fifo.expand_array_not_ram", expand_array(0xf0000), EINVAL_);
    check_eq("fifo.expand_array_huge_gfn", expand_array(1ULL << 40), EINVAL_);
    long rc = 0;
    while (nr_array_pages < NR_ARRAY_PAGES && rc == 0) {
        rc = expand_array(pfn_of(array_pages[nr_array_pages]));
        if (rc == 0)
            nr_array_pages++;
    }
    check_eq("fifo.expand_array_to_128_pages", rc, 0);
    check_eq("fifo.expand_array_full", expand_array(pfn_of(array_pages[0])), ENOSPC_);
}

static void test_reset(void)
{
    irq_disable();
    fifo_active = false;
    check_eq("fifo.reset", evtchn_reset(DOMID_SELF), 0);
    check_eq("fifo.reset_back_to_2level", set_priority(1, 3), ENOSYS_);
    check_eq("fifo.reset_expand_array", expand_array(pfn_of(array_pages[0])), EOPNOTSUPP_);
    evtchn_port_t p = 0;
    check_eq("fifo.reset_2level_bind", evtchn_bind_ipi(0, &p), 0);
    check("fifo.reset_2level_low_port", p >= 1 && p < NR_PORTS_2L, "port %u", p);
}

/* bench=N: send -> upcall latency from vCPU 0 to vCPU 1 through FIFO queues (the
 * 2-level figure comes from guests/evtchn_latency.c in the same benchmark run). */
static uint64_t bench_samples[4000];

static void bench(unsigned n)
{
    if (n > ARRAY_SIZE(bench_samples))
        n = ARRAY_SIZE(bench_samples);
    if (nr_vcpus < 2 || !wait_for_count(&ap_ready, 1, now_ns() + FIFO_WAIT_NS)) {
        check("fifo.bench_needs_2_vcpus", false, "%u vCPUs", nr_vcpus);
        return;
    }
    irq_disable();
    bool ok = init_control(pfn_of(cb_pages[0]), 0, 0, NULL) == 0;
    cb[0] = (volatile struct evtchn_fifo_control_block *)cb_pages[0];
    fifo_active = true;
    ok &= init_control(pfn_of(cb_pages[1]), 0, 1, NULL) == 0;
    cb[1] = (volatile struct evtchn_fifo_control_block *)cb_pages[1];
    ok &= add_array_page() == 0;
    evtchn_port_t p = bind_ipi_unmasked(1);
    bench_reply = bind_ipi_unmasked(0);
    irq_enable();
    check("fifo.bench_setup", ok && p && bench_reply, "setup failed");
    if (!ok || !p || !bench_reply)
        return;
    bench_port = p;
    unsigned got = 0;
    for (unsigned i = 0; i < n + 10; i++) {
        uint64_t t_send;
        if (!ping_and_wait(p, &bench_count, FIFO_WAIT_NS, &t_send))
            break;
        if (i >= 10)
            bench_samples[got++] = bench_t > t_send ? bench_t - t_send : 0;
    }
    check("fifo.bench_all_answered", got == n, "%u of %u", got, n);
    if (got) {
        sort_u64(bench_samples, got);
        info("send_to_upcall_median_ns", "%lu",
             (unsigned long)percentile_u64(bench_samples, got, 50));
        info("send_to_upcall_p99_ns", "%lu", (unsigned long)percentile_u64(bench_samples, got, 99));
    }
}

int guest_main(void)
{
    const char *mp = cmdline_get("max_port");
    if (mp)
        max_port = strtoul(mp, NULL, 10);
    long rc = evtchn_init(UPCALL_CALLBACK_VECTOR);
    check_eq("fifo.evtchn_init", rc, 0);
    if (rc)
        return 0;
    install_fifo_gate();
    nr_vcpus = smp_nr_vcpus();
    info("vcpus", "%u", nr_vcpus);
    if (nr_vcpus >= 2) {
        check_eq("fifo.ap_initialise", smp_initialise(1, ap_fn), 0);
        check_eq("fifo.ap_up", vcpu_up(1), 0);
    }

    const char *bn = cmdline_get("bench");
    if (bn) {
        bench((unsigned)strtoul(bn, NULL, 10));
        irq_disable();
        return 0;
    }
    test_errors_before_init();
    test_switch();
    if (fifo_active) {
        test_delivery();
        test_second_vcpu();
        test_array_limits();
    }
    info("upcalls", "%lu", (unsigned long)evtchn_cpu[0].upcalls);
    test_reset();
    irq_disable();
    return 0;
}
