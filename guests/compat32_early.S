/*
 * compat32 guest, part 1: runs from the runtime's PVH entry in 32-bit
 * protected mode with paging OFF, before the runtime sets up anything
 * (the runtime calls early32_hook, a weak symbol, if a guest defines it).
 *
 * Discovers Xen (CPUID 0x40000000 + k*0x100), installs the hypercall page by
 * writing its physical address to the MSR from leaf base+2, and makes
 * hypercalls with the 32-bit convention (%ebx, %ecx, %edx, %esi, %edi; result
 * in %eax): console_io(CONSOLEIO_write) and xen_version(XENVER_version).
 * Results are left in early32_* variables for the 64-bit tests.
 */
#define XEN_SIG_EBX 0x566e6558
#define XEN_SIG_ECX 0x65584d4d
#define XEN_SIG_EDX 0x4d4d566e

        .code32
        .text
        .globl early32_hook
early32_hook:
        pushal
        movl    %cr0, %eax
        movl    %eax, early32_cr0

        movl    $0x40000000, %esi
1:      movl    %esi, %eax
        xorl    %ecx, %ecx
        cpuid
        cmpl    $XEN_SIG_EBX, %ebx
        jne     2f
        cmpl    $XEN_SIG_ECX, %ecx
        jne     2f
        cmpl    $XEN_SIG_EDX, %edx
        je      found
2:      addl    $0x100, %esi
        cmpl    $0x40010000, %esi
        jb      1b
        /* No Xen: say so on debugcon (QEMU) and go on. */
        movl    $msg_noxen, %esi
        movl    $msg_noxen_len, %ecx
        movw    $0xe9, %dx
        rep outsb
        jmp     out

found:
        movl    $1, early32_found
        leal    2(%esi), %eax           /* leaf base+2: ebx = MSR index */
        xorl    %ecx, %ecx
        cpuid
        movl    %ebx, %ecx
        movl    $hypercall_page, %eax   /* physical == linear: paging is off */
        xorl    %edx, %edx
        wrmsr
        cmpb    $0xc3, hypercall_page
        je      out
        movl    $1, early32_page_ok

        /* console_io(CONSOLEIO_write, len, msg) */
        movl    $0, %ebx
        movl    $msg_len, %ecx
        movl    $msg, %edx
        call    hypercall_page + 18 * 32
        movl    %eax, early32_console_rc

        /* xen_version(XENVER_version, NULL) */
        xorl    %ebx, %ebx
        xorl    %ecx, %ecx
        call    hypercall_page + 17 * 32
        movl    %eax, early32_version

        /* xen_version(XENVER_extraversion, early32_extra) */
        movl    $1, %ebx
        movl    $early32_extra, %ecx
        call    hypercall_page + 17 * 32
        movl    %eax, early32_extra_rc
out:
        popal
        ret

        .section .rodata
msg:    .ascii "INFO compat32_early hello from 32-bit, paging off\n"
        .set msg_len, . - msg
msg_noxen:
        .ascii "INFO compat32_early no Xen found from 32-bit, paging off\n"
        .set msg_noxen_len, . - msg_noxen

        .data
        .p2align 2
        .globl early32_found, early32_page_ok, early32_console_rc, early32_version
        .globl early32_cr0, early32_extra, early32_extra_rc
early32_found:      .long 0
early32_page_ok:    .long 0
early32_console_rc: .long 0x7fffffff
early32_version:    .long 0x7fffffff
early32_extra_rc:   .long 0x7fffffff
early32_cr0:        .long 0
early32_extra:      .fill 16, 1, 0
