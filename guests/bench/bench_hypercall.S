/*
 * bench_hypercall: the null-hypercall benchmark guest (boot64.S does the rest):
 * %rbx calls of xen_version(XENVER_version) through the hypercall page.
 */
#define HC_xen_version   17

        .text
        .globl bench_main
bench_main:
1:      xor     %edi, %edi              /* XENVER_version */
        xor     %esi, %esi
        call    hypercall_page + HC_xen_version * 32
        dec     %rbx
        jnz     1b
        ret
