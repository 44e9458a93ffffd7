/*
 * Event-channel upcall entry and the AP (secondary vCPU) entry point.
 * Used only by guests that call evtchn_init() / smp_initialise().
 */
#include "segments.h"

        .text
/* The upcall vector's interrupt gate. Interrupts arrive at CPL0 on the
 * current stack (no IST, no TSS stack switch). Save the caller-saved
 * registers, call evtchn_do_upcall() on a 16-byte aligned stack, iretq. */
        .globl evtchn_upcall_entry
        .p2align 4
evtchn_upcall_entry:
        cld
        pushq   %rax
        pushq   %rcx
        pushq   %rdx
        pushq   %rsi
        pushq   %rdi
        pushq   %r8
        pushq   %r9
        pushq   %r10
        pushq   %r11
        pushq   %rbx
        movq    %rsp, %rbx
        andq    $-16, %rsp
        call    evtchn_do_upcall
        movq    %rbx, %rsp
        popq    %rbx
        popq    %r11
        popq    %r10
        popq    %r9
        popq    %r8
        popq    %rdi
        popq    %rsi
        popq    %rdx
        popq    %rcx
        popq    %rax
        iretq

/* AP entry, reached through VCPUOP_initialise (VCPU_HVM_MODE_64B): long
 * mode, paging on with vCPU 0's page tables, CS = a 64-bit code segment
 * with selector 0 (xen/arch/x86/hvm/domain.c arch_set_info_hvm_guest),
 * GDTR/IDTR not set, interrupts off, %rsp = own stack, %rdi = vcpu id.
 * Load our GDT, reload CS/DS/ES/SS, then C (ap_main, which loads the IDT). */
        .globl ap_entry64
        .p2align 4
ap_entry64:
        cli
        cld
        lgdt    gdt_desc64(%rip)
        pushq   $KCS64
        leaq    1f(%rip), %rax
        pushq   %rax
        lretq
1:      movw    $KDS, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        xorl    %eax, %eax
        movw    %ax, %fs
        movw    %ax, %gs
        xorl    %ebp, %ebp
        andq    $-16, %rsp
        call    ap_main
2:      cli
        hlt
        jmp     2b
