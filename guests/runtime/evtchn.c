/*
 * Event channels (2-level), the upcall handler, timers, blocking and SMP
 * bring-up for the guest kit. See evtchn.h for the model.
 *
 * Xen 4.17 sources the behaviour comes from:
 *   xen/common/event_channel.c, event_2l.c   ports, bitmaps, unmask
 *   xen/arch/x86/hvm/irq.c                   callback vector (level on upcall_pending)
 *   xen/arch/x86/hvm/hvm.c                   HVMOP_set_evtchn_upcall_vector (LAPIC, edge)
 *   xen/common/sched/core.c                  set_timer_op, block, poll
 *   xen/common/domain.c                      VCPUOP_* (timers, up/down, vcpu_info)
 *   xen/arch/x86/hvm/domain.c                arch_set_info_hvm_guest (AP context)
 */
#include "evtchn.h"

struct evtchn_cpu evtchn_cpu[MAX_VCPUS];
enum upcall_mode evtchn_upcall_mode;
bool evtchn_lapic_eoi;

static struct { evtchn_handler_t fn; void *arg; } handlers[NR_PORTS_2L];
static uint8_t port_cpu[NR_PORTS_2L];

/* AP stacks: smp_id() finds the current vCPU from %rsp. */
static uint8_t ap_stacks[MAX_VCPUS - 1][AP_STACK_SIZE] ALIGNED(AP_STACK_SIZE);
static ap_fn_t ap_fns[MAX_VCPUS];
static struct { uint16_t limit; uint64_t base; } __attribute__((packed)) idtr_saved;

#define LAPIC_BASE 0xfee00000ULL
#define LAPIC_EOI  0xb0
#define LAPIC_TPR  0x80
#define LAPIC_SVR  0xf0
#define MSR_EFER   0xc0000080

extern char evtchn_upcall_entry[], ap_entry64[];

/* ---------------------------------------------------------------- */
unsigned smp_id(void)
{
    uint64_t sp;
    asm volatile("movq %%rsp, %0" : "=r"(sp));
    uint64_t base = (uint64_t)(uintptr_t)ap_stacks;
    if (sp > base && sp <= base + sizeof(ap_stacks))
        return 1 + (unsigned)((sp - base - 1) / AP_STACK_SIZE);
    return 0;
}

static inline bool bit_test_and_clear(volatile xen_ulong_t *base, unsigned long nr)
{
    bool old;
    asm volatile("lock btrq %2, %1; setc %0"
                 : "=q"(old), "+m"(*(volatile long *)base) : "r"(nr) : "memory", "cc");
    return old;
}

static inline void bit_set(volatile xen_ulong_t *base, unsigned long nr)
{
    asm volatile("lock btsq %1, %0" : "+m"(*(volatile long *)base) : "r"(nr) : "memory", "cc");
}

static inline void bit_clear(volatile xen_ulong_t *base, unsigned long nr)
{
    asm volatile("lock btrq %1, %0" : "+m"(*(volatile long *)base) : "r"(nr) : "memory", "cc");
}

static inline bool bit_test(const volatile xen_ulong_t *base, unsigned long nr)
{
    return (base[nr / 64] >> (nr % 64)) & 1;
}

static inline xen_ulong_t xchg_ulong(volatile xen_ulong_t *p, xen_ulong_t v)
{
    asm volatile("xchgq %0, %1" : "+r"(v), "+m"(*p) :: "memory");
    return v;
}

static inline unsigned ctz64(uint64_t v)
{
    uint64_t r;
    asm("bsfq %1, %0" : "=r"(r) : "rm"(v) : "cc");
    return (unsigned)r;
}

/* ---------------------------------------------------------------- */
uint64_t now_ns(void)
{
    if (!shared_info)
        return 0;
    unsigned cpu = smp_id();
    volatile struct vcpu_info *vi = evtchn_cpu[cpu].vi;
    if (vi && vi->time.version != 0)
        return xen_system_time_ns((const struct vcpu_time_info *)&vi->time);
    return xen_system_time_ns(&shared_info->vcpu_info[0].time);
}

void evtchn_set_handler(evtchn_port_t port, evtchn_handler_t fn, void *arg)
{
    if (port >= NR_PORTS_2L)
        return;
    handlers[port].arg = arg;
    barrier();
    handlers[port].fn = fn;
}

void evtchn_clear_handler(evtchn_port_t port)
{
    if (port < NR_PORTS_2L)
        handlers[port].fn = NULL;
}

void evtchn_set_cpu(evtchn_port_t port, unsigned cpu)
{
    if (port < NR_PORTS_2L)
        port_cpu[port] = (uint8_t)cpu;
}

unsigned evtchn_get_cpu(evtchn_port_t port)
{
    return port < NR_PORTS_2L ? port_cpu[port] : 0;
}

void evtchn_mask(evtchn_port_t port) { bit_set(shared_info->evtchn_mask, port); }
void evtchn_unmask_local(evtchn_port_t port) { bit_clear(shared_info->evtchn_mask, port); }
bool evtchn_is_masked(evtchn_port_t port) { return bit_test(shared_info->evtchn_mask, port); }
bool evtchn_is_pending(evtchn_port_t port) { return bit_test(shared_info->evtchn_pending, port); }
void evtchn_clear_pending(evtchn_port_t port) { bit_clear(shared_info->evtchn_pending, port); }

bool evtchn_sel_is_set(unsigned cpu, evtchn_port_t port)
{
    volatile struct vcpu_info *vi = evtchn_cpu[cpu].vi;
    return vi && ((vi->evtchn_pending_sel >> (port / 64)) & 1);
}

/* ---------------------------------------------------------------- */
static void lapic_write(unsigned reg, uint32_t v)
{
    *(volatile uint32_t *)(uintptr_t)(LAPIC_BASE + reg) = v;
}

/* Called from irq.S with interrupts off, on the interrupted stack. */
void evtchn_do_upcall(void)
{
    unsigned cpu = smp_id();
    struct evtchn_cpu *c = &evtchn_cpu[cpu];
    volatile struct vcpu_info *vi = c->vi;
    volatile shared_info_t *s = shared_info;

    c->upcalls++;
    if (vi && s) {
        do {
            /* Clear the flag first, then look (Xen's contract, xen.h). */
            vi->evtchn_upcall_pending = 0;
            xen_ulong_t l1 = xchg_ulong(&vi->evtchn_pending_sel, 0);
            while (l1) {
                unsigned i = ctz64(l1);
                l1 &= l1 - 1;
                xen_ulong_t l2 = s->evtchn_pending[i] & ~s->evtchn_mask[i];
                while (l2) {
                    unsigned j = ctz64(l2);
                    l2 &= l2 - 1;
                    evtchn_port_t port = i * 64 + j;
                    if (port_cpu[port] != cpu)
                        continue;       /* another vCPU's port: its own upcall handles it */
                    if (!bit_test_and_clear(s->evtchn_pending, port))
                        continue;
                    evtchn_handler_t fn = handlers[port].fn;
                    c->events++;
                    if (fn)
                        fn(port, handlers[port].arg);
                    else
                        c->spurious++;
                }
            }
        } while (vi->evtchn_upcall_pending);
    }
    if (evtchn_upcall_mode == UPCALL_PERCPU_VECTOR && evtchn_lapic_eoi)
        lapic_write(LAPIC_EOI, 0);
}

static void default_timer_handler(evtchn_port_t port, void *arg)
{
    struct evtchn_cpu *c = arg;
    c->timer_events++;
    c->last_timer_ns = now_ns();
}

/* ---------------------------------------------------------------- */
long evtchn_alloc_unbound(domid_t dom, domid_t remote, evtchn_port_t *port)
{
    struct evtchn_alloc_unbound a = { .dom = dom, .remote_dom = remote };
    long rc = HYPERVISOR_event_channel_op(EVTCHNOP_alloc_unbound, &a);
    if (rc == 0) {
        if (port)
            *port = a.port;
        evtchn_set_cpu(a.port, 0);
    }
    return rc;
}

long evtchn_bind_interdomain(domid_t remote_dom, evtchn_port_t remote_port, evtchn_port_t *port)
{
    struct evtchn_bind_interdomain b = { .remote_dom = remote_dom, .remote_port = remote_port };
    long rc = HYPERVISOR_event_channel_op(EVTCHNOP_bind_interdomain, &b);
    if (rc == 0) {
        if (port)
            *port = b.local_port;
        evtchn_set_cpu(b.local_port, 0);
    }
    return rc;
}

long evtchn_bind_virq(uint32_t virq, uint32_t vcpu, evtchn_port_t *port)
{
    struct evtchn_bind_virq b = { .virq = virq, .vcpu = vcpu };
    long rc = HYPERVISOR_event_channel_op(EVTCHNOP_bind_virq, &b);
    if (rc == 0) {
        if (port)
            *port = b.port;
        evtchn_set_cpu(b.port, vcpu);
    }
    return rc;
}

long evtchn_bind_ipi(uint32_t vcpu, evtchn_port_t *port)
{
    struct evtchn_bind_ipi b = { .vcpu = vcpu };
    long rc = HYPERVISOR_event_channel_op(EVTCHNOP_bind_ipi, &b);
    if (rc == 0) {
        if (port)
            *port = b.port;
        evtchn_set_cpu(b.port, vcpu);
    }
    return rc;
}

long evtchn_bind_pirq(uint32_t pirq, uint32_t flags, evtchn_port_t *port)
{
    struct evtchn_bind_pirq b = { .pirq = pirq, .flags = flags };
    long rc = HYPERVISOR_event_channel_op(EVTCHNOP_bind_pirq, &b);
    if (rc == 0) {
        if (port)
            *port = b.port;
        evtchn_set_cpu(b.port, 0);
    }
    return rc;
}

long evtchn_close(evtchn_port_t port)
{
    struct evtchn_close c = { .port = port };
    long rc = HYPERVISOR_event_channel_op(EVTCHNOP_close, &c);
    if (rc == 0 && port < NR_PORTS_2L) {
        handlers[port].fn = NULL;
        port_cpu[port] = 0;     /* Xen: evtchn_free resets notify_vcpu_id to 0 */
        for (unsigned i = 0; i < MAX_VCPUS; i++)
            if (evtchn_cpu[i].timer_port == port)
                evtchn_cpu[i].timer_port = 0;
    }
    return rc;
}

long evtchn_send(evtchn_port_t port)
{
    struct evtchn_send s = { .port = port };
    return HYPERVISOR_event_channel_op(EVTCHNOP_send, &s);
}

long evtchn_status(domid_t dom, evtchn_port_t port, struct evtchn_status *st)
{
    memset(st, 0, sizeof(*st));
    st->dom = dom;
    st->port = port;
    return HYPERVISOR_event_channel_op(EVTCHNOP_status, st);
}

long evtchn_bind_vcpu(evtchn_port_t port, uint32_t vcpu)
{
    struct evtchn_bind_vcpu b = { .port = port, .vcpu = vcpu };
    long rc = HYPERVISOR_event_channel_op(EVTCHNOP_bind_vcpu, &b);
    if (rc == 0)
        evtchn_set_cpu(port, vcpu);
    return rc;
}

long evtchn_unmask(evtchn_port_t port)
{
    struct evtchn_unmask u = { .port = port };
    return HYPERVISOR_event_channel_op(EVTCHNOP_unmask, &u);
}

long evtchn_reset(domid_t dom)
{
    struct evtchn_reset r = { .dom = dom };
    bool self = dom == DOMID_SELF || (boot.domid_present && dom == boot.domid);
    if (self)
        hvc_evtchn_reset(false);   /* hvc0: drain the ring while its port is there */
    long rc = HYPERVISOR_event_channel_op(EVTCHNOP_reset, &r);
    if (rc == 0 && self)
        hvc_evtchn_reset(true);
    if (rc == 0) {
        /* Every port was closed (Xen: evtchn_reset -> evtchn_close on each). */
        memset(handlers, 0, sizeof(handlers));
        memset(port_cpu, 0, sizeof(port_cpu));
        for (unsigned i = 0; i < MAX_VCPUS; i++)
            evtchn_cpu[i].timer_port = 0;
    }
    return rc;
}

/* ---------------------------------------------------------------- */
long vcpu_set_singleshot(unsigned vcpu, uint64_t abs_ns, uint32_t flags)
{
    struct vcpu_set_singleshot_timer t = { .timeout_abs_ns = abs_ns, .flags = flags };
    return HYPERVISOR_vcpu_op(VCPUOP_set_singleshot_timer, vcpu, &t);
}

long vcpu_stop_singleshot(unsigned vcpu)
{
    return HYPERVISOR_vcpu_op(VCPUOP_stop_singleshot_timer, vcpu, NULL);
}

long vcpu_set_periodic(unsigned vcpu, uint64_t period_ns)
{
    struct vcpu_set_periodic_timer t = { .period_ns = period_ns };
    return HYPERVISOR_vcpu_op(VCPUOP_set_periodic_timer, vcpu, &t);
}

long vcpu_stop_periodic(unsigned vcpu)
{
    return HYPERVISOR_vcpu_op(VCPUOP_stop_periodic_timer, vcpu, NULL);
}

/* ---------------------------------------------------------------- */
void block_until(uint64_t deadline_ns)
{
    uint64_t f = irq_save();
    while (now_ns() < deadline_ns) {
        HYPERVISOR_set_timer_op(deadline_ns);
        safe_halt_cli();
    }
    irq_restore(f);
}

bool wait_for_count(volatile uint64_t *p, uint64_t target, uint64_t deadline_ns)
{
    uint64_t f = irq_save();
    bool ok;
    for (;;) {
        if (*p >= target) {
            ok = true;
            break;
        }
        if (now_ns() >= deadline_ns) {
            ok = false;
            break;
        }
        HYPERVISOR_set_timer_op(deadline_ns);
        safe_halt_cli();
    }
    irq_restore(f);
    return ok;
}

long sched_poll(const evtchn_port_t *ports, unsigned n, uint64_t timeout_ns)
{
    struct sched_poll p = { .nr_ports = n, .timeout = timeout_ns };
    set_xen_guest_handle(p.ports, (evtchn_port_t *)ports);
    return HYPERVISOR_sched_op(SCHEDOP_poll, &p);
}

/* ---------------------------------------------------------------- */
static void install_gate(void)
{
    asm volatile("sidt %0" : "=m"(idtr_saved));
    install_interrupt_gate(EVTCHN_VECTOR, evtchn_upcall_entry);
}

static long set_percpu_vector(unsigned cpu)
{
    struct xen_hvm_evtchn_upcall_vector uv = { .vcpu = cpu, .vector = EVTCHN_VECTOR };
    return HYPERVISOR_hvm_op(HVMOP_set_evtchn_upcall_vector, &uv);
}

long evtchn_init_cpu(unsigned cpu)
{
    struct evtchn_cpu *c = &evtchn_cpu[cpu];
    long rc;
    if (!c->vi)
        c->vi = &shared_info->vcpu_info[cpu];
    if (evtchn_upcall_mode == UPCALL_PERCPU_VECTOR) {
        rc = set_percpu_vector(cpu);
        if (rc)
            return rc;
        if (evtchn_lapic_eoi) {
            lapic_write(LAPIC_TPR, 0);
            lapic_write(LAPIC_SVR, 0x100 | 0xff);   /* software-enable the xAPIC */
        }
    }
    if (!c->timer_port) {
        evtchn_port_t p;
        rc = evtchn_bind_virq(VIRQ_TIMER, cpu, &p);
        if (rc)
            return rc;
        evtchn_set_handler(p, default_timer_handler, c);
        c->timer_port = p;
    }
    c->online = true;
    return 0;
}

long evtchn_init(enum upcall_mode mode)
{
    long rc = map_shared_info();
    if (rc)
        return rc;
    irq_disable();
    install_gate();
    evtchn_upcall_mode = mode;
    if (mode == UPCALL_CALLBACK_VECTOR) {
        rc = hvm_set_param(DOMID_SELF, HVM_PARAM_CALLBACK_IRQ,
                           ((uint64_t)HVM_PARAM_CALLBACK_TYPE_VECTOR << 56) | EVTCHN_VECTOR);
        if (rc)
            return rc;
    } else {
        /* A real Xen HVM vCPU has a LAPIC that must be enabled and EOI'd;
         * pyxen advertises none (CPUID.1:EDX.APIC = 0) and needs neither. */
        uint32_t a, b, cc, d;
        cpuid(1, 0, &a, &b, &cc, &d);
        if (d & (1u << 9)) {
            if (map_4k(LAPIC_BASE, LAPIC_BASE, PTE_P | PTE_W | 0x18 /* PCD|PWT */) == 0)
                evtchn_lapic_eoi = true;
        }
    }
    rc = evtchn_init_cpu(0);
    if (rc)
        return rc;
    irq_enable();
    return 0;
}

long evtchn_rebind_timer(void)
{
    unsigned cpu = smp_id();
    evtchn_cpu[cpu].timer_port = 0;
    return evtchn_init_cpu(cpu);
}

/* ---------------------------------------------------------------- */
static inline uint64_t read_cr0(void) { uint64_t v; asm volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static inline uint64_t read_cr4(void) { uint64_t v; asm volatile("mov %%cr4, %0" : "=r"(v)); return v; }

void smp_make_context(unsigned cpu, ap_fn_t fn, vcpu_hvm_context_t *ctx)
{
    memset(ctx, 0, sizeof(*ctx));
    ctx->mode = VCPU_HVM_MODE_64B;
    struct vcpu_hvm_x86_64 *r = &ctx->cpu_regs.x86_64;
    r->rip = (uint64_t)(uintptr_t)ap_entry64;
    r->rsp = cpu >= 1 && cpu < MAX_VCPUS ? (uint64_t)(uintptr_t)ap_stacks[cpu - 1] + AP_STACK_SIZE : 0;
    r->rdi = cpu;
    r->rflags = 0x2;
    r->cr0 = read_cr0();
    r->cr3 = read_cr3();
    r->cr4 = read_cr4();
    r->efer = rdmsr(MSR_EFER);
    if (cpu < MAX_VCPUS)
        ap_fns[cpu] = fn;
}

long smp_initialise(unsigned cpu, ap_fn_t fn)
{
    vcpu_hvm_context_t ctx;
    if (cpu == 0 || cpu >= MAX_VCPUS)
        return EINVAL_;
    if (!idtr_saved.base)
        asm volatile("sidt %0" : "=m"(idtr_saved));
    smp_make_context(cpu, fn, &ctx);
    return HYPERVISOR_vcpu_op(VCPUOP_initialise, cpu, &ctx);
}

/* C entry of an AP (from ap_entry64, interrupts off). */
void ap_main(unsigned cpu)
{
    asm volatile("lidt %0" :: "m"(idtr_saved));
    if (cpu < MAX_VCPUS) {
        long rc = evtchn_init_cpu(cpu);
        if (rc)
            printf("INFO ap%u_evtchn_init_failed %ld\n", cpu, rc);
        irq_enable();
        if (ap_fns[cpu])
            ap_fns[cpu](cpu);
    }
    /* Park: block with interrupts on, forever. */
    for (;;)
        safe_halt_cli();
}

long vcpu_up(unsigned cpu) { return HYPERVISOR_vcpu_op(VCPUOP_up, cpu, NULL); }
long vcpu_down(unsigned cpu) { return HYPERVISOR_vcpu_op(VCPUOP_down, cpu, NULL); }
long vcpu_is_up(unsigned cpu) { return HYPERVISOR_vcpu_op(VCPUOP_is_up, cpu, NULL); }
long vcpu_runstate(unsigned cpu, struct vcpu_runstate_info *r)
{
    return HYPERVISOR_vcpu_op(VCPUOP_get_runstate_info, cpu, r);
}

unsigned smp_nr_vcpus(void)
{
    unsigned n = 1;
    while (n < 4096 && vcpu_is_up(n) >= 0)
        n++;
    return n;
}

/* ---------------------------------------------------------------- */
void sort_u64(uint64_t *v, unsigned n)
{
    /* Shell sort (Ciura gaps): short, no recursion, fine for a few thousand. */
    static const unsigned gaps[] = { 701, 301, 132, 57, 23, 10, 4, 1 };
    for (unsigned g = 0; g < ARRAY_SIZE(gaps); g++) {
        unsigned gap = gaps[g];
        for (unsigned i = gap; i < n; i++) {
            uint64_t t = v[i];
            unsigned j = i;
            while (j >= gap && v[j - gap] > t) {
                v[j] = v[j - gap];
                j -= gap;
            }
            v[j] = t;
        }
    }
}

uint64_t percentile_u64(const uint64_t *sorted, unsigned n, unsigned pct)
{
    if (!n)
        return 0;
    unsigned idx = (unsigned)(((uint64_t)pct * (n - 1) + 50) / 100);
    return sorted[idx < n ? idx : n - 1];
}

uint64_t ping_and_wait(evtchn_port_t port, volatile uint64_t *counter, uint64_t timeout_ns,
                       uint64_t *t_send)
{
    uint64_t before = *counter;
    irq_disable();
    uint64_t t0 = now_ns();
    evtchn_send(port);
    uint64_t limit = t0 + timeout_ns;
    while (*counter == before && now_ns() < limit)
        safe_halt_cli();
    uint64_t t1 = now_ns();
    irq_enable();
    *t_send = t0;
    return *counter == before ? 0 : t1 - t0;
}
