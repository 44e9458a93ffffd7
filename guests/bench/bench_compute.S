/*
 * bench_compute: guest ring-0 compute (boot64.S does the rest): %rbx iterations of a
 * fixed 5-instruction integer loop, the same loop benchmarks/compute_ref.c runs natively.
 */
        .text
        .globl bench_main
bench_main:
1:      add     %rbx, %rax
        xor     %rax, %rcx
        inc     %rdx
        dec     %rbx
        jnz     1b
        ret
