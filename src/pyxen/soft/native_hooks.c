/*
 * The software CPU's hottest hooks, in C, so that they neither leave the engine nor enter
 * Python:
 * - OUT: answers the hypercalls whose result never changes and hands every other OUT to
 *   pyxen's Python hook (SoftVcpu._on_out), unchanged;
 * - RDTSC and RDTSCP: the guest's TSC, host monotonic time at the machine's rate from the
 *   machine's epoch (SoftVcpu.read_tsc's formula), and TSC_AUX for RDTSCP.
 *
 * Built by pyxen.soft.native with the host's C compiler on first use. It calls nothing in
 * libunicorn: it reads and writes the guest's registers in QEMU's CPUX86State, whose
 * address and layout pyxen.soft.native checks against the loaded engine before it installs
 * this hook (the engine has synced the registers there for the hook, and reloads them
 * after it, as for uc_reg_read/uc_reg_write from a hook).
 *
 * The rule is Vcpu.hypercall_inline's, for the calls HypercallTable.answer_always lists:
 * a call from CPL 0 (any other CPL goes to Python, which refuses it); Xen's calling
 * convention by CS.L (64-bit: number in rax, first argument in rdi; otherwise eax and
 * ebx); the result written to rax in the caller's width. A 64-bit EVTCHNOP_send goes to
 * native_send.c first, which sends on the IPI ports Python listed; what the event owes its
 * vCPU (an upcall raised, a kick) is Python's again, through `woken`.
 */
#include <stdint.h>
#include <time.h>

#include "native_walk.h"

#define MAX_ANSWERS 16
#define HF_CPL_MASK 3u
#define HF_CS64_MASK (1u << 15)
#define R_EAX 0
#define R_ECX 1
#define R_EDX 2
#define R_EBX 3
#define R_ESI 6
#define R_EDI 7
#define HYPERVISOR_event_channel_op 32
#define EVTCHNOP_send 4

typedef void (*out_hook_fn)(void *uc, uint32_t port, int size, uint32_t value, void *data);
typedef void (*woken_fn)(int vcpu, int what);

struct send_table;
int pyxen_send_ipi(struct send_table *t, const struct view *v, uint64_t arg, int *vcpu);

struct answer {
    uint32_t nr;        /* hypercall number */
    uint32_t reserved;
    uint64_t subop;     /* its first argument */
    uint64_t result;
};

struct out_hook {
    uint64_t *regs;             /* CPUX86State.regs: rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, ... */
    const uint32_t *hflags;     /* CPUX86State.hflags */
    out_hook_fn slow;           /* pyxen's hook for everything else */
    uint32_t port;              /* the hypercall page's port */
    uint32_t count;             /* answers in use; 0: every OUT goes to `slow` */
    uint64_t answered;          /* hypercalls answered here */
    struct answer answers[MAX_ANSWERS];
    /* EVTCHNOP_send on IPI ports (native_send.c); send NULL: none here */
    struct send_table *send;
    woken_fn woken;             /* Python: what the event owes vCPU `vcpu` */
    const uint64_t *cr;         /* CPUX86State.cr[0..4] */
    const uint64_t *efer;
    uint8_t *ram;               /* this engine's RAM view (SoftVcpu._sync_ram); NULL: none */
    uint64_t ram_start, ram_end;
};

/* 1 when native_send.c sent it (rax = 0, Xen's result for an IPI port). */
static int sent_natively(struct out_hook *h)
{
    if (!h->send || !(h->cr[0] & CR0_PG) || !(*h->efer & EFER_LMA) || (h->cr[4] & CR4_LA57))
        return 0;
    struct view v = { h->ram, h->ram_start, h->ram_end, h->cr[0], h->cr[3] };
    int vcpu = 0;
    int what = pyxen_send_ipi(h->send, &v, h->regs[R_ESI], &vcpu);
    if (what < 0)
        return 0;
    h->regs[R_EAX] = 0;
    h->answered++;
    if (what)
        h->woken(vcpu, what);
    return 1;
}

void pyxen_out_hook(void *uc, uint32_t port, int size, uint32_t value, void *data)
{
    struct out_hook *h = data;
    if (port == h->port && h->count && !(*h->hflags & HF_CPL_MASK)) {
        int wide = (*h->hflags & HF_CS64_MASK) != 0;
        uint32_t nr = (uint32_t)h->regs[R_EAX];
        uint64_t arg = wide ? h->regs[R_EDI] : (uint32_t)h->regs[R_EBX];
        for (uint32_t i = 0; i < h->count && i < MAX_ANSWERS; i++) {
            const struct answer *a = &h->answers[i];
            if (a->nr == nr && a->subop == arg) {
                h->regs[R_EAX] = wide ? a->result : (uint32_t)a->result;
                h->answered++;
                return;
            }
        }
        if (wide && nr == HYPERVISOR_event_channel_op && arg == EVTCHNOP_send
                && sent_natively(h))
            return;
    }
    h->slow(uc, port, size, value, 0);
}

/* One per machine: every vCPU's TSC reads (now - epoch_ns) * khz / 10^6 (SoftMachine). */
struct tsc_clock {
    int64_t epoch_ns;   /* CLOCK_MONOTONIC (Python's time.monotonic_ns) at TSC 0 */
    int64_t khz;
};

struct tsc_hook {
    uint64_t *regs;                 /* CPUX86State.regs */
    const uint64_t *tsc_aux;        /* CPUX86State's TSC_AUX MSR */
    const struct tsc_clock *clock;
};

static uint64_t guest_tsc(const struct tsc_clock *clock)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    __int128 now = (__int128)ts.tv_sec * 1000000000 + ts.tv_nsec;
    __int128 ticks = (now - clock->epoch_ns) * clock->khz;
    __int128 q = ticks / 1000000;
    if (ticks % 1000000 && ticks < 0)  /* floor, as Python's // */
        q -= 1;
    return (uint64_t)q;  /* a 64-bit counter: it wraps */
}

/* UC_HOOK_INSN for RDTSC / RDTSCP: 1 = the instruction is done (the engine skips it). */
int pyxen_rdtsc_hook(void *uc, void *data)
{
    struct tsc_hook *h = data;
    uint64_t tsc = guest_tsc(h->clock);
    h->regs[R_EAX] = (uint32_t)tsc;
    h->regs[R_EDX] = tsc >> 32;
    return 1;
}

int pyxen_rdtscp_hook(void *uc, void *data)
{
    struct tsc_hook *h = data;
    pyxen_rdtsc_hook(uc, data);
    h->regs[R_ECX] = (uint32_t)*h->tsc_aux;
    return 1;
}
