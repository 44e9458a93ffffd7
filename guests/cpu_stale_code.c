/*
 * cpu_stale_code: code the guest has unmapped must not turn its next page fault into a
 * double fault (issue 10, items 1 and 2; seen booting Debian's Linux on the software CPU).
 *
 * The software CPU watches the code a guest runs after it reads a hypervisor CPUID leaf (to
 * find the hypercall-page MSR write), with an engine hook it removes later. Removing a hook
 * makes Unicorn invalidate the code it saw, translating those addresses with the guest's
 * *current* page tables; an address the guest has unmapped since page-faults inside Unicorn,
 * and that fault stays recorded as QEMU's "exception in flight": the guest's next #PF then
 * arrives as #DF (and after two such, as a silent triple fault). Linux hit it at its first
 * #PF (copy_bootdata) once the hook was removed.
 *
 * The guest reads CPUID 0x40000000, runs a `ret` on a page mapped at CODE_VA, unmaps that
 * page, runs well over the engine's watch window of blocks, then takes two ordinary page
 * faults: each must arrive as #PF(not-present, write) with CR2 = the address touched.
 *
 * - cpu_stale_code.first_pf, cpu_stale_code.second_pf
 */
#include "guest.h"

#define CODE_VA   0x40800000UL   /* outside the boot identity map (the first GiB) */
#define HOLE_VA   0x40a00000UL   /* never mapped */
#define BLOCKS    100000         /* loop iterations: far more blocks than the watch lasts */

static uint8_t code_page[4096] ALIGNED(4096);

static void run_many_blocks(void)
{
    for (volatile unsigned i = 0; i < BLOCKS; i++)
        ;
}

static __attribute__((noinline)) void page_fault_at(const char *name, uint64_t va)
{
    extern char stale_pf_insn[], stale_pf_resume[];

    arm_kernel_fault(stale_pf_resume);
    asm volatile("stale_pf_insn: movq $0, (%0)\n stale_pf_resume:" :: "r"(va) : "memory");
    disarm_kernel_fault();
    check(name, user_fault.faulted && user_fault.vector == 14 && user_fault.cr2 == va &&
          user_fault.error == 2 && user_fault.rip == (uint64_t)(uintptr_t)stale_pf_insn,
          "faulted %d vector %lu error %#lx cr2 %#lx rip %#lx (want #PF(2) at cr2 %#lx)",
          user_fault.faulted, user_fault.vector, user_fault.error, user_fault.cr2,
          user_fault.rip, va);
}

int guest_main(void)
{
    uint32_t a, b, c, d;

    run_many_blocks();                   /* any watch started at boot is over */
    cpuid(0x40000000, 0, &a, &b, &c, &d);    /* ... and a new one starts here */
    code_page[0] = 0xc3;                 /* ret */
    if (map_4k(CODE_VA, virt_to_phys(code_page), PTE_P | PTE_W)) {
        test_fail("cpu_stale_code.map", "map_4k failed");
        return 0;
    }
    ((void (*)(void))CODE_VA)();
    unmap_4k(CODE_VA);
    run_many_blocks();                   /* the watch ends: its hook is removed */
    page_fault_at("cpu_stale_code.first_pf", HOLE_VA);
    page_fault_at("cpu_stale_code.second_pf", HOLE_VA + 0x1000);
    return 0;
}
