/*
 * smp_atomic: locked instructions are atomic between vCPUs (needs `--vcpus 2`).
 *
 * On x86 a `lock`-prefixed read-modify-write (and xchg with memory) is indivisible: no other
 * processor's access to that memory comes between its read and its write (SDM vol 3 §9.1.2).
 * Every SMP kernel's spinlocks, reference counts and per-CPU bitmaps rest on it, and so does
 * Xen's event delivery: the guest clears evtchn_pending bits with `lock btr` while the
 * hypervisor sets others in the same word. A CPU that performs a locked RMW as a plain load and
 * store loses updates; for Linux that is two CPUs inside one spinlock, then soft lockups and
 * BUG()s in whatever that lock guarded.
 *
 * Both vCPUs run the same loop at the same time: `lock incl`, `lock xadd`, a spinlock
 * (`lock cmpxchg` acquire, plain store release) guarding a plain increment, `xchg` as a
 * test-and-set lock, and `lock bts`/`lock btr` on their own bits of one shared word (a
 * bit lost or resurrected shows up as a wrong final word or a failed btr).
 *
 * cmdline: rounds=<n> (iterations per vCPU, default 300000).
 * INFO keys: rounds, ns (elapsed on vCPU 0).
 */
#include "guest.h"
#include "evtchn.h"

static volatile uint32_t counter, xadd_sum, locked_plain, xchg_plain;
static volatile uint32_t spin, xlock;
static volatile uint64_t bits;
static volatile uint64_t bit_errors[2];
static volatile unsigned ready, go, finished;
static unsigned long rounds = 300000;

static inline void lock_incl(volatile uint32_t *p) { asm volatile("lock incl %0" : "+m"(*p)); }
static inline uint32_t lock_xadd(volatile uint32_t *p, uint32_t v)
{
    asm volatile("lock xaddl %0, %1" : "+r"(v), "+m"(*p) :: "memory");
    return v;
}
static inline bool cas(volatile uint32_t *p, uint32_t old, uint32_t new)
{
    uint32_t prev = old;
    asm volatile("lock cmpxchgl %2, %1" : "+a"(prev), "+m"(*p) : "r"(new) : "memory");
    return prev == old;
}
static inline uint32_t xchg32(volatile uint32_t *p, uint32_t v)
{
    asm volatile("xchgl %0, %1" : "+r"(v), "+m"(*p) :: "memory");
    return v;
}
static inline bool lock_bts(volatile uint64_t *p, unsigned bit)
{
    bool old;
    asm volatile("lock btsq %2, %0" : "+m"(*p), "=@ccc"(old) : "r"((uint64_t)bit) : "memory");
    return old;
}
static inline bool lock_btr(volatile uint64_t *p, unsigned bit)
{
    bool old;
    asm volatile("lock btrq %2, %0" : "+m"(*p), "=@ccc"(old) : "r"((uint64_t)bit) : "memory");
    return old;
}

static void work(unsigned cpu)
{
    for (unsigned long i = 0; i < rounds; i++) {
        lock_incl(&counter);
        lock_xadd(&xadd_sum, 3);
        while (!cas(&spin, 0, 1))
            cpu_relax();
        locked_plain = locked_plain + 1;
        barrier();
        spin = 0;
        while (xchg32(&xlock, 1))
            cpu_relax();
        xchg_plain = xchg_plain + 1;
        barrier();
        xlock = 0;
        /* Each vCPU owns 32 bits of `bits`: set one, clear it; the other vCPU's RMWs on the
         * same word must neither clear it early nor bring it back. */
        unsigned bit = cpu * 32 + (i & 31);
        if (lock_bts(&bits, bit) || !lock_btr(&bits, bit))
            bit_errors[cpu]++;
    }
}

static void ap_worker(unsigned cpu)
{
    ready = 1;
    while (!go)
        cpu_relax();
    work(1);
    finished = 1;
}

int guest_main(void)
{
    const char *r = cmdline_get("rounds");
    if (r)
        rounds = strtoul(r, NULL, 10);
    long rc = evtchn_init(UPCALL_CALLBACK_VECTOR);
    check_eq("smp_atomic.evtchn_init", rc, 0);
    rc = smp_initialise(1, ap_worker);
    check_eq("smp_atomic.initialise_vcpu1", rc, 0);
    if (rc == 0)
        rc = vcpu_up(1);
    check_eq("smp_atomic.up_vcpu1", rc, 0);
    if (rc)
        return 0;
    uint64_t end = now_ns() + WAIT_BOUND_NS;
    while (!ready && now_ns() < end)
        cpu_relax();
    check("smp_atomic.vcpu1_started", ready, "vCPU 1 did not start");
    if (!ready)
        return 0;
    uint64_t t0 = now_ns();
    go = 1;
    work(0);
    /* vCPU 1 may be far behind on a busy host: wait for it, bounded only by progress. */
    uint32_t last = counter;
    end = now_ns() + WAIT_BOUND_NS;
    while (!finished && now_ns() < end) {
        block_until(now_ns() + 1000000ULL);
        if (counter != last) {
            last = counter;
            end = now_ns() + WAIT_BOUND_NS;
        }
    }
    check("smp_atomic.vcpu1_finished", finished, "vCPU 1 stopped making progress");
    info("rounds", "%lu", rounds);
    info("ns", "%lu", (unsigned long)(now_ns() - t0));
    unsigned long want = 2 * rounds;
    check("smp_atomic.lock_inc", counter == want, "lock incl: %u of %lu increments",
          counter, want);
    check("smp_atomic.lock_xadd", xadd_sum == 3 * want, "lock xadd: sum %u, expected %lu",
          xadd_sum, 3 * want);
    check("smp_atomic.cmpxchg_spinlock", locked_plain == want,
          "two vCPUs inside a cmpxchg spinlock: %u of %lu increments", locked_plain, want);
    check("smp_atomic.xchg_lock", xchg_plain == want,
          "two vCPUs inside an xchg lock: %u of %lu increments", xchg_plain, want);
    check("smp_atomic.bts_btr", bit_errors[0] == 0 && bit_errors[1] == 0 && bits == 0,
          "lock bts/btr: %lu + %lu bits lost or resurrected, word %#lx",
          (unsigned long)bit_errors[0], (unsigned long)bit_errors[1], (unsigned long)bits);
    return 0;
}
