/*
 * cpu_vmcall: hypercalls through the VMCALL (Intel) and VMMCALL (AMD)
 * instructions, as Linux issues them since the XSA-466 fixes (it no longer
 * calls the hypercall page; xen_hypercall_setfunc picks the instruction by
 * CPUID vendor). Xen 4.17 treats both as hypercalls for an HVM/PVH guest
 * (hvm_hypercall): same numbers and argument registers as the hypercall page
 * (64-bit: rdi rsi rdx r10 r8; result in rax), the instruction is skipped
 * (3 bytes), every register but rax is preserved, and from CPL > 0 the result
 * is -EPERM without the call running.
 *
 * INFO keys: cpu_vmcall_vendor.
 */
#include "guest.h"

#define VMCALL  ".byte 0x0f, 0x01, 0xc1"
#define VMMCALL ".byte 0x0f, 0x01, 0xd9"

/* A hypercall through one instruction; every argument register is an
 * in/out operand so that the test sees whether the call preserved it. */
struct regs5 { unsigned long rdi, rsi, rdx, r10, r8, r9, r11, rcx; };

#define DEFINE_CALL(name, insn)                                                  \
static long name(unsigned nr, struct regs5 *r)                                   \
{                                                                                \
    register unsigned long r10 asm("r10") = r->r10;                              \
    register unsigned long r8 asm("r8") = r->r8;                                 \
    register unsigned long r9 asm("r9") = r->r9;                                 \
    register unsigned long r11 asm("r11") = r->r11;                              \
    long rax = nr;                                                               \
    unsigned long rcx = r->rcx;                                                  \
    asm volatile(insn                                                            \
                 : "+a"(rax), "+D"(r->rdi), "+S"(r->rsi), "+d"(r->rdx),          \
                   "+r"(r10), "+r"(r8), "+r"(r9), "+r"(r11), "+c"(rcx)           \
                 :                                                               \
                 : "memory");                                                    \
    r->r10 = r10; r->r8 = r8; r->r9 = r9; r->r11 = r11; r->rcx = rcx;            \
    return rax;                                                                  \
}
DEFINE_CALL(vmcall, VMCALL)
DEFINE_CALL(vmmcall, VMMCALL)

static void check_instruction(const char *insn, long (*call)(unsigned, struct regs5 *))
{
    char name[64];
    struct regs5 r = { XENVER_version, 0, 0x3333, 0x4444, 0x5555, 0x6666, 0x7777, 0x8888 };
    long rc = call(__HYPERVISOR_xen_version, &r);
    long want = hypercall2(__HYPERVISOR_xen_version, XENVER_version, 0);
    snprintf(name, sizeof(name), "cpu_vmcall.%s_xen_version", insn);
    check(name, rc == want && rc == 0x40011, "got %#lx, the hypercall page gives %#lx", rc, want);

    snprintf(name, sizeof(name), "cpu_vmcall.%s_preserves_registers", insn);
    check(name, r.rdi == XENVER_version && r.rsi == 0 && r.rdx == 0x3333 && r.r10 == 0x4444 &&
          r.r8 == 0x5555 && r.r9 == 0x6666 && r.r11 == 0x7777 && r.rcx == 0x8888,
          "rdi %#lx rsi %#lx rdx %#lx r10 %#lx r8 %#lx r9 %#lx r11 %#lx rcx %#lx",
          r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9, r.r11, r.rcx);

    /* Arguments reach the hypervisor: a console write of a known line. */
    static char line[64];
    int n = snprintf(line, sizeof(line), "INFO cpu_vmcall_console_%s ok\n", insn);
    struct regs5 w = { CONSOLEIO_write, (unsigned long)n, (unsigned long)line, 0, 0, 0, 0, 0 };
    snprintf(name, sizeof(name), "cpu_vmcall.%s_console_write", insn);
    check_eq(name, call(__HYPERVISOR_console_io, &w), 0);

    /* Errors come back the same way. */
    struct regs5 bad = { 99, 0, 0, 0, 0, 0, 0, 0 };
    snprintf(name, sizeof(name), "cpu_vmcall.%s_unknown_subop", insn);
    check_eq(name, call(__HYPERVISOR_event_channel_op, &bad), ENOSYS_);
    struct regs5 none = { 0 };
    snprintf(name, sizeof(name), "cpu_vmcall.%s_unknown_hypercall", insn);
    check_eq(name, call(63, &none), ENOSYS_);
}

static uint8_t user_stack[16384] ALIGNED(16);
#define USTACK (user_stack + sizeof(user_stack))

static void user_vmcall(void)
{
    long rax = __HYPERVISOR_xen_version;
    asm volatile(VMCALL : "+a"(rax) : "D"(XENVER_version), "S"(0) : "memory");
    user_return(rax);
}

static void user_vmmcall(void)
{
    long rax = __HYPERVISOR_xen_version;
    asm volatile(VMMCALL : "+a"(rax) : "D"(XENVER_version), "S"(0) : "memory");
    user_return(rax);
}

int guest_main(void)
{
    uint32_t a, b, c, d;
    cpuid(0, 0, &a, &b, &c, &d);
    char vendor[13];
    memcpy(vendor, &b, 4);
    memcpy(vendor + 4, &d, 4);
    memcpy(vendor + 8, &c, 4);
    vendor[12] = 0;
    info("cpu_vmcall_vendor", "%s", vendor);

    check_instruction("vmcall", vmcall);
    check_instruction("vmmcall", vmmcall);

    /* From ring 3 (IOPL 0: no port I/O needed): -EPERM, and no fault. */
    long rc = run_user(user_vmcall, USTACK, 0);
    check("cpu_vmcall.vmcall_from_ring3_eperm", rc == EPERM_ && !user_fault.faulted,
          "got %ld (faulted %d vector %lu rip %#lx)", rc, user_fault.faulted,
          user_fault.vector, user_fault.rip);
    rc = run_user(user_vmmcall, USTACK, 0);
    check("cpu_vmcall.vmmcall_from_ring3_eperm", rc == EPERM_ && !user_fault.faulted,
          "got %ld (faulted %d vector %lu rip %#lx)", rc, user_fault.faulted,
          user_fault.vector, user_fault.rip);
    return 0;
}
