/*
 * cpu_cpuid: CPUID that a guest can plan with (issue 10, item 5).
 *
 * Checks, from inside:
 *  - leaves 0x15 (TSC/crystal ratio) and 0x16 (base/max/bus MHz) are in range
 *    and agree with the TSC frequency Xen's leaf base+3 gives (subleaf 0 ECX,
 *    kHz), as Linux's native_calibrate_tsc / cpu_khz_from_cpuid compute it;
 *  - the TSC advances at that rate against Xen system time: an order check,
 *    within +-20 % over ~200 ms of system time measured here, never a speed;
 *  - features pyxen does not offer are not advertised: VMX (leaf 1 ECX bit 5),
 *    SVM (0x80000001 ECX bit 2), UMIP (leaf 7 ECX bit 2);
 *  - so a write setting CR4.VMXE or CR4.UMIP raises #GP(0), and CR4 keeps
 *    its value.
 *
 * INFO keys:
 *   max_leaf <hex>          leaf 0 EAX
 *   xen_tsc_khz <n>         leaf base+3 subleaf 0 ECX
 *   leaf15 <eax> <ebx> <ecx>   denominator, numerator, crystal Hz
 *   leaf15_tsc_khz <n>      crystal_khz * numerator / denominator (Linux's sum)
 *   leaf16 <eax> <ebx> <ecx>   base MHz, max MHz, bus MHz
 *   tsc_ratio_ppm <n>       observed TSC ticks vs system time at xen_tsc_khz
 *   cr4 <hex>               CR4 as the guest runs
 */
#include "guest.h"

#define CR4_VMXE (1UL << 13)
#define CR4_UMIP (1UL << 11)
#define LEAF1_ECX_VMX (1U << 5)
#define LEAF7_ECX_UMIP (1U << 2)
#define EXTD1_ECX_SVM (1U << 2)

static inline uint64_t read_cr4(void)
{
    uint64_t v;
    asm volatile("mov %%cr4, %0" : "=r"(v));
    return v;
}

/* Write CR4 with a kernel-fault catcher armed: whether the write faulted. */
static __attribute__((noinline, noclone)) bool cr4_write_faulted(uint64_t value)
{
    extern char cpu_cpuid_cr4_done[];
    arm_kernel_fault(cpu_cpuid_cr4_done);
    asm volatile("mov %0, %%cr4\n\t"
                 ".globl cpu_cpuid_cr4_done\ncpu_cpuid_cr4_done:"
                 :: "r"(value) : "memory");
    disarm_kernel_fault();
    return user_fault.faulted;
}

static void check_cr4_bit(const char *name, uint64_t bit)
{
    uint64_t before = read_cr4();
    bool faulted = cr4_write_faulted(before | bit);
    uint64_t after = read_cr4();
    if (!faulted && (after & bit))
        cr4_write_faulted(after & ~bit);  /* take it back: nothing below should run with it */
    check(name, faulted && user_fault.vector == 13 && user_fault.error == 0 && after == before,
          "mov to CR4 setting %#lx: %s (vector %lu error %#lx), CR4 %#lx -> %#lx",
          (unsigned long)bit, faulted ? "faulted" : "accepted",
          faulted ? (unsigned long)user_fault.vector : 0UL,
          faulted ? (unsigned long)user_fault.error : 0UL,
          (unsigned long)before, (unsigned long)after);
}

/* A TSC reading bracketed by two system-time reads (the tightest of a few). */
struct tsc_sample { uint64_t before, tsc, after; };

static struct tsc_sample sample(void)
{
    struct tsc_sample best = { 0, 0, ~0ULL }, s;
    for (int i = 0; i < 5; i++) {
        s.before = xen_now_ns();
        s.tsc = rdtsc();
        s.after = xen_now_ns();
        if (i == 0 || s.after - s.before < best.after - best.before)
            best = s;
    }
    return best;
}

static void check_tsc_rate(uint32_t tsc_khz)
{
    struct tsc_sample s0 = sample();
    sleep_until(s0.after + 200000000ULL);
    struct tsc_sample s1 = sample();
    /* The system time between the two TSC reads lies within these bounds. */
    uint64_t lo_ns = s1.before - s0.after, hi_ns = s1.after - s0.before;
    uint64_t ticks = s1.tsc - s0.tsc;
    uint64_t lo_ticks = lo_ns / 1000 * tsc_khz / 1000 * 8 / 10;
    uint64_t hi_ticks = hi_ns / 1000 * tsc_khz / 1000 * 12 / 10;
    uint64_t mid_ticks = (lo_ns + hi_ns) / 2 / 1000 * tsc_khz / 1000;
    long ppm = mid_ticks ? (long)(((int64_t)ticks - (int64_t)mid_ticks) * 1000000
                                  / (int64_t)mid_ticks) : 0;
    info("tsc_ratio_ppm", "%ld", ppm);
    check("cpu_cpuid.tsc_rate", lo_ns >= 190000000ULL && ticks >= lo_ticks && ticks <= hi_ticks,
          "%lu TSC ticks while system time advanced %lu..%lu ns (at %u kHz: %lu..%lu)",
          (unsigned long)ticks, (unsigned long)lo_ns, (unsigned long)hi_ns, tsc_khz,
          (unsigned long)lo_ticks, (unsigned long)hi_ticks);
}

int guest_main(void)
{
    uint32_t a, b, c, d;
    cpuid(0, 0, &a, &b, &c, &d);
    uint32_t max_leaf = a;
    info("max_leaf", "%#x", max_leaf);
    check("cpu_cpuid.max_leaf", max_leaf >= 0x16, "max basic leaf %#x < 0x16", max_leaf);

    uint32_t xen_tsc_khz = 0;
    if (boot.xen && boot.cpuid_max_leaf >= boot.cpuid_base + 3) {
        cpuid(boot.cpuid_base + 3, 0, &a, &b, &c, &d);
        xen_tsc_khz = c;
    }
    info("xen_tsc_khz", "%u", xen_tsc_khz);
    check("cpu_cpuid.xen_tsc_khz", xen_tsc_khz != 0, "leaf base+3 gives no TSC frequency");

    /* Leaf 0x15 as Linux reads it: crystal_khz = ECX / 1000, TSC = crystal * EBX / EAX. */
    cpuid(0x15, 0, &a, &b, &c, &d);
    info("leaf15", "%u %u %u", a, b, c);
    uint64_t khz15 = a ? (uint64_t)(c / 1000) * b / a : 0;
    info("leaf15_tsc_khz", "%lu", (unsigned long)khz15);
    check("cpu_cpuid.leaf15_present", a && b && c, "leaf 0x15 = %u %u %u", a, b, c);
    check("cpu_cpuid.leaf15_exact", a && (uint64_t)c * b == (uint64_t)xen_tsc_khz * 1000 * a,
          "ECX*EBX/EAX = %u*%u/%u Hz, Xen's leaf says %u kHz", c, b, a, xen_tsc_khz);
    check("cpu_cpuid.leaf15_linux", khz15 == xen_tsc_khz,
          "Linux would compute %lu kHz, Xen's leaf says %u", (unsigned long)khz15, xen_tsc_khz);

    cpuid(0x16, 0, &a, &b, &c, &d);
    info("leaf16", "%u %u %u", a & 0xffff, b & 0xffff, c & 0xffff);
    uint32_t base_mhz = a & 0xffff, max_mhz = b & 0xffff, bus_mhz = c & 0xffff;
    check("cpu_cpuid.leaf16", base_mhz == xen_tsc_khz / 1000 && max_mhz >= base_mhz && bus_mhz,
          "base %u MHz, max %u MHz, bus %u MHz for a %u kHz TSC", base_mhz, max_mhz, bus_mhz,
          xen_tsc_khz);

    if (map_shared_info() == 0 && xen_tsc_khz)
        check_tsc_rate(xen_tsc_khz);
    else
        test_fail("cpu_cpuid.tsc_rate", "no shared_info or no TSC frequency");

    cpuid(1, 0, &a, &b, &c, &d);
    check("cpu_cpuid.no_vmx", !(c & LEAF1_ECX_VMX), "leaf 1 ECX %#x advertises VMX", c);
    cpuid(7, 0, &a, &b, &c, &d);
    check("cpu_cpuid.no_umip", !(c & LEAF7_ECX_UMIP), "leaf 7 ECX %#x advertises UMIP", c);
    cpuid(0x80000000, 0, &a, &b, &c, &d);
    if (a >= 0x80000001) {
        cpuid(0x80000001, 0, &a, &b, &c, &d);
        check("cpu_cpuid.no_svm", !(c & EXTD1_ECX_SVM), "0x80000001 ECX %#x advertises SVM", c);
    }

    info("cr4", "%#lx", (unsigned long)read_cr4());
    check_cr4_bit("cpu_cpuid.cr4_vmxe_gp", CR4_VMXE);
    check_cr4_bit("cpu_cpuid.cr4_umip_gp", CR4_UMIP);
    return 0;
}
