/*
 * cpu_syscall: the fast system calls from ring 3, as the CPU does them
 * (issue 10, item 3; Intel SDM vol. 2B SYSCALL/SYSRET/SYSENTER/SYSEXIT).
 *
 * The guest adds Linux-style descriptors after the runtime's GDT (kernel code,
 * kernel data, 32-bit user code, user data, 64-bit user code, user data), so
 * that every selector the instructions derive from STAR and SYSENTER_CS names
 * a real descriptor of the right kind:
 *   STAR[47:32] = K_CS        SYSCALL:  CS = K_CS, SS = K_CS + 8
 *   STAR[63:48] = U32_CS      SYSRETQ:  CS = U32_CS + 16 | 3, SS = U32_CS + 8 | 3
 *                             SYSRETL:  CS = U32_CS | 3
 *   SYSENTER_CS = K_CS        SYSEXITQ: CS = K_CS + 32 | 3, SS = K_CS + 40 | 3
 * The kernel entry points record what they see (RCX, R11, RFLAGS, RSP, CS, SS
 * and CR0, which only CPL 0 may read) and go straight back with SYSRET or
 * SYSEXIT; ring 3 records CS, SS and RFLAGS after the return.
 *
 * Checks: SYSCALL lands at LSTAR at CPL 0 with RCX = the next instruction,
 * R11 = RFLAGS, FMASK applied and the stack untouched; SYSRETQ comes back to
 * 64-bit ring 3 with RFLAGS from R11. SYSENTER lands at SYSENTER_EIP on
 * SYSENTER_ESP at CPL 0; SYSEXITQ (REX.W) comes back to RDX on stack RCX.
 * SYSCALL with EFER.SCE clear is #UD; SYSENTER with SYSENTER_CS = 0 is
 * #GP(0). SYSCALL from a 32-bit ring-3 code segment (compat mode) follows the
 * CPUID vendor: #UD on Intel ("IF CS.L != 1 ... THEN #UD"), entry at CSTAR
 * and SYSRETL back on AMD. 64-bit SYSENTER is Intel's: on AMD it is #UD.
 *
 * INFO keys: cpu_syscall_vendor (the CPUID vendor string).
 */
#include "guest.h"

#define MSR_EFER         0xC0000080u
#define MSR_STAR         0xC0000081u
#define MSR_LSTAR        0xC0000082u
#define MSR_CSTAR        0xC0000083u
#define MSR_FMASK        0xC0000084u
#define MSR_SYSENTER_CS  0x174u
#define MSR_SYSENTER_ESP 0x175u
#define MSR_SYSENTER_EIP 0x176u
#define EFER_SCE 1ULL

#define RF_CF (1UL << 0)
#define RF_DF (1UL << 10)
#define RF_RF (1UL << 16)
#define RF_ID (1UL << 21)
#define FMASK (RF_DF | RF_ID)   /* ring 3 sets DF, ID and CF: CF must survive */

/* What the kernel entry points saw (written by the asm below). */
uint64_t k_count, k_rcx, k_r11, k_rsp, k_flags, k_cs, k_ss, k_cr0;
/* What 32-bit ring 3 saw after SYSRETL (AMD only). */
uint32_t c_cs, c_ss;

extern char syscall_entry64[], syscall_entry_compat[], sysenter_entry[];
extern char user_syscall_only[], user_syscall_only_insn[];
extern char user_sysenter_only[], user_sysenter_only_insn[];
extern char user_compat_syscall[], compat_syscall_insn[], compat_after[];

/* Record the kernel's view using only %rax and the current stack. */
#define RECORD                                              \
    "  movq %rsp, k_rsp(%rip)\n"                            \
    "  pushfq\n"                                            \
    "  popq k_flags(%rip)\n"                                \
    "  movq %cr0, %rax\n"                                   \
    "  movq %rax, k_cr0(%rip)\n"                            \
    "  xorl %eax, %eax\n"                                   \
    "  movw %cs, %ax\n"                                     \
    "  movq %rax, k_cs(%rip)\n"                             \
    "  movw %ss, %ax\n"                                     \
    "  movq %rax, k_ss(%rip)\n"                             \
    "  incq k_count(%rip)\n"

asm(".text\n"
    /* LSTAR: 64-bit SYSCALL. Runs on the user's stack, as SYSCALL leaves it. */
    ".globl syscall_entry64\n"
    "syscall_entry64:\n"
    "  movq %rcx, k_rcx(%rip)\n"
    "  movq %r11, k_r11(%rip)\n"
    RECORD
    "  sysretq\n"
    /* CSTAR: SYSCALL from compat mode (AMD); back with the 32-bit SYSRET. */
    ".globl syscall_entry_compat\n"
    "syscall_entry_compat:\n"
    "  movq %rcx, k_rcx(%rip)\n"
    "  movq %r11, k_r11(%rip)\n"
    RECORD
    "  sysretl\n"
    /* SYSENTER_EIP: RDX/RCX (return rip/rsp) are left for SYSEXITQ. */
    ".globl sysenter_entry\n"
    "sysenter_entry:\n"
    RECORD
    "  sysexitq\n"

    /* Ring-3 code that must fault: SYSCALL/SYSENTER, then (if they did not
     * fault) back to ring 0 with int $0x80 and %rax = 7. */
    ".globl user_syscall_only, user_syscall_only_insn\n"
    "user_syscall_only:\n"
    "user_syscall_only_insn:\n"
    "  syscall\n"
    "  jmp 1f\n"
    ".globl user_sysenter_only, user_sysenter_only_insn\n"
    "user_sysenter_only:\n"
    "  leaq 1f(%rip), %rdx\n"
    "  movq %rsp, %rcx\n"
    "user_sysenter_only_insn:\n"
    "  sysenter\n"
    "1:\n"
    "  movabsq $0x52455455524e5533, %rbx\n"   /* USER_RETURN_MAGIC */
    "  movl $7, %eax\n"
    "  int $0x80\n"

    /* Ring 3, 64-bit: far return to the 32-bit user code segment, SYSCALL
     * there; after SYSRETL (AMD) record CS/SS and return 0x600d. */
    ".globl user_compat_syscall, compat_syscall_insn, compat_after\n"
    "user_compat_syscall:\n"
    "  movabsq $0x52455455524e5533, %rbx\n"
    "  pushq $0x33\n"                         /* UCS32 | 3 */
    "  leaq compat_user_code(%rip), %rax\n"
    "  pushq %rax\n"
    "  lretq\n"
    ".code32\n"
    "compat_user_code:\n"
    "compat_syscall_insn:\n"
    "  syscall\n"
    "compat_after:\n"
    "  movl %cs, %eax\n"
    "  movl %eax, c_cs\n"
    "  movl %ss, %eax\n"
    "  movl %eax, c_ss\n"
    "  movl $0x600d, %eax\n"
    "  int $0x80\n"
    ".code64\n");

static uint8_t user_stack[16384] ALIGNED(16);
#define USTACK (user_stack + sizeof(user_stack))
static uint8_t sysenter_stack[4096] ALIGNED(16);
#define SYSENTER_STACK ((uint64_t)(uintptr_t)(sysenter_stack + sizeof(sysenter_stack)))

/* The runtime's GDT (9 slots: the TSS takes two) and six more. */
static uint64_t gdt2[16] ALIGNED(16);
static unsigned K_CS, U32_CS;

/* What 64-bit ring 3 saw around the instruction. */
static uint64_t u_expect_rcx, u_before, u_after, u_rsp, u_rsp_after, u_cs, u_ss;

static void user_syscall64(void)
{
    uint64_t expect, before, after, rsp, cs, ss;
    asm volatile("leaq 1f(%%rip), %[exp]\n\t"
                 "pushfq\n\t"
                 "orq %[set], (%%rsp)\n\t"
                 "popfq\n\t"
                 "stc\n\t"
                 "pushfq\n\t"
                 "popq %[before]\n\t"
                 "movq %%rsp, %[rsp]\n\t"
                 "syscall\n"
                 "1:\n\t"
                 "pushfq\n\t"
                 "popq %[after]\n\t"
                 "cld\n\t"
                 "pushfq\n\t"
                 "andq %[clear], (%%rsp)\n\t"
                 "popfq\n\t"
                 "mov %%cs, %k[cs]\n\t"
                 "mov %%ss, %k[ss]\n\t"
                 : [exp] "=&r"(expect), [before] "=&r"(before), [after] "=&r"(after),
                   [rsp] "=&r"(rsp), [cs] "=&r"(cs), [ss] "=&r"(ss)
                 : [set] "i"(FMASK), [clear] "i"(~FMASK)
                 : "rax", "rcx", "r11", "memory", "cc");
    u_expect_rcx = expect;
    u_before = before;
    u_after = after;
    u_rsp = rsp;
    u_cs = cs & 0xffff;
    u_ss = ss & 0xffff;
    user_return(0);
}

static void user_sysenter64(void)
{
    uint64_t rsp, rsp_after, cs, ss;
    asm volatile("leaq 1f(%%rip), %%rdx\n\t"
                 "movq %%rsp, %%rcx\n\t"
                 "movq %%rsp, %[rsp]\n\t"
                 "sysenter\n"
                 "1:\n\t"
                 "movq %%rsp, %[after]\n\t"
                 "mov %%cs, %k[cs]\n\t"
                 "mov %%ss, %k[ss]\n\t"
                 : [rsp] "=&r"(rsp), [after] "=&r"(rsp_after), [cs] "=&r"(cs), [ss] "=&r"(ss)
                 :
                 : "rax", "rcx", "rdx", "memory", "cc");
    u_rsp = rsp;
    u_rsp_after = rsp_after;
    u_cs = cs & 0xffff;
    u_ss = ss & 0xffff;
    user_return(0);
}

static void extend_gdt(void)
{
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) gdtr;
    asm volatile("sgdt %0" : "=m"(gdtr));
    unsigned used = (gdtr.limit + 1 + 7) / 8;
    memcpy(gdt2, (void *)(uintptr_t)gdtr.base, gdtr.limit + 1);
    K_CS = used * 8;
    U32_CS = K_CS + 16;
    gdt2[used + 0] = 0x00af9a000000ffffULL;   /* K_CS:       64-bit kernel code */
    gdt2[used + 1] = 0x00cf92000000ffffULL;   /* K_CS + 8:   kernel data */
    gdt2[used + 2] = 0x00cffa000000ffffULL;   /* U32_CS:     32-bit user code */
    gdt2[used + 3] = 0x00cff2000000ffffULL;   /* U32_CS + 8: user data */
    gdt2[used + 4] = 0x00affa000000ffffULL;   /* U32_CS + 16 = K_CS + 32: 64-bit user code */
    gdt2[used + 5] = 0x00cff2000000ffffULL;   /* K_CS + 40:  user data */
    gdtr.base = (uint64_t)(uintptr_t)gdt2;
    gdtr.limit = (used + 6) * 8 - 1;
    asm volatile("lgdt %0" :: "m"(gdtr) : "memory");
}

static void reset_kernel_view(void)
{
    k_count = k_rcx = k_r11 = k_rsp = k_flags = k_cs = k_ss = k_cr0 = 0;
    c_cs = c_ss = 0;
}

static void test_syscall64(uint64_t cr0)
{
    reset_kernel_view();
    long rc = run_user(user_syscall64, USTACK, 3);
    check("cpu_syscall.syscall_reaches_lstar", rc == 0 && !user_fault.faulted && k_count == 1,
          "rc %#lx, entries %lu (faulted %d vector %lu error %#lx rip %#lx)", rc, k_count,
          user_fault.faulted, user_fault.vector, user_fault.error, user_fault.rip);
    if (k_count != 1)
        return;
    check("cpu_syscall.syscall_kernel_cpl0",
          k_cs == K_CS && k_ss == K_CS + 8 && k_cr0 == cr0,
          "CS %#lx SS %#lx (want %#x %#x), CR0 read %#lx (want %#lx)", k_cs, k_ss, K_CS,
          K_CS + 8, k_cr0, cr0);
    check("cpu_syscall.syscall_rcx_next_rip", k_rcx == u_expect_rcx,
          "RCX %#lx, the instruction after SYSCALL is at %#lx", k_rcx, u_expect_rcx);
    check("cpu_syscall.syscall_r11_rflags", k_r11 == u_before,
          "R11 %#lx, ring 3's RFLAGS %#lx", k_r11, u_before);
    check("cpu_syscall.syscall_fmask",
          (u_before & FMASK) == FMASK && (k_flags & FMASK) == 0 && (k_flags & RF_CF),
          "ring 3 RFLAGS %#lx, kernel RFLAGS %#lx, FMASK %#lx (CF must stay)", u_before,
          k_flags, FMASK);
    check("cpu_syscall.syscall_keeps_rsp", k_rsp == u_rsp,
          "kernel RSP %#lx, ring 3's %#lx", k_rsp, u_rsp);
    check("cpu_syscall.sysret_ring3_selectors", u_cs == (U32_CS + 16) + 3 && u_ss == (U32_CS + 8) + 3,
          "CS %#lx SS %#lx (want %#x %#x)", u_cs, u_ss, U32_CS + 16 + 3, U32_CS + 8 + 3);
    check("cpu_syscall.sysret_rflags_from_r11", u_after == (k_r11 & ~RF_RF),
          "RFLAGS %#lx after SYSRET, R11 was %#lx", u_after, k_r11);
}

static void test_syscall_sce_clear(void)
{
    reset_kernel_view();
    uint64_t efer = rdmsr(MSR_EFER);
    wrmsr(MSR_EFER, efer & ~EFER_SCE);
    long rc = run_user((void (*)(void))user_syscall_only, USTACK, 3);
    wrmsr(MSR_EFER, efer);
    check("cpu_syscall.syscall_sce_clear_ud",
          rc == USER_FAULTED && user_fault.vector == 6 &&
          user_fault.rip == (uint64_t)(uintptr_t)user_syscall_only_insn && k_count == 0,
          "rc %#lx vector %lu rip %#lx (SYSCALL at %p), kernel entries %lu", rc,
          user_fault.vector, user_fault.rip, user_syscall_only_insn, k_count);
}

static void test_syscall_compat(bool amd)
{
    reset_kernel_view();
    long rc = run_user((void (*)(void))user_compat_syscall, USTACK, 3);
    if (!amd) {
        check("cpu_syscall.compat_syscall_ud_intel",
              rc == USER_FAULTED && user_fault.vector == 6 &&
              user_fault.rip == (uint64_t)(uintptr_t)compat_syscall_insn && k_count == 0,
              "rc %#lx vector %lu rip %#lx (SYSCALL at %p), kernel entries %lu", rc,
              user_fault.vector, user_fault.rip, compat_syscall_insn, k_count);
        return;
    }
    check("cpu_syscall.compat_syscall_cstar_amd",
          rc == 0x600d && k_count == 1 && k_cs == K_CS &&
          k_rcx == (uint64_t)(uintptr_t)compat_after,
          "rc %#lx entries %lu CS %#lx RCX %#lx (want %#x %p; faulted %d vector %lu rip %#lx)",
          rc, k_count, k_cs, k_rcx, K_CS, compat_after, user_fault.faulted, user_fault.vector,
          user_fault.rip);
    check("cpu_syscall.compat_sysretl_selectors", c_cs == U32_CS + 3 && c_ss == U32_CS + 8 + 3,
          "CS %#x SS %#x (want %#x %#x)", c_cs, c_ss, U32_CS + 3, U32_CS + 8 + 3);
}

static void test_sysenter64(bool amd, uint64_t cr0)
{
    reset_kernel_view();
    long rc = run_user(user_sysenter64, USTACK, 3);
    if (amd) {
        check("cpu_syscall.sysenter64_ud_amd", rc == USER_FAULTED && user_fault.vector == 6,
              "rc %#lx vector %lu rip %#lx", rc, user_fault.vector, user_fault.rip);
        return;
    }
    check("cpu_syscall.sysenter_reaches_eip", rc == 0 && !user_fault.faulted && k_count == 1,
          "rc %#lx, entries %lu (faulted %d vector %lu error %#lx rip %#lx)", rc, k_count,
          user_fault.faulted, user_fault.vector, user_fault.error, user_fault.rip);
    if (k_count != 1)
        return;
    check("cpu_syscall.sysenter_kernel_cpl0",
          k_cs == K_CS && k_ss == K_CS + 8 && k_cr0 == cr0,
          "CS %#lx SS %#lx (want %#x %#x), CR0 read %#lx (want %#lx)", k_cs, k_ss, K_CS,
          K_CS + 8, k_cr0, cr0);
    check("cpu_syscall.sysenter_stack", k_rsp == SYSENTER_STACK,
          "kernel RSP %#lx, SYSENTER_ESP %#lx", k_rsp, SYSENTER_STACK);
    check("cpu_syscall.sysexit_ring3", u_cs == K_CS + 32 + 3 && u_ss == K_CS + 40 + 3 &&
          u_rsp_after == u_rsp,
          "CS %#lx SS %#lx RSP %#lx (want %#x %#x %#lx)", u_cs, u_ss, u_rsp_after,
          K_CS + 32 + 3, K_CS + 40 + 3, u_rsp);
}

static void test_sysenter_cs_zero(void)
{
    reset_kernel_view();
    wrmsr(MSR_SYSENTER_CS, 0);
    long rc = run_user((void (*)(void))user_sysenter_only, USTACK, 3);
    wrmsr(MSR_SYSENTER_CS, K_CS);
    check("cpu_syscall.sysenter_cs0_gp",
          rc == USER_FAULTED && user_fault.vector == 13 && user_fault.error == 0 &&
          user_fault.rip == (uint64_t)(uintptr_t)user_sysenter_only_insn && k_count == 0,
          "rc %#lx vector %lu error %#lx rip %#lx (SYSENTER at %p), kernel entries %lu", rc,
          user_fault.vector, user_fault.error, user_fault.rip, user_sysenter_only_insn, k_count);
}

int guest_main(void)
{
    uint32_t a, vendor[3];
    cpuid(0, 0, &a, &vendor[0], &vendor[2], &vendor[1]);
    char name[13];
    memcpy(name, vendor, 12);
    name[12] = 0;
    /* AMD's rules also hold for Hygon. */
    bool amd = !memcmp(name, "AuthenticAMD", 12) || !memcmp(name, "HygonGenuine", 12);
    info("cpu_syscall_vendor", "%s", name);

    extend_gdt();
    uint64_t cr0;
    asm volatile("mov %%cr0, %0" : "=r"(cr0));
    wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_SCE);
    wrmsr(MSR_STAR, (uint64_t)U32_CS << 48 | (uint64_t)K_CS << 32);
    wrmsr(MSR_LSTAR, (uint64_t)(uintptr_t)syscall_entry64);
    wrmsr(MSR_CSTAR, (uint64_t)(uintptr_t)syscall_entry_compat);
    wrmsr(MSR_FMASK, FMASK);
    wrmsr(MSR_SYSENTER_CS, K_CS);
    wrmsr(MSR_SYSENTER_ESP, SYSENTER_STACK);
    wrmsr(MSR_SYSENTER_EIP, (uint64_t)(uintptr_t)sysenter_entry);

    test_syscall64(cr0);
    test_syscall_sce_clear();
    test_syscall_compat(amd);
    test_sysenter64(amd, cr0);
    test_sysenter_cs_zero();
    return 0;
}
