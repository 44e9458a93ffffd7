/*
 * cpu_faults: exceptions within exceptions, checked from inside (issue 10, items 1 and 6).
 *
 * - cpu_faults.pf_chain: several #PF in a row, each handled by a handler that maps the page
 *   and returns (Unicorn once turned the second into #DF and the third into a silent
 *   triple fault); error codes and CR2 of each.
 * - cpu_faults.pf_while_delivering: #UD whose IST stack is not mapped: the #PF raised while
 *   pushing its frame is delivered serially (benign, then #PF), with CR2 = the first push
 *   and error code W; once mapped, the #UD itself arrives at the ud2.
 * - cpu_faults.double_fault_ist: a #PF whose own IST stack is not mapped: #PF during #PF is a
 *   #DF, delivered on the #DF gate's IST stack; the #DF handler reports and recovers (the
 *   runtime's kernel-fault recovery). cpu_faults.double_fault_cr2: CR2 names the second
 *   #PF (each #PF loads CR2, also one that becomes a #DF).
 * - cpu_faults.int_gate_dpl_{int3,intn}: from ring 3, int3 and int $0x21 through DPL-0 gates
 *   raise #GP(vector*8+2), reported at the int instruction (a fault, not a trap).
 * - cpu_faults.ts_short_tss: a TSS whose limit ends before IST1: #UD through an IST-1 gate
 *   raises #TS(TSS selector | EXT) at the ud2.
 * - cpu_faults.icebp: ICEBP (0xF1) is a #DB trap, reported after the instruction.
 * - cpu_faults.ss_{rbp,push}: a non-canonical stack reference (an RBP-based operand, a push
 *   with a non-canonical RSP) is #SS(0), not #GP.
 *
 * cmdline: only=GROUP runs one group of checks (pf_chain, pf_while_delivering, double_fault,
 * int_gate_dpl, ts_short_tss, icebp, ss_noncanonical); by default all run, in that order.
 *
 * INFO keys: cpu_faults_pf_errors (the error codes seen by pf_chain).
 */
#include "guest.h"

struct gate {
    uint16_t off_lo, sel;
    uint8_t ist, type;
    uint16_t off_mid;
    uint32_t off_hi, zero;
} __attribute__((packed));

extern uint64_t gdt_tss[2];
extern uint64_t trap_stub_int80;

/* The areas the tests map and unmap: outside the boot identity map (the first GiB). */
#define PF_AREA     0x40200000UL   /* pf_chain: pages mapped by the #PF handler */
#define IST_HOLE    0x40400000UL   /* an IST stack page that is not mapped */
#define NONCANON    0x8000000000000000UL

static uint8_t frames[8][4096] ALIGNED(4096);
static unsigned frames_used;
static uint8_t df_stack[8192] ALIGNED(16);
static uint8_t ss_stack[8192] ALIGNED(16);
static uint8_t user_stack[16384] ALIGNED(16);

static volatile unsigned pf_count;
static volatile uint64_t pf_cr2[8], pf_err[8], pf_rip[8];

static struct gate *idt(void)
{
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) r;
    asm volatile("sidt %0" : "=m"(r));
    return (struct gate *)(uintptr_t)r.base;
}

static uint8_t *tss(void)
{
    uint64_t d = gdt_tss[0];
    uint64_t base = ((d >> 16) & 0xffffff) | (((d >> 56) & 0xff) << 24) | (gdt_tss[1] << 32);
    return (uint8_t *)(uintptr_t)base;
}

static void set_ist_stack(int n, void *top)
{
    uint64_t v = (uint64_t)(uintptr_t)top;
    memcpy(tss() + 0x24 + 8 * (n - 1), &v, 8);
}

static void set_handler(int vec, void *handler)
{
    uint64_t h = (uint64_t)(uintptr_t)handler;
    struct gate *g = &idt()[vec];
    g->off_lo = h & 0xffff;
    g->off_mid = (h >> 16) & 0xffff;
    g->off_hi = h >> 32;
    g->sel = KCS64;
    g->zero = 0;
}

static inline uint64_t read_cr2(void)
{
    uint64_t v;
    asm volatile("mov %%cr2, %0" : "=r"(v));
    return v;
}

/* Reload TR after changing the TSS descriptor's limit (ltr needs it not busy). */
static void set_tss_limit(unsigned limit)
{
    uint64_t d = gdt_tss[0];
    d &= ~(0xffffULL | (0xfULL << 48) | (0x2ULL << 40));   /* limit, busy bit */
    d |= (limit & 0xffff) | ((uint64_t)((limit >> 16) & 0xf) << 48);
    gdt_tss[0] = d;
    asm volatile("ltr %w0" :: "r"(TSS_SEL) : "memory");
}

/* ---- the #PF handler that maps the faulting page and returns ---- */
void pf_map_handler(uint64_t error, uint64_t rip)
{
    unsigned n = pf_count;
    uint64_t cr2 = read_cr2();
    if (n < ARRAY_SIZE(pf_cr2)) {
        pf_cr2[n] = cr2;
        pf_err[n] = error;
        pf_rip[n] = rip;
    }
    pf_count = n + 1;
    if (frames_used < ARRAY_SIZE(frames) && n < 16)
        map_4k(cr2 & ~0xfffUL, virt_to_phys(frames[frames_used++]), PTE_P | PTE_W);
    else
        shutdown(SHUTDOWN_crash);   /* a runaway #PF loop: end the test */
}

void pf_stub(void);
asm(".pushsection .text\n"
    ".p2align 4\n"
    "pf_stub:\n"
    "  pushq %rax; pushq %rcx; pushq %rdx; pushq %rsi; pushq %rdi\n"
    "  pushq %r8; pushq %r9; pushq %r10; pushq %r11\n"
    "  movq 72(%rsp), %rdi\n"        /* error code */
    "  movq 80(%rsp), %rsi\n"        /* rip */
    "  subq $8, %rsp\n"
    "  call pf_map_handler\n"
    "  addq $8, %rsp\n"
    "  popq %r11; popq %r10; popq %r9; popq %r8\n"
    "  popq %rdi; popq %rsi; popq %rdx; popq %rcx; popq %rax\n"
    "  addq $8, %rsp\n"
    "  iretq\n"
    ".popsection\n");

/* ---- code whose addresses the checks need ---- */
extern char ud2_insn[], ud2_resume[], ts_insn[], ts_resume[], icebp_insn[], icebp_after[];
extern char df_resume[], ss_rbp_insn[], ss_rbp_resume[], ss_push_insn[], ss_push_resume[];
extern char user_int21_insn[], user_int3_insn[];
void user_int21(void);
void user_int3(void);
asm(".pushsection .text\n"
    "user_int21:\n"
    "  movq $0x2121, %rax\n"
    "user_int21_insn:\n"
    "  int $0x21\n"
    "  jmp .\n"
    "user_int3:\n"
    "  movq $0x0303, %rax\n"
    "user_int3_insn:\n"
    "  int3\n"
    "  jmp .\n"
    ".popsection\n");

static void pf_chain(void)
{
    static const int writes[] = { 1, 1, 1, 0, 1 };   /* 4 writes and a read: 5 #PF */
    char errors[64] = "";
    int at = 0;
    bool ok = true;

    set_handler(14, pf_stub);
    pf_count = 0;
    for (unsigned i = 0; i < ARRAY_SIZE(writes); i++) {
        volatile uint64_t *p = (volatile uint64_t *)(PF_AREA + i * 0x1000 + 8 * i);
        if (writes[i])
            *p = 0x1234 + i;
        else
            (void)*p;
        bool seen = pf_count == i + 1 && pf_cr2[i] == (uint64_t)(uintptr_t)p &&
                    pf_err[i] == (writes[i] ? 2u : 0u);
        if (!seen)
            test_fail("cpu_faults.pf_chain", "#PF %u: count %u cr2 %#lx (want %p) error %#lx",
                      i + 1, pf_count, pf_cr2[i], (void *)p, pf_err[i]);
        ok = ok && seen;
        at += snprintf(errors + at, sizeof(errors) - at, "%s%#lx", i ? "," : "", pf_err[i]);
        if (!seen)
            break;
    }
    info("cpu_faults_pf_errors", "%s", errors);
    if (ok) {
        bool kept = *(volatile uint64_t *)(PF_AREA + 0x1000 + 8) == 0x1235;
        check("cpu_faults.pf_chain", kept, "the written value did not stay");
    }
}

static void pf_while_delivering(void)
{
    struct gate *g = &idt()[6];
    set_handler(14, pf_stub);
    set_ist_stack(1, (void *)(IST_HOLE + 0x1000));
    unmap_4k(IST_HOLE);
    pf_count = 0;
    g->ist = 1;
    arm_kernel_fault(ud2_resume);
    asm volatile("ud2_insn: ud2\n ud2_resume:" ::: "memory");
    disarm_kernel_fault();
    g->ist = 0;
    check("cpu_faults.pf_while_delivering",
          pf_count == 1 && pf_cr2[0] == IST_HOLE + 0x1000 - 8 && pf_err[0] == 2 &&
          pf_rip[0] == (uint64_t)(uintptr_t)ud2_insn && user_fault.faulted &&
          user_fault.vector == 6 && user_fault.rip == (uint64_t)(uintptr_t)ud2_insn,
          "#PF count %u cr2 %#lx error %#lx rip %#lx (want %#lx), then vector %lu at %#lx",
          pf_count, pf_cr2[0], pf_err[0], pf_rip[0], IST_HOLE + 0x1000 - 8, user_fault.vector,
          user_fault.rip);
    unmap_4k(IST_HOLE);
}

static void double_fault_ist(void)
{
    struct gate *pf = &idt()[14], *df = &idt()[8];
    extern uint64_t trap_stub_table[32];
    set_handler(14, (void *)(uintptr_t)trap_stub_table[14]);
    unmap_4k(IST_HOLE);
    set_ist_stack(1, (void *)(IST_HOLE + 0x1000));
    set_ist_stack(2, df_stack + sizeof(df_stack));
    pf->ist = 1;
    df->ist = 2;
    arm_kernel_fault(df_resume);
    asm volatile("movq $0, (%0)\n df_resume:" :: "r"(PF_AREA + 0x100000) : "memory");
    uint64_t cr2 = read_cr2();
    disarm_kernel_fault();
    pf->ist = 0;
    df->ist = 0;
    check("cpu_faults.double_fault_ist", user_fault.faulted && user_fault.vector == 8 &&
          user_fault.error == 0, "faulted %d vector %lu error %#lx (want #DF(0))",
          user_fault.faulted, user_fault.vector, user_fault.error);
    check("cpu_faults.double_fault_cr2", user_fault.faulted && cr2 == IST_HOLE + 0x1000 - 8,
          "cr2 %#lx (want the second #PF's address %#lx, the first push on the IST stack)",
          cr2, IST_HOLE + 0x1000 - 8);
}

static void int_gate_dpl(void)
{
    struct gate *g21 = &idt()[0x21], *g3 = &idt()[3];
    struct gate saved3 = *g3;
    set_handler(0x21, (void *)(uintptr_t)trap_stub_int80);  /* a return path if delivered */
    g21->type = 0x8e;   /* present, DPL 0, 64-bit interrupt gate */
    g21->ist = 0;
    long rc = run_user(user_int21, user_stack + sizeof(user_stack), 0);
    check("cpu_faults.int_gate_dpl_intn",
          rc == USER_FAULTED && user_fault.vector == 13 && user_fault.error == 0x21 * 8 + 2 &&
          user_fault.rip == (uint64_t)(uintptr_t)user_int21_insn,
          "rc %#lx vector %lu error %#lx rip %#lx (want #GP(%#x) at %p)", rc, user_fault.vector,
          user_fault.error, user_fault.rip, 0x21 * 8 + 2, (void *)user_int21_insn);
    g3->type = 0x8e;    /* DPL 0 */
    rc = run_user(user_int3, user_stack + sizeof(user_stack), 0);
    *g3 = saved3;
    check("cpu_faults.int_gate_dpl_int3",
          rc == USER_FAULTED && user_fault.vector == 13 && user_fault.error == 3 * 8 + 2 &&
          user_fault.rip == (uint64_t)(uintptr_t)user_int3_insn,
          "rc %#lx vector %lu error %#lx rip %#lx (want #GP(%#x) at %p)", rc, user_fault.vector,
          user_fault.error, user_fault.rip, 3 * 8 + 2, (void *)user_int3_insn);
    memset(g21, 0, sizeof(*g21));
}

static void ts_short_tss(void)
{
    struct gate *g = &idt()[6];
    set_ist_stack(1, df_stack + sizeof(df_stack));
    set_tss_limit(0x23);    /* RSP0-2 inside, IST1 (0x24..0x2b) outside */
    g->ist = 1;
    arm_kernel_fault(ts_resume);
    asm volatile("ts_insn: ud2\n ts_resume:" ::: "memory");
    disarm_kernel_fault();
    g->ist = 0;
    set_tss_limit(0x67);
    check("cpu_faults.ts_short_tss",
          user_fault.faulted && user_fault.vector == 10 && user_fault.error == (TSS_SEL | 1) &&
          user_fault.rip == (uint64_t)(uintptr_t)ts_insn,
          "faulted %d vector %lu error %#lx rip %#lx (want #TS(%#x) at %p)", user_fault.faulted,
          user_fault.vector, user_fault.error, user_fault.rip, TSS_SEL | 1, (void *)ts_insn);
}

static void icebp(void)
{
    arm_kernel_fault(icebp_after);
    asm volatile("icebp_insn: .byte 0xf1\n icebp_after:" ::: "memory");
    disarm_kernel_fault();
    check("cpu_faults.icebp",
          user_fault.faulted && user_fault.vector == 1 &&
          user_fault.rip == (uint64_t)(uintptr_t)icebp_after,
          "faulted %d vector %lu rip %#lx (want #DB after the instruction, %p)",
          user_fault.faulted, user_fault.vector, user_fault.rip, (void *)icebp_after);
}

static void ss_noncanonical(void)
{
    arm_kernel_fault(ss_rbp_resume);
    asm volatile("movq %%rbp, %%r11\n"
                 "movabsq %0, %%rbp\n"
                 "ss_rbp_insn: movq (%%rbp), %%rax\n"
                 "ss_rbp_resume: movq %%r11, %%rbp"
                 :: "i"(NONCANON) : "rax", "r11", "memory");
    disarm_kernel_fault();
    check("cpu_faults.ss_rbp",
          user_fault.faulted && user_fault.vector == 12 && user_fault.error == 0 &&
          user_fault.rip == (uint64_t)(uintptr_t)ss_rbp_insn,
          "faulted %d vector %lu error %#lx rip %#lx (want #SS(0) at %p)", user_fault.faulted,
          user_fault.vector, user_fault.error, user_fault.rip, (void *)ss_rbp_insn);

    /* #SS from a push needs a good stack to be delivered on: IST 2. */
    struct gate *g = &idt()[12];
    set_ist_stack(2, ss_stack + sizeof(ss_stack));
    g->ist = 2;
    arm_kernel_fault(ss_push_resume);
    asm volatile("movq %%rsp, %%r11\n"
                 "movabsq %0, %%rsp\n"
                 "ss_push_insn: pushq %%rax\n"
                 "ss_push_resume: movq %%r11, %%rsp"
                 :: "i"(NONCANON) : "r11", "memory");
    disarm_kernel_fault();
    g->ist = 0;
    check("cpu_faults.ss_push",
          user_fault.faulted && user_fault.vector == 12 && user_fault.error == 0 &&
          user_fault.rip == (uint64_t)(uintptr_t)ss_push_insn,
          "faulted %d vector %lu error %#lx rip %#lx (want #SS(0) at %p)", user_fault.faulted,
          user_fault.vector, user_fault.error, user_fault.rip, (void *)ss_push_insn);
}

int guest_main(void)
{
    static const struct { const char *name; void (*run)(void); } groups[] = {
        { "pf_chain", pf_chain },
        { "pf_while_delivering", pf_while_delivering },
        { "double_fault", double_fault_ist },
        { "int_gate_dpl", int_gate_dpl },
        { "ts_short_tss", ts_short_tss },
        { "icebp", icebp },
        { "ss_noncanonical", ss_noncanonical },
    };
    const char *only = cmdline_get("only");
    for (unsigned i = 0; i < ARRAY_SIZE(groups); i++)
        if (!only || !strcmp(only, groups[i].name))
            groups[i].run();
    return 0;
}
