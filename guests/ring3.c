/*
 * ring3: drop to CPL3 (iretq with user segments), try hypercalls from there,
 * come back to ring 0 with `int $0x80` through a DPL-3 IDT gate (under
 * kvm_pvm that int arrives as #UD at the int instruction; the runtime accepts
 * that too and says so in INFO ring3_int80).
 *
 * Xen 4.17 (hvm_hypercall in xen/arch/x86/hvm/hypercall.c): a hypercall from
 * CPL > 0 returns -EPERM without running. pyxen's hypercall stubs use port
 * I/O, which at CPL3 needs IOPL 3 to reach the hypervisor, so the tests run
 * the user code with IOPL 3; with IOPL 0 the CPU raises #GP before any exit
 * (reported as INFO ring3_iopl0_hypercall, not a TEST: it depends on the
 * stub instruction, and real Xen's vmcall stub would give -EPERM).
 *
 * INFO keys: ring3_iopl0_hypercall (the result or "#GP"), ring3_int80
 * ("vector 0x80" or "delivered as #UD"), ring3_loop_tsc.
 */
#include "guest.h"

static uint8_t user_stack[16384] ALIGNED(16);
#define USTACK (user_stack + sizeof(user_stack))

static void user_exit(long v) { user_return(v); }

static void user_version(void)
{
    user_exit(hypercall2(__HYPERVISOR_xen_version, XENVER_version, 0));
}

static const char user_line[] = "TEST ring3.console_write_from_user FAIL this line must not appear\n";
static void user_console(void)
{
    user_exit(hypercall3(__HYPERVISOR_console_io, CONSOLEIO_write, sizeof(user_line) - 1, user_line));
}

static void user_shutdown(void)
{
    struct sched_shutdown s = { .reason = SHUTDOWN_crash };
    user_exit(hypercall2(__HYPERVISOR_sched_op, SCHEDOP_shutdown, &s));
}

static void user_cpl(void)
{
    uint16_t cs;
    asm volatile("mov %%cs, %0" : "=r"(cs));
    user_exit(cs & 3);
}

static void user_int3(void) { asm volatile("int3"); user_exit(0); }

static void user_privileged(void) { asm volatile("cli"); user_exit(0); }

static void user_loop(void)
{
    uint64_t t0 = rdtsc();
    volatile uint64_t x = 0;
    for (int i = 0; i < 1000000; i++) x += i;
    user_exit((long)(rdtsc() - t0));
}

int guest_main(void)
{
    long rc;

    rc = run_user(user_cpl, USTACK, 3);
    check("ring3.enter_cpl3", rc == 3 && !user_fault.faulted, "CPL %ld (faulted %d vector %lu rip %#lx)",
          rc, user_fault.faulted, user_fault.vector, user_fault.rip);

    rc = run_user(user_version, USTACK, 3);
    check("ring3.hypercall_eperm", rc == EPERM_ && !user_fault.faulted,
          "expected %d got %ld (faulted %d vector %lu rip %#lx)", EPERM_, rc,
          user_fault.faulted, user_fault.vector, user_fault.rip);

    rc = run_user(user_console, USTACK, 3);
    check("ring3.console_write_eperm", rc == EPERM_ && !user_fault.faulted,
          "expected %d got %ld (faulted %d vector %lu rip %#lx)", EPERM_, rc, user_fault.faulted,
          user_fault.vector, user_fault.rip);

    rc = run_user(user_shutdown, USTACK, 3);
    check("ring3.shutdown_eperm", rc == EPERM_ && !user_fault.faulted,
          "expected %d got %ld (faulted %d vector %lu rip %#lx; still running, so no shutdown happened)",
          EPERM_, rc, user_fault.faulted, user_fault.vector, user_fault.rip);

    rc = run_user(user_version, USTACK, 0);
    if (user_fault.faulted)
        info("ring3_iopl0_hypercall", "#%s vector=%lu error=%#lx",
             user_fault.vector == 13 ? "GP" : "fault", user_fault.vector, user_fault.error);
    else
        info("ring3_iopl0_hypercall", "%ld", rc);

    info("ring3_int80", "%s", user_int80_was_ud ? "delivered as #UD" : "vector 0x80");

    rc = run_user(user_int3, USTACK, 3);
    check("ring3.int3_traps_to_kernel", rc == USER_FAULTED && user_fault.vector == 3,
          "expected #BP, got rc %#lx vector %lu", rc, user_fault.vector);

    rc = run_user(user_privileged, USTACK, 0);
    check("ring3.cli_faults", rc == USER_FAULTED && user_fault.vector == 13,
          "expected #GP for cli at IOPL 0, got rc %#lx vector %lu", rc, user_fault.vector);

    rc = run_user(user_loop, USTACK, 3);
    check("ring3.loop", rc > 0 && !user_fault.faulted, "rc %ld (faulted %d vector %lu rip %#lx)",
          rc, user_fault.faulted, user_fault.vector, user_fault.rip);
    info("ring3_loop_tsc", "%ld", rc);

    /* Back in ring 0, hypercalls work again. */
    check_eq("ring3.kernel_hypercall_after", HYPERVISOR_xen_version(XENVER_version, NULL), boot.version);
    return 0;
}
