/*
 * Event channels, upcalls, timers, blocking and SMP bring-up for the guest
 * kit (runtime/evtchn.c, runtime/irq.S).
 *
 * Only guests that call evtchn_init() use any of this; the others never
 * touch the IDT vector, HVM_PARAM_CALLBACK_IRQ or the timers.
 *
 * Model (Xen 4.17, 2-level ABI, xen/common/event_2l.c):
 *   shared_info.evtchn_pending[64] / evtchn_mask[64]   one bit per port
 *   vcpu_info.evtchn_pending_sel                        one bit per word
 *   vcpu_info.evtchn_upcall_pending                     "look at the above"
 * The upcall is an interrupt vector (EVTCHN_VECTOR): either the global
 * HVM_PARAM_CALLBACK_IRQ "vector" callback (level: injected whenever the
 * vCPU's evtchn_upcall_pending is set and EFLAGS.IF=1, no EOI;
 * xen/arch/x86/hvm/irq.c hvm_vcpu_has_pending_irq) or a per-vCPU
 * HVMOP_set_evtchn_upcall_vector (through the LAPIC: edge, EOI'd).
 *
 * The upcall handler walks the bitmaps as Linux/Mini-OS do and calls the
 * handler registered for each pending, unmasked port that is bound to the
 * current vCPU (ports of other vCPUs are left for their own upcall).
 */
#ifndef PYXEN_GUEST_EVTCHN_H
#define PYXEN_GUEST_EVTCHN_H
#include "runtime.h"
#include <xen/hvm/hvm_vcpu.h>

#define EVTCHN_VECTOR   0xf3    /* the upcall vector (>= 0x10, Xen's minimum) */
#define MAX_VCPUS       8       /* vCPUs this kit can bring up */
#define NR_PORTS_2L     (sizeof(xen_ulong_t) * 8 * sizeof(xen_ulong_t) * 8) /* 4096 */
#define AP_STACK_SIZE   16384

#define ETIME_     (-XEN_ETIME)
/* Xen's internal continuation of EVTCHNOP_reset (public header: __XEN__
 * only); do_event_channel_op still dispatches it when a guest passes 14. */
#ifndef EVTCHNOP_reset_cont
#define EVTCHNOP_reset_cont 14
#endif

typedef void (*evtchn_handler_t)(evtchn_port_t port, void *arg);

enum upcall_mode {
    UPCALL_CALLBACK_VECTOR,     /* HVM_PARAM_CALLBACK_IRQ = (2 << 56) | vector */
    UPCALL_PERCPU_VECTOR,       /* HVMOP_set_evtchn_upcall_vector per vCPU */
};

/* Per-vCPU state of the library. */
struct evtchn_cpu {
    volatile struct vcpu_info *vi;  /* this vCPU's vcpu_info (shared_info slot or registered) */
    evtchn_port_t timer_port;       /* VIRQ_TIMER bound by the library (0: none) */
    volatile uint64_t upcalls;      /* upcall entries */
    volatile uint64_t events;       /* handlers called */
    volatile uint64_t timer_events; /* VIRQ_TIMER events seen by the default handler */
    volatile uint64_t last_timer_ns;/* pvclock time of the last VIRQ_TIMER (default handler) */
    volatile uint64_t spurious;     /* pending ports with no handler */
    volatile bool online;           /* the library runs on this vCPU */
};
extern struct evtchn_cpu evtchn_cpu[MAX_VCPUS];
extern enum upcall_mode evtchn_upcall_mode;
extern bool evtchn_lapic_eoi;       /* EOI the xAPIC after a per-vCPU-vector upcall */

/* ---- set-up ---- */
/* Map shared_info, install the IDT gate, choose the upcall mode, bind
 * VIRQ_TIMER for vCPU 0 (default handler: counts), enable interrupts (sti).
 * Returns 0 or a negative Xen errno from the first failing step. */
long evtchn_init(enum upcall_mode mode);
/* Per-vCPU part (APs call it from smp_start's entry path). */
long evtchn_init_cpu(unsigned cpu);
/* Bind VIRQ_TIMER again for the current vCPU (after EVTCHNOP_reset or a
 * close of the library's timer port). */
long evtchn_rebind_timer(void);

/* ---- CPU / interrupts ---- */
unsigned smp_id(void);            /* current vCPU (from the stack pointer) */
static inline void irq_disable(void) { asm volatile("cli" ::: "memory"); }
static inline void irq_enable(void) { asm volatile("sti" ::: "memory"); }
static inline bool irqs_enabled(void)
{
    uint64_t f;
    asm volatile("pushfq; popq %0" : "=r"(f) :: "memory");
    return (f & 0x200) != 0;
}
static inline uint64_t irq_save(void)
{
    uint64_t f;
    asm volatile("pushfq; popq %0; cli" : "=r"(f) :: "memory");
    return f;
}
static inline void irq_restore(uint64_t f)
{
    if (f & 0x200)
        asm volatile("sti" ::: "memory");
}
/* sti; hlt -- the pair is atomic w.r.t. interrupts (STI shadow). Returns
 * with interrupts disabled again. */
static inline void safe_halt_cli(void) { asm volatile("sti; hlt; cli" ::: "memory"); }
static inline void cpu_relax(void) { asm volatile("pause" ::: "memory"); }

/* ---- time ---- */
uint64_t now_ns(void);            /* pvclock of the current vCPU (vcpu 0's if unset) */

/* ---- handlers ---- */
void evtchn_set_handler(evtchn_port_t port, evtchn_handler_t fn, void *arg);
void evtchn_clear_handler(evtchn_port_t port);
/* Which vCPU the library expects a port's events on (bind_* record it). */
void evtchn_set_cpu(evtchn_port_t port, unsigned cpu);
unsigned evtchn_get_cpu(evtchn_port_t port);

/* ---- 2-level bitmap helpers (direct shared_info access) ---- */
void evtchn_mask(evtchn_port_t port);
void evtchn_unmask_local(evtchn_port_t port);   /* clear the mask bit only */
bool evtchn_is_masked(evtchn_port_t port);
bool evtchn_is_pending(evtchn_port_t port);
void evtchn_clear_pending(evtchn_port_t port);
bool evtchn_sel_is_set(unsigned cpu, evtchn_port_t port);

/* ---- hypercall wrappers: 0/port on success, negative Xen errno ---- */
long evtchn_alloc_unbound(domid_t dom, domid_t remote, evtchn_port_t *port);
long evtchn_bind_interdomain(domid_t remote_dom, evtchn_port_t remote_port, evtchn_port_t *port);
long evtchn_bind_virq(uint32_t virq, uint32_t vcpu, evtchn_port_t *port);
long evtchn_bind_ipi(uint32_t vcpu, evtchn_port_t *port);
long evtchn_bind_pirq(uint32_t pirq, uint32_t flags, evtchn_port_t *port);
long evtchn_close(evtchn_port_t port);
long evtchn_send(evtchn_port_t port);
/* Send on `port`, then sleep (sti;hlt) until *counter changes or timeout_ns passes.
 * *t_send gets the send time; returns the round trip in ns, 0 if nothing answered. */
uint64_t ping_and_wait(evtchn_port_t port, volatile uint64_t *counter, uint64_t timeout_ns,
                       uint64_t *t_send);
long evtchn_status(domid_t dom, evtchn_port_t port, struct evtchn_status *st);
long evtchn_bind_vcpu(evtchn_port_t port, uint32_t vcpu);
long evtchn_unmask(evtchn_port_t port);         /* EVTCHNOP_unmask */
long evtchn_reset(domid_t dom);

/* ---- timers ---- */
long vcpu_set_singleshot(unsigned vcpu, uint64_t abs_ns, uint32_t flags);
long vcpu_stop_singleshot(unsigned vcpu);
long vcpu_set_periodic(unsigned vcpu, uint64_t period_ns);
long vcpu_stop_periodic(unsigned vcpu);

/* ---- blocking ---- */
/* Sleep (sti;hlt, woken by events) until system time `deadline_ns`, using
 * set_timer_op and the library's VIRQ_TIMER port. Events keep being
 * delivered meanwhile. Requires evtchn_init on this vCPU. */
void block_until(uint64_t deadline_ns);
/* Sleep until *p >= target or the deadline passes; true if reached. */
bool wait_for_count(volatile uint64_t *p, uint64_t target, uint64_t deadline_ns);
/* SCHEDOP_poll on a port list with an absolute timeout (0: none). */
long sched_poll(const evtchn_port_t *ports, unsigned n, uint64_t timeout_ns);
/* SCHEDOP_block (enables event delivery in Xen's sense). */
static inline long sched_block(void) { return HYPERVISOR_sched_op(SCHEDOP_block, NULL); }

/* ---- SMP ---- */
typedef void (*ap_fn_t)(unsigned cpu);
/* Fill a 64-bit vcpu_hvm_context that starts `cpu` in the kit's AP entry
 * (own stack, vCPU 0's cr0/cr3/cr4/efer), which loads the GDT/IDT, runs
 * evtchn_init_cpu(cpu) and then fn(cpu). */
void smp_make_context(unsigned cpu, ap_fn_t fn, vcpu_hvm_context_t *ctx);
long smp_initialise(unsigned cpu, ap_fn_t fn);   /* VCPUOP_initialise */
long vcpu_up(unsigned cpu);
long vcpu_down(unsigned cpu);
long vcpu_is_up(unsigned cpu);
long vcpu_runstate(unsigned cpu, struct vcpu_runstate_info *r);
/* The number of vCPUs the domain has, probed with VCPUOP_is_up (-ENOENT
 * past the last one). */
unsigned smp_nr_vcpus(void);

/* ---- small statistics helpers ---- */
void sort_u64(uint64_t *v, unsigned n);
uint64_t percentile_u64(const uint64_t *sorted, unsigned n, unsigned pct);
#endif
