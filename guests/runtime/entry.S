/*
 * pyxen guest kit runtime: PVH entry, GDT/IDT/TSS, page tables, long mode,
 * exception stubs, the hypercall page, ring-3 and compat-mode trampolines.
 *
 * Boot contract (Xen PVH): entered in 32-bit flat protected mode, paging off,
 * interrupts off, %ebx = physical address of struct hvm_start_info, no stack.
 * The image is linked at its physical address (identity), so symbol values are
 * usable as physical addresses before paging is on.
 */
#include "segments.h"

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define MSR_EFER 0xc0000080

/* ------------------------------------------------------------------ */
/* The PVH entry note. Its section is SHT_NOTE; the linker script decides
 * whether it also gets a PT_NOTE program header.                        */
        .section .note.Xen, "a", @note
        .p2align 2
        .long 4                 /* namesz: "Xen\0" */
        .long 4                 /* descsz */
        .long XEN_ELFNOTE_PHYS32_ENTRY
        .asciz "Xen"
        .long _start32          /* physical entry point */
        .p2align 2

/* ------------------------------------------------------------------ */
        .section .text.entry, "ax"
        .code32
        .globl _start32
_start32:
        cli
        cld
        movl    %ebx, pvh_start_info_pa
        movl    $boot_stack_top, %esp

        /* Optional 32-bit, paging-off hook (weak; the compat32 guest has one).
         * Called with %ebx = start info, on our stack, before anything else. */
        movl    $early32_hook, %eax
        testl   %eax, %eax
        jz      1f
        pushl   %ebx
        call    *%eax
        popl    %ebx
1:
        lgdt    gdt_desc32
        movw    $KDS, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        xorw    %ax, %ax
        movw    %ax, %fs
        movw    %ax, %gs

        /* Page tables: PML4[0] -> PDPT, PDPT[0] -> PD, PD = 512 x 2 MiB,
         * identity-mapping the first 1 GiB, present|rw|user (ring-3 tests
         * run on these pages too). Zero the top two levels first. */
        xorl    %eax, %eax
        movl    $pml4, %edi
        movl    $1024, %ecx
        rep stosl
        movl    $pdpt, %edi
        movl    $1024, %ecx
        rep stosl

        movl    $pdpt, %eax
        orl     $0x7, %eax
        movl    %eax, pml4
        movl    $pd_low, %eax
        orl     $0x7, %eax
        movl    %eax, pdpt

        movl    $pd_low, %edi
        movl    $0x87, %eax             /* P|RW|US|PS */
        xorl    %ecx, %ecx
2:      movl    %eax, (%edi,%ecx,8)
        movl    $0, 4(%edi,%ecx,8)
        addl    $0x200000, %eax
        incl    %ecx
        cmpl    $512, %ecx
        jb      2b

        /* CR4.PAE */
        movl    %cr4, %eax
        orl     $0x20, %eax
        movl    %eax, %cr4
        movl    $pml4, %eax
        movl    %eax, %cr3
        /* EFER.LME */
        movl    $MSR_EFER, %ecx
        rdmsr
        orl     $0x100, %eax
        wrmsr
        /* CR0: PG | WP | PE (WP so that supervisor writes honour RO PTEs) */
        movl    %cr0, %eax
        orl     $0x80010001, %eax
        movl    %eax, %cr0
        ljmp    $KCS64, $long_entry

        .code64
long_entry:
        movw    $KDS, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        leaq    boot_stack_top(%rip), %rsp
        xorl    %ebp, %ebp
        call    runtime_main
3:      cli
        hlt
        jmp     3b

/* ------------------------------------------------------------------ */
/* Exception/interrupt stubs: vectors 0-31 and 0x80.                   */
        .text
.macro TRAP_NOERR vec
        .p2align 4
trap_stub_\vec:
        pushq   $0
        pushq   $\vec
        jmp     trap_common
.endm
.macro TRAP_ERR vec
        .p2align 4
trap_stub_\vec:
        pushq   $\vec
        jmp     trap_common
.endm

TRAP_NOERR 0
TRAP_NOERR 1
TRAP_NOERR 2
TRAP_NOERR 3
TRAP_NOERR 4
TRAP_NOERR 5
TRAP_NOERR 6
TRAP_NOERR 7
TRAP_ERR   8
TRAP_NOERR 9
TRAP_ERR   10
TRAP_ERR   11
TRAP_ERR   12
TRAP_ERR   13
TRAP_ERR   14
TRAP_NOERR 15
TRAP_NOERR 16
TRAP_ERR   17
TRAP_NOERR 18
TRAP_NOERR 19
TRAP_NOERR 20
TRAP_ERR   21
TRAP_NOERR 22
TRAP_NOERR 23
TRAP_NOERR 24
TRAP_NOERR 25
TRAP_NOERR 26
TRAP_NOERR 27
TRAP_NOERR 28
TRAP_ERR   29
TRAP_ERR   30
TRAP_NOERR 31
TRAP_NOERR 128

        .section .rodata
        .p2align 3
        .globl trap_stub_table
trap_stub_table:
        .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .quad trap_stub_\v
        .endr
        .globl trap_stub_int80
trap_stub_int80:
        .quad trap_stub_128

        .text
/* Frame layout (struct trap_frame in runtime.h): r15..rax, vector, error,
 * then the hardware frame rip, cs, rflags, rsp, ss. */
trap_common:
        pushq   %rax
        pushq   %rbx
        pushq   %rcx
        pushq   %rdx
        pushq   %rsi
        pushq   %rdi
        pushq   %rbp
        pushq   %r8
        pushq   %r9
        pushq   %r10
        pushq   %r11
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        cld
        movq    %rsp, %rdi
        movq    %rsp, %rbx
        andq    $-16, %rsp
        call    trap_handler
        movq    %rbx, %rsp
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %r11
        popq    %r10
        popq    %r9
        popq    %r8
        popq    %rbp
        popq    %rdi
        popq    %rsi
        popq    %rdx
        popq    %rcx
        popq    %rbx
        popq    %rax
        addq    $16, %rsp
        iretq

/* ------------------------------------------------------------------ */
/* long run_user(void (*fn)(void), void *user_stack_top, unsigned iopl)
 * Enter ring 3 at fn with the given stack and IOPL (iopl & 3); IF stays
 * clear unless iopl has USER_IRQS (0x200).
 * Returns when ring 3 does `int $0x80` (value = user's %rax) or faults
 * (the trap handler calls resume_kernel_from_user).                    */
        .globl run_user_raw
run_user_raw:
        pushq   %rbx
        pushq   %rbp
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        movq    %rsp, user_saved_rsp(%rip)
        pushq   $(UDS | 3)
        pushq   %rsi
        pushfq
        popq    %rax
        andq    $~0x3200, %rax          /* clear IF and IOPL */
        movl    %edx, %ecx
        andl    $0x200, %ecx            /* USER_IRQS: IF on in ring 3 */
        orq     %rcx, %rax
        andl    $3, %edx
        shll    $12, %edx
        orq     %rdx, %rax
        pushq   %rax
        pushq   $(UCS64 | 3)
        pushq   %rdi
        movw    $(UDS | 3), %ax
        movw    %ax, %ds
        movw    %ax, %es
        xorl    %eax, %eax
        xorl    %ebx, %ebx
        xorl    %ecx, %ecx
        xorl    %edx, %edx
        xorl    %esi, %esi
        xorl    %edi, %edi
        xorl    %ebp, %ebp
        iretq

/* void resume_kernel_from_user(long value) -- never returns */
        .globl resume_kernel_from_user
resume_kernel_from_user:
        movw    $KDS, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movq    %rdi, %rax
        movq    user_saved_rsp(%rip), %rsp
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbp
        popq    %rbx
        ret

/* ------------------------------------------------------------------ */
/* long compat_hypercall(unsigned nr, a1, a2, a3, a4, a5)
 * Far-transfer into the 32-bit compat code segment (CS.L=0), do the
 * hypercall with the 32-bit convention (ebx, ecx, edx, esi, edi), come
 * back to 64-bit mode. Returns the sign-extended %eax.                  */
        .globl compat_hypercall
compat_hypercall:
        pushq   %rbx
        pushq   %rbp
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        movq    %rsp, compat_saved_rsp(%rip)
        /* stub address = hypercall_page + nr*32 (below 4 GiB) */
        movl    %edi, %eax
        shll    $5, %eax
        leaq    hypercall_page(%rip), %rbp
        addl    %eax, %ebp
        movl    %esi, %ebx              /* a1 */
        movl    %edx, %r12d             /* a2 -> ecx */
        movl    %ecx, %edx              /* a3 -> edx */
        movl    %r8d, %esi              /* a4 -> esi */
        movl    %r9d, %edi              /* a5 -> edi */
        movl    %r12d, %ecx
        pushq   $KCS32
        leaq    compat_code(%rip), %rax
        pushq   %rax
        lretq
        .code32
compat_code:
        call    *%ebp
        ljmp    $KCS64, $compat_back
        .code64
compat_back:
        movq    compat_saved_rsp(%rip), %rsp
        movslq  %eax, %rax
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbp
        popq    %rbx
        ret

/* ------------------------------------------------------------------ */
        .data
        .p2align 4
        .globl gdt
gdt:
        .quad 0                         /* 0x00 null */
        .quad 0x00af9a000000ffff        /* 0x08 KCS64 */
        .quad 0x00cf92000000ffff        /* 0x10 KDS */
        .quad 0x00cf9a000000ffff        /* 0x18 KCS32 (compat) */
        .quad 0x00cff2000000ffff        /* 0x20 UDS (DPL3) */
        .quad 0x00affa000000ffff        /* 0x28 UCS64 (DPL3) */
        .quad 0x00cffa000000ffff        /* 0x30 UCS32 (DPL3) */
        .globl gdt_tss
gdt_tss:
        .quad 0                         /* 0x38 TSS (filled at run time) */
        .quad 0
gdt_end:
gdt_desc32:
        .word gdt_end - gdt - 1
        .long gdt
        .globl gdt_desc64
gdt_desc64:
        .word gdt_end - gdt - 1
        .quad gdt

        .globl pvh_start_info_pa
pvh_start_info_pa:
        .long 0
        .long 0
        .p2align 3
user_saved_rsp:
        .quad 0
compat_saved_rsp:
        .quad 0

        .weak early32_hook

/* The hypercall page: one 4 KiB page, pre-filled with `ret` (0xc3), which
 * the hypervisor overwrites when we write its guest-physical address to the
 * Xen MSR. Byte 0 still being 0xc3 afterwards means the write had no effect. */
        .section .data.hypercall_page, "aw"
        .p2align 12
        .globl hypercall_page
hypercall_page:
        .fill 4096, 1, 0xc3

        .section .bss.pagetables, "aw", @nobits
        .p2align 12
        .globl pml4, pdpt, pd_low
pml4:   .skip 4096
pdpt:   .skip 4096
pd_low: .skip 4096

        .section .bss.stack, "aw", @nobits
        .p2align 12
        .globl boot_stack_top, trap_stack_top
boot_stack:
        .skip 65536
boot_stack_top:
        .skip 16384
trap_stack_top:
