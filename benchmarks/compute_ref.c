/*
 * compute_ref: the native reference for the guest-compute benchmark.
 *
 * Runs the loop of guests/bench/bench_compute.S (5 instructions per iteration) on the host
 * CPU and prints the nanoseconds it took.
 *
 * usage: compute_ref ITERATIONS
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s ITERATIONS\n", argv[0]);
        return 2;
    }
    uint64_t n = strtoull(argv[1], NULL, 0), a = 0, c = 0, d = 0;
    uint64_t t0 = now_ns();
    asm volatile("1: add %%rbx, %%rax\n\t"
                 "xor %%rax, %%rcx\n\t"
                 "inc %%rdx\n\t"
                 "dec %%rbx\n\t"
                 "jnz 1b"
                 : "+a"(a), "+b"(n), "+c"(c), "+d"(d) :: "cc");
    printf("%llu\n", (unsigned long long)(now_ns() - t0));
    return 0;
}
