/*
 * cpu_memory: the guest-physical memory map changes under running vCPUs
 * (needs `pyxen run --vcpus 3`).
 *
 * vCPUs 1 and 2 sweep an arena of pages without pause: they call code that
 * lives in the arena, check its data and write words of their own there
 * (vCPU 2 also makes a hypercall on each page, so its engine stops and
 * re-enters all the time). Every other arena page is a "victim": vCPU 0,
 * meanwhile, gives the victims back (XENMEM_decrease_reservation) and takes
 * them again (XENMEM_populate_physmap), and moves grant-table frame 0 between
 * two more pages of the arena (XENMEM_add_to_physmap, which frees the page it
 * leaves), round after round. Each change splits or merges the run of RAM
 * that holds the kernel's own code, stack and data.
 *
 * Semantics (Xen 4.17): xen/common/memory.c decrease_reservation /
 * guest_remove_page take the frame out of the p2m only; populate_physmap
 * gives a fresh page; xen/arch/x86/mm.c xenmem_add_to_physmap_one for a
 * grant frame frees whatever RAM was at the gfn and leaves the old gfn
 * empty. Nothing else in the physmap changes, whichever vCPU is running:
 * pages no one gave back keep their contents and stay RAM throughout.
 *
 * Checks: every hypercall's count; a populated page reads as zero; the
 * secondaries find their code, the data and their own writes intact on
 * every sweep (no fault, no all-ones read, no lost store); they make
 * progress while the changes go on (vCPU 0 waits for them, bounded, every
 * few rounds); vCPU 0 finds the arena intact at the end.
 *
 * cmdline: rounds=<n> (default 200). INFO keys: rounds, sweeps_vcpu<N>.
 */
#include "guest.h"
#include "evtchn.h"

#define MS 1000000ULL
#define NR_SECONDARY 2
#define ARENA_PAGES 64          /* even pages: kept; odd pages: victims */
#define NR_VICTIMS (ARENA_PAGES / 2 - 2)
#define GRANT_A (ARENA_PAGES - 3) /* the last two odd pages hold the grant frame */
#define GRANT_B (ARENA_PAGES - 1)
#define WORDS (PAGE_SIZE / 8)
#define CHECKED_WORDS 480       /* then one word per vCPU, then the code stub */
#define OWN_WORD 480
#define STUB_OFFSET (PAGE_SIZE - 64)
#define PROGRESS_EVERY 8

static uint8_t arena[ARENA_PAGES][PAGE_SIZE] ALIGNED(PAGE_SIZE);

/* Shared between vCPU 0 and the secondaries. */
static volatile bool go, stop;
static volatile uint64_t sweeps[MAX_VCPUS], stopped[MAX_VCPUS], errors[MAX_VCPUS];
static volatile uint32_t version_seen;
struct first_error { unsigned page, word; uint64_t want, got; const char *what; };
static struct first_error first[MAX_VCPUS];

static inline uint64_t pattern(unsigned page, unsigned word)
{
    return 0x9e3779b97f4a7c15ULL * (page * WORDS + word + 1);
}

static inline uint32_t stub_value(unsigned page) { return 0xc0de0000u | page; }

static void fill_keeper(unsigned page)
{
    uint64_t *w = (uint64_t *)arena[page];
    for (unsigned i = 0; i < CHECKED_WORDS; i++)
        w[i] = pattern(page, i);
    for (unsigned i = CHECKED_WORDS; i < WORDS; i++)
        w[i] = 0;
    /* mov $imm32, %eax; ret */
    uint8_t *s = arena[page] + STUB_OFFSET;
    uint32_t v = stub_value(page);
    s[0] = 0xb8;
    memcpy(s + 1, &v, 4);
    s[5] = 0xc3;
}

static void note_error(unsigned cpu, unsigned page, unsigned word, uint64_t want, uint64_t got,
                       const char *what)
{
    if (!errors[cpu])
        first[cpu] = (struct first_error){ page, word, want, got, what };
    errors[cpu]++;
}

/* ---- vCPUs 1 and 2 ---- */
static void sweeper(unsigned cpu)
{
    uint64_t n = 0;
    irq_disable();
    while (!go)
        cpu_relax();
    while (!stop) {
        for (unsigned p = 0; p < ARENA_PAGES; p += 2) {
            volatile uint64_t *w = (volatile uint64_t *)arena[p];
            uint32_t (*stub)(void) = (uint32_t (*)(void))(void *)(arena[p] + STUB_OFFSET);
            uint32_t r = stub();                /* code from a page next to a victim */
            if (r != stub_value(p))
                note_error(cpu, p, STUB_OFFSET / 8, stub_value(p), r, "code");
            unsigned i = (unsigned)((n * 7 + p) % CHECKED_WORDS);
            uint64_t got = w[i];
            if (got != pattern(p, i))
                note_error(cpu, p, i, pattern(p, i), got, "data");
            got = w[CHECKED_WORDS - 1];
            if (got != pattern(p, CHECKED_WORDS - 1))
                note_error(cpu, p, CHECKED_WORDS - 1, pattern(p, CHECKED_WORDS - 1), got, "data");
            got = w[OWN_WORD + cpu];
            if (got != n)                       /* what this vCPU stored on its last sweep */
                note_error(cpu, p, OWN_WORD + cpu, n, got, "own store");
            w[OWN_WORD + cpu] = n + 1;
            if (cpu == 2) {                     /* leave and re-enter the engine too */
                long v = HYPERVISOR_xen_version(XENVER_version, NULL);
                if ((uint32_t)v != version_seen)
                    note_error(cpu, p, 0, version_seen, (uint64_t)v, "hypercall");
            }
        }
        n++;
        sweeps[cpu] = n;
    }
    stopped[cpu] = 1;
    block_forever();
}

/* ---- vCPU 0 ---- */
static long reservation(unsigned op, xen_pfn_t *frames, unsigned n)
{
    struct xen_memory_reservation r = { .nr_extents = n, .extent_order = 0, .domid = DOMID_SELF };
    set_xen_guest_handle(r.extent_start, frames);
    return HYPERVISOR_memory_op(op, &r);
}

static long grant_frame_to(unsigned page)
{
    struct xen_add_to_physmap a = { .domid = DOMID_SELF, .space = XENMAPSPACE_grant_table,
                                    .idx = 0, .gpfn = pfn_of(arena[page]) };
    return HYPERVISOR_memory_op(XENMEM_add_to_physmap, &a);
}

static bool wait_until(volatile uint64_t *p, uint64_t target)
{
    uint64_t end = now_ns() + WAIT_BOUND_NS;
    while (*p < target) {
        if (now_ns() >= end)
            return false;
        block_until(now_ns() + 1 * MS);
    }
    return true;
}

static bool victim_zero(unsigned page)
{
    volatile uint64_t *w = (volatile uint64_t *)arena[page];
    return w[0] == 0 && w[WORDS / 2] == 0 && w[WORDS - 1] == 0;
}

int guest_main(void)
{
    long rc = evtchn_init(UPCALL_CALLBACK_VECTOR);
    check_eq("cpu_memory.evtchn_init", rc, 0);
    if (rc)
        return 0;
    unsigned nr = smp_nr_vcpus();
    info("vcpus", "%u", nr);
    if (!check("cpu_memory.vcpus", nr >= 1 + NR_SECONDARY, "the domain has %u vCPU(s): run with --vcpus 3", nr))
        return 0;
    const char *s = cmdline_get("rounds");
    unsigned rounds = s ? (unsigned)strtoul(s, NULL, 0) : 200;
    info("rounds", "%u", rounds);
    version_seen = (uint32_t)HYPERVISOR_xen_version(XENVER_version, NULL);

    xen_pfn_t victims[NR_VICTIMS];
    for (unsigned p = 0; p < ARENA_PAGES; p += 2)
        fill_keeper(p);
    for (unsigned i = 0; i < NR_VICTIMS; i++)
        victims[i] = pfn_of(arena[2 * i + 1]);
    check_eq("cpu_memory.grant_frame_first_place", grant_frame_to(GRANT_A), 0);

    for (unsigned cpu = 1; cpu <= NR_SECONDARY; cpu++) {
        rc = smp_initialise(cpu, sweeper);
        if (!rc)
            rc = vcpu_up(cpu);
        if (!check("cpu_memory.secondary_up", rc == 0, "vCPU %u: %ld", cpu, rc))
            return 0;
    }
    go = true;
    bool started = true;
    for (unsigned cpu = 1; cpu <= NR_SECONDARY; cpu++)
        started &= wait_until(&sweeps[cpu], 1);
    check("cpu_memory.secondaries_sweep", started, "sweeps before the changes: %lu %lu",
          (unsigned long)sweeps[1], (unsigned long)sweeps[2]);

    unsigned bad_decrease = 0, bad_count = 0, bad_populate = 0, not_zero = 0, bad_grant = 0;
    unsigned stalled = 0;
    uint64_t mark[MAX_VCPUS] = { 0 };
    for (unsigned r = 0; r < rounds; r++) {
        if (r % PROGRESS_EVERY == 0) {
            /* The secondaries must keep sweeping while the map keeps changing. */
            for (unsigned cpu = 1; cpu <= NR_SECONDARY; cpu++) {
                if (r && !wait_until(&sweeps[cpu], mark[cpu] + 1))
                    stalled++;
                mark[cpu] = sweeps[cpu];
            }
        }
        domid_t self = DOMID_SELF;
        long before = HYPERVISOR_memory_op(XENMEM_current_reservation, &self);
        rc = reservation(XENMEM_decrease_reservation, victims, NR_VICTIMS);
        bad_decrease += rc != NR_VICTIMS;
        bad_count += HYPERVISOR_memory_op(XENMEM_current_reservation, &self) != before - NR_VICTIMS;
        rc = reservation(XENMEM_populate_physmap, victims, NR_VICTIMS);
        bad_populate += rc != NR_VICTIMS;
        for (unsigned i = 0; i < NR_VICTIMS; i++) {
            not_zero += !victim_zero(2 * i + 1);
            ((volatile uint64_t *)arena[2 * i + 1])[0] = r + 1;  /* a page worth freeing */
        }
        bad_grant += grant_frame_to(r % 2 ? GRANT_A : GRANT_B) != 0;
    }
    check("cpu_memory.decrease_reservation", !bad_decrease, "%u of %u rounds did not give back %u pages",
          bad_decrease, rounds, NR_VICTIMS);
    check("cpu_memory.current_reservation", !bad_count, "%u of %u rounds: current_reservation did not fall by %u",
          bad_count, rounds, NR_VICTIMS);
    check("cpu_memory.populate_physmap", !bad_populate, "%u of %u rounds did not take back %u pages",
          bad_populate, rounds, NR_VICTIMS);
    check("cpu_memory.populated_pages_zeroed", !not_zero, "%u populated pages were not zero", not_zero);
    check("cpu_memory.grant_frame_moves", !bad_grant, "%u of %u add_to_physmap calls failed", bad_grant, rounds);
    check("cpu_memory.secondaries_progress", !stalled, "%u times a secondary made no sweep in %llu s",
          stalled, WAIT_BOUND_NS / 1000000000ULL);

    stop = true;
    for (unsigned cpu = 1; cpu <= NR_SECONDARY; cpu++) {
        bool ok = wait_until(&stopped[cpu], 1);
        char name[64];
        snprintf(name, sizeof(name), "cpu_memory.vcpu%u_stopped", cpu);
        check(name, ok, "vCPU %u did not finish its sweep (%lu sweeps)", cpu, (unsigned long)sweeps[cpu]);
        info("sweeps_vcpu", "%u %lu", cpu, (unsigned long)sweeps[cpu]);
        snprintf(name, sizeof(name), "cpu_memory.vcpu%u_memory_intact", cpu);
        struct first_error *e = &first[cpu];
        check(name, ok && !errors[cpu], "%lu bad reads; first: %s, page %u word %u: %#lx, expected %#lx",
              (unsigned long)errors[cpu], e->what ? e->what : "-", e->page, e->word,
              (unsigned long)e->got, (unsigned long)e->want);
    }

    /* vCPU 0's own look at everything no one gave back. */
    unsigned bad = 0;
    for (unsigned p = 0; p < ARENA_PAGES; p += 2) {
        volatile uint64_t *w = (volatile uint64_t *)arena[p];
        for (unsigned i = 0; i < CHECKED_WORDS; i++)
            bad += w[i] != pattern(p, i);
        for (unsigned cpu = 1; cpu <= NR_SECONDARY; cpu++)
            bad += w[OWN_WORD + cpu] != sweeps[cpu];
    }
    check("cpu_memory.kept_pages_intact", !bad, "%u words of the kept pages changed", bad);
    irq_disable();
    return 0;
}
