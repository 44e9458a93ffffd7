/*
 * boot64: the common start of the standalone benchmark guests (no runtime).
 *
 * PVH entry → long mode (first GiB identity-mapped with 2 MiB pages, tables built
 * statically so no boot loop runs under emulation) → install the hypercall page via the
 * Xen MSR → bench_main(%rbx = `iterations`) → SCHEDOP_shutdown(poweroff). `iterations` is
 * patched in guest memory by the host (pyxen's benchmarks and the C reference VMM alike),
 * so every VMM runs the same instructions.
 */
#include <xen/elfnote.h>

#define XEN_MSR          0x40000000
#define HC_sched_op      29
#define SCHEDOP_shutdown 2

        .section .note.Xen, "a", @note
        .align 4
        .long 4, 4, XEN_ELFNOTE_PHYS32_ENTRY
        .asciz "Xen"
        .long _start

        .code32
        .section .text.entry, "ax"
        .globl _start
_start:
        lgdt    gdt_ptr
        mov     %cr4, %eax
        or      $0x20, %eax             /* PAE */
        mov     %eax, %cr4
        mov     $pml4, %eax
        mov     %eax, %cr3
        mov     $0xC0000080, %ecx       /* EFER.LME */
        rdmsr
        or      $0x100, %eax
        wrmsr
        mov     %cr0, %eax
        or      $0x80000001, %eax       /* PG | PE */
        mov     %eax, %cr0
        ljmp    $0x08, $long_mode

        .code64
long_mode:
        mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        lea     stack_top(%rip), %rsp
        mov     $hypercall_page, %eax   /* install the hypercall page */
        xor     %edx, %edx
        mov     $XEN_MSR, %ecx
        wrmsr
        mov     iterations(%rip), %rbx
        call    bench_main
        mov     $SCHEDOP_shutdown, %edi
        lea     poweroff(%rip), %rsi
        call    hypercall_page + HC_sched_op * 32
2:      hlt
        jmp     2b

        .data
        .align 8
        .globl iterations
iterations:
        .quad   1000
poweroff:
        .long   0                       /* SHUTDOWN_poweroff */
        .align 8
gdt:    .quad   0
        .quad   0x00AF9A000000FFFF      /* 64-bit code */
        .quad   0x00CF92000000FFFF      /* data */
gdt_ptr:
        .word   gdt_ptr - gdt - 1
        .long   gdt

        .align 4096
pml4:   .quad   pdpt + 0x3
        .fill   511, 8, 0
pdpt:   .quad   pd + 0x3
        .fill   511, 8, 0
pd:
        .set    i, 0
        .rept   512
        .quad   (i << 21) + 0x83        /* present, writable, 2 MiB */
        .set    i, i + 1
        .endr

        .bss
        .align 4096
        .globl hypercall_page
hypercall_page:
        .skip   4096
        .skip   4096
stack_top:
