/*
 * lapic_mmio: an interrupt that an xAPIC MMIO access makes deliverable is taken after that
 * access's instruction, and once.
 *
 * On x86 an instruction completes before the interrupts it raises are recognised (SDM vol 3
 * §6.6): a write to the ICR that sends this CPU an IPI, or a TPR write that unblocks a pending
 * one, retires, and the handler's frame returns to the next instruction. A VMM that emulates
 * the access must finish the instruction before it injects: one that delivers first returns
 * from the handler to the MMIO instruction, which runs again and sends the IPI again (an INIT
 * or SIPI a second time, for an SMP kernel bringing up its APs; Linux with two vCPUs then
 * crashed in its event upcall with a corrupt interrupt frame).
 *
 * Checks: N self-IPIs through ICR writes give N interrupts, each returning to the instruction
 * after the write; with the TPR raised the IPI waits, and the TPR write that lowers it is the
 * instruction the interrupt follows. The handler EOIs through MMIO as well.
 *
 * cmdline: rounds=<n> (default 200).
 * INFO keys: rounds, interrupts.
 */
#include "guest.h"
#include "evtchn.h"

#define LAPIC_BASE 0xfee00000ULL
#define LAPIC_TPR  0x80
#define LAPIC_EOI  0xb0
#define LAPIC_SVR  0xf0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define IPI_VECTOR 0xe0
#define ICR_SELF   (1u << 18)   /* destination shorthand: self */
#define ICR_ASSERT (1u << 14)

static volatile uint32_t interrupts;
static volatile uint32_t returned_to_the_access, returned_elsewhere;
static volatile uint64_t elsewhere_rip;
static volatile uint64_t expected_rip;

/* The accesses, with labels on the instruction itself and on the one after it. */
extern const char icr_write[], icr_done[], tpr_write[], tpr_done[];

static void __attribute__((noinline)) send_self_ipi(void)
{
    uint32_t lo = IPI_VECTOR | ICR_SELF | ICR_ASSERT;
    asm volatile(".globl icr_write, icr_done\n"
                 "icr_write: movl %0, (%1)\n"
                 "icr_done: nop"
                 :: "r"(lo), "r"(LAPIC_BASE + LAPIC_ICR_LO) : "memory");
}

static void __attribute__((noinline)) lower_tpr(void)
{
    asm volatile(".globl tpr_write, tpr_done\n"
                 "tpr_write: movl %0, (%1)\n"
                 "tpr_done: nop"
                 :: "r"(0), "r"(LAPIC_BASE + LAPIC_TPR) : "memory");
}

static void lapic_write(unsigned reg, uint32_t v)
{
    *(volatile uint32_t *)(uintptr_t)(LAPIC_BASE + reg) = v;
}

/* Called from ipi_entry with the interrupt frame (frame[0] = the return rip). */
void ipi_handler(uint64_t *frame)
{
    interrupts++;
    if (frame[0] == (uint64_t)(uintptr_t)icr_write || frame[0] == (uint64_t)(uintptr_t)tpr_write) {
        returned_to_the_access++;
        /* Do not run the access again: that would send another IPI, and so on forever. */
        frame[0] = frame[0] == (uint64_t)(uintptr_t)icr_write ? (uint64_t)(uintptr_t)icr_done
                                                              : (uint64_t)(uintptr_t)tpr_done;
    } else if (frame[0] != expected_rip) {
        returned_elsewhere++;
        elsewhere_rip = frame[0];
    }
    lapic_write(LAPIC_EOI, 0);
}

extern void ipi_entry(void);
asm(".text\n"
    ".globl ipi_entry\n"
    "ipi_entry:\n"
    "  push %rax; push %rcx; push %rdx; push %rsi; push %rdi\n"
    "  push %r8; push %r9; push %r10; push %r11\n"
    "  lea 72(%rsp), %rdi\n"          /* 9 saved registers, then the CPU's frame */
    "  call ipi_handler\n"
    "  pop %r11; pop %r10; pop %r9; pop %r8\n"
    "  pop %rdi; pop %rsi; pop %rdx; pop %rcx; pop %rax\n"
    "  iretq\n");

static bool wait_for(uint32_t count)
{
    uint64_t end = now_ns() + WAIT_BOUND_NS;
    while (interrupts < count && now_ns() < end)
        cpu_relax();
    return interrupts >= count;
}

int guest_main(void)
{
    unsigned long rounds = 200;
    const char *r = cmdline_get("rounds");
    if (r)
        rounds = strtoul(r, NULL, 10);
    uint32_t a, b, c, d;
    cpuid(1, 0, &a, &b, &c, &d);
    if (!check("lapic_mmio.cpuid_apic", d & (1u << 9), "CPUID.1:EDX.APIC is clear"))
        return 0;
    if (!check_eq("lapic_mmio.map", map_4k(LAPIC_BASE, LAPIC_BASE, PTE_P | PTE_W | 0x18), 0))
        return 0;
    irq_disable();
    install_interrupt_gate(IPI_VECTOR, ipi_entry);
    lapic_write(LAPIC_TPR, 0);
    lapic_write(LAPIC_SVR, 0x100 | 0xff);   /* software-enable the xAPIC */
    lapic_write(LAPIC_ICR_HI, 0);
    irq_enable();

    bool ok = true;
    expected_rip = (uint64_t)(uintptr_t)icr_done;
    for (unsigned long i = 0; i < rounds && ok; i++) {
        send_self_ipi();
        ok = wait_for((uint32_t)i + 1);
    }
    check("lapic_mmio.icr_ipis_arrive", ok, "%u of %lu self-IPIs arrived", interrupts, rounds);
    check("lapic_mmio.icr_ipi_once", interrupts == rounds, "%u interrupts for %lu self-IPIs",
          interrupts, rounds);

    /* The TPR blocks the IPI's priority class; lowering it makes the IPI deliverable. */
    uint32_t before = interrupts;
    expected_rip = (uint64_t)(uintptr_t)tpr_done;
    for (unsigned long i = 0; i < rounds && ok; i++) {
        lapic_write(LAPIC_TPR, 0xf0);
        send_self_ipi();
        for (int spin = 0; spin < 1000; spin++)
            cpu_relax();
        if (interrupts != before + i) {
            check("lapic_mmio.tpr_blocks", false, "an IPI arrived with the TPR above it");
            ok = false;
            break;
        }
        lower_tpr();
        ok = wait_for(before + (uint32_t)i + 1);
    }
    check("lapic_mmio.tpr_unblocks_once", ok && interrupts == before + rounds,
          "%u interrupts for %lu IPIs held back by the TPR", interrupts - before, rounds);
    check("lapic_mmio.taken_after_the_access", returned_to_the_access == 0,
          "%u interrupts returned to the MMIO instruction itself (it ran again)",
          returned_to_the_access);
    check("lapic_mmio.frame_rip", returned_elsewhere == 0,
          "%u interrupts returned elsewhere (last %#lx)", returned_elsewhere,
          (unsigned long)elsewhere_rip);
    info("rounds", "%lu", rounds);
    info("interrupts", "%u", interrupts);
    return 0;
}
