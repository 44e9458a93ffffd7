/*
 * cpu_cross_code: code that one vCPU patches while another runs it (needs `--vcpus 2`).
 *
 * Linux changes a static key's jump while the other CPUs run (text_poke_bp): it writes an
 * int3 over the site's first byte, makes every CPU serialize, writes the rest, and puts the
 * new first byte over the int3. A CPU that meets the int3 meanwhile takes #BP; when its
 * handler finds no int3 there any more (another CPU finished the patch), it backs up over
 * the int3 and runs what is there now (kprobe_int3_handler). On the software CPU each vCPU
 * has its own engine with its own translated code, and one engine's stores do not
 * invalidate another's: the second vCPU kept running its old translation of the int3, took
 * #BP again at once, backed up again, forever (Debian's Linux hung like that at boot, in
 * key_set_index_key, about one boot in eight under load).
 *
 * vCPU 0 patches a function on its own page; vCPU 1 calls it after each step:
 *   1. vCPU 0 writes an int3 over the function's first byte (a nop); vCPU 1's call takes
 *      #BP once, and the handler goes on past it (as Linux emulates the patched insn);
 *   2. vCPU 0 puts the nop back; vCPU 1's call must run the nop: no #BP at all. The
 *      handler backs up as Linux's does; more than LOOP_LIMIT back-ups in a row are the
 *      hang, and it then gives up (so the guest can report it).
 *
 * - cpu_cross_code.vcpus, .secondary_up, .int3_taken, .removed_int3_not_rerun,
 *   .call_results
 */
#include "guest.h"
#include "evtchn.h"

#define LOOP_LIMIT 1000
#define STEPS 2
#define WAIT_NS (10ULL * 1000000000ULL)

static uint8_t patch_page[PAGE_SIZE] ALIGNED(PAGE_SIZE);   /* nothing else on this page */
static volatile unsigned step, done_step;
static volatile unsigned bp_hits[STEPS + 1], backups[STEPS + 1];
static volatile uint32_t results[STEPS + 1];
static volatile bool gave_up;

static bool on_breakpoint(struct trap_frame *f)
{
    uint64_t site = (uint64_t)(uintptr_t)patch_page;
    if (f->vector != 3 || f->rip != site + 1)
        return false;
    unsigned s = step;
    bp_hits[s]++;
    if (patch_page[0] == 0xcc)
        return true;                        /* the int3 is there: go on past it */
    if (++backups[s] >= LOOP_LIMIT) {
        gave_up = true;                     /* the hang: leave at the `mov` after the site */
        return true;
    }
    f->rip = site;                          /* gone since: back up and run what is there */
    return true;
}

static void runner(unsigned cpu)
{
    (void)cpu;
    irq_disable();
    uint32_t (*fn)(void) = (uint32_t (*)(void))(void *)patch_page;
    for (unsigned s = 1; s <= STEPS; s++) {
        while (step < s)
            cpu_relax();
        results[s] = fn();
        done_step = s;
    }
    block_forever();
}

static bool wait_done(unsigned s)
{
    uint64_t end = now_ns() + WAIT_NS;
    while (done_step < s)
        if (now_ns() >= end)
            return false;
    return true;
}

int guest_main(void)
{
    long rc = evtchn_init(UPCALL_CALLBACK_VECTOR);
    check_eq("cpu_cross_code.evtchn_init", rc, 0);
    unsigned nr = smp_nr_vcpus();
    if (rc || !check("cpu_cross_code.vcpus", nr >= 2, "the domain has %u vCPU(s): run with --vcpus 2", nr))
        return 0;
    /* nop; mov $7, %eax; ret */
    static const uint8_t fn[] = { 0x90, 0xb8, 7, 0, 0, 0, 0xc3 };
    memcpy(patch_page, fn, sizeof(fn));
    kernel_trap_hook = on_breakpoint;
    rc = smp_initialise(1, runner);
    if (!rc)
        rc = vcpu_up(1);
    if (!check("cpu_cross_code.secondary_up", rc == 0, "vCPU 1: %ld", rc))
        return 0;

    bool finished = true;
    patch_page[0] = 0xcc;                   /* step 1: an int3 over the nop */
    step = 1;
    finished &= wait_done(1);
    patch_page[0] = 0x90;                   /* step 2: the nop back */
    step = 2;
    finished &= wait_done(2);

    check("cpu_cross_code.int3_taken", bp_hits[1] == 1 && backups[1] == 0,
          "step 1: %u #BP, %u back-ups (want 1 #BP, none)", bp_hits[1], backups[1]);
    check("cpu_cross_code.removed_int3_not_rerun", finished && bp_hits[2] == 0 && !gave_up,
          "step 2: %u #BP, %u back-ups%s%s (want no #BP: the int3 was gone)", bp_hits[2],
          backups[2], gave_up ? ", gave up" : "", finished ? "" : ", vCPU 1 never returned");
    check("cpu_cross_code.call_results", results[1] == 7 && results[2] == 7,
          "the patched function returned %u, %u (want 7, 7)", results[1], results[2]);
    kernel_trap_hook = NULL;
    return 0;
}
