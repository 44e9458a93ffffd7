/*
 * IDT (exceptions 0-31, plus a DPL-3 gate at 0x80 for returning from ring 3),
 * the TSS, and the C side of exception handling.
 *
 * An unexpected exception prints vector, error code, rip, cr2 (one line,
 * "PANIC exception ..."), then SCHEDOP_shutdown(crash) and cli;hlt forever.
 */
#include "runtime.h"

struct idt_entry {
    uint16_t off_lo, sel;
    uint8_t ist, type;
    uint16_t off_mid;
    uint32_t off_hi, zero;
} __attribute__((packed));

struct tss64 {
    uint32_t reserved0;
    uint64_t rsp[3];
    uint64_t reserved1;
    uint64_t ist[7];
    uint64_t reserved2;
    uint16_t reserved3, iomap_base;
} __attribute__((packed));

static struct idt_entry idt[256] ALIGNED(16);
static struct tss64 tss ALIGNED(16);
extern uint64_t trap_stub_table[32], trap_stub_int80;
extern uint64_t gdt_tss[2];
extern char trap_stack_top[];
NORETURN void resume_kernel_from_user(long value);

struct user_fault_info user_fault;
bool user_int80_was_ud;
static void *kernel_fault_resume;
bool (*kernel_trap_hook)(struct trap_frame *f);
static bool in_user;

static const char *const names[32] = {
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS",
    "#NP", "#SS", "#GP", "#PF", "RES", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
};

static void set_gate(int vec, uint64_t handler, int dpl)
{
    idt[vec].off_lo = handler & 0xffff;
    idt[vec].sel = KCS64;
    idt[vec].ist = 0;
    idt[vec].type = 0x8e | (dpl << 5);   /* present, 64-bit interrupt gate */
    idt[vec].off_mid = (handler >> 16) & 0xffff;
    idt[vec].off_hi = handler >> 32;
    idt[vec].zero = 0;
}

void traps_init(void)
{
    for (int v = 0; v < 32; v++)
        set_gate(v, trap_stub_table[v], (v == 3 || v == 4) ? 3 : 0);  /* int3/into from ring 3 */
    set_gate(0x80, trap_stub_int80, 3);
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) idtr = {
        sizeof(idt) - 1, (uint64_t)(uintptr_t)idt };
    asm volatile("lidt %0" :: "m"(idtr));

    /* TSS: rsp0 for traps taken from ring 3; no I/O bitmap. */
    tss.rsp[0] = (uint64_t)(uintptr_t)trap_stack_top;
    tss.iomap_base = sizeof(tss);
    uint64_t base = (uint64_t)(uintptr_t)&tss, limit = sizeof(tss) - 1;
    gdt_tss[0] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ULL << 40) |
                 (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
    gdt_tss[1] = base >> 32;
    asm volatile("ltr %w0" :: "r"(TSS_SEL));

}

void install_interrupt_gate(unsigned vector, const void *entry)
{
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) idtr;
    asm volatile("sidt %0" : "=m"(idtr));
    struct idt_entry *g = (struct idt_entry *)(uintptr_t)idtr.base + vector;
    uint64_t h = (uint64_t)(uintptr_t)entry;
    g->off_lo = h & 0xffff;
    g->sel = KCS64;
    g->ist = 0;
    g->type = 0x8e;                 /* present, DPL0, 64-bit interrupt gate */
    g->off_mid = (h >> 16) & 0xffff;
    g->off_hi = h >> 32;
    g->zero = 0;
}

void arm_kernel_fault(void *resume_rip)
{
    user_fault.faulted = false;
    kernel_fault_resume = resume_rip;
}

void disarm_kernel_fault(void) { kernel_fault_resume = NULL; }

static inline uint64_t read_cr2(void)
{
    uint64_t v;
    asm volatile("mov %%cr2, %0" : "=r"(v));
    return v;
}

void trap_handler(struct trap_frame *f)
{
    uint64_t cr2 = f->vector == 14 ? read_cr2() : 0;

    if ((f->cs & 3) == 3 && in_user) {
        in_user = false;
        if (f->vector == 0x80)
            resume_kernel_from_user((long)f->rax);
        /* kvm_pvm delivers `int $0x80` from ring 3 as #UD at the int
         * instruction: accept that as the same return when it carries the
         * marker user_return() puts in %rbx. */
        const uint8_t *ip = (const uint8_t *)(uintptr_t)f->rip;
        if (f->vector == 6 && f->rbx == USER_RETURN_MAGIC && ip[0] == 0xcd && ip[1] == 0x80) {
            user_int80_was_ud = true;
            resume_kernel_from_user((long)f->rax);
        }
        user_fault.faulted = true;
        user_fault.vector = f->vector;
        user_fault.error = f->error;
        user_fault.rip = f->rip;
        user_fault.cr2 = cr2;
        resume_kernel_from_user(USER_FAULTED);
    }
    if ((f->cs & 3) == 0 && kernel_trap_hook && kernel_trap_hook(f))
        return;
    if (kernel_fault_resume && (f->cs & 3) == 0 && f->vector < 32) {
        user_fault.faulted = true;
        user_fault.vector = f->vector;
        user_fault.error = f->error;
        user_fault.rip = f->rip;
        user_fault.cr2 = cr2;
        f->rip = (uint64_t)(uintptr_t)kernel_fault_resume;
        kernel_fault_resume = NULL;
        return;
    }
    printf("PANIC exception vector=%lu (%s) error=%#lx rip=%#lx cr2=%#lx cs=%#lx rsp=%#lx\n",
           f->vector, f->vector < 32 && names[f->vector] ? names[f->vector] : "?",
           f->error, f->rip, cr2, f->cs, f->rsp);
    shutdown(SHUTDOWN_crash);
}

/* Wrapper so the C side knows ring 3 is active. */
long run_user_raw(void (*fn)(void), void *stack, unsigned iopl);
long run_user(void (*fn)(void), void *stack, unsigned iopl)
{
    user_fault.faulted = false;
    in_user = true;
    long rc = run_user_raw(fn, stack, iopl);
    in_user = false;
    return rc;
}
