/*
 * counter: a guest whose work must come through a pause, a save and a restore untouched
 * (tests/migration). vCPU 0 counts without end, with interrupts on; a periodic timer
 * ticks through VIRQ_TIMER; every count also rewrites one word of a 1 MiB pattern, whole
 * generations at a time, so that any page lost, stale or moved shows.
 *
 * With ring=3 the counting and the pattern's writes run in ring 3 (interrupts on), in
 * runs of TIME_EVERY counts, ring 0 checking between runs.
 *
 * cmdline: seconds=N   guest system time to run (default 0: until destroyed)
 *          ring=3      count in ring 3 (default: ring 0)
 *          period_ms=N the periodic timer (default 10)
 *          report_ms=N a progress line every N ms of system time (default 500)
 * Lines:   INFO counter_progress count=C ticks=T now=NS   (count is also the symbol `count`)
 * Checks, at every report (a failure is reported once):
 *   counter.time_monotonic  pvclock system time never goes back
 *   counter.ticks_continue  a tick within WAIT_BOUND_NS of the last (of the arming)
 *   counter.tick_cadence    never more ticks than whole periods since arming, plus one
 *   counter.memory_intact   the pattern is exactly what the counting wrote
 *   counter.user_runs       (ring=3) every run in ring 3 returned, with no fault
 */
#include "guest.h"
#include "evtchn.h"

#define MS 1000000ULL
#define PATTERN_WORDS ((1u << 20) / 8)
#define TIME_EVERY 1024                 /* counts between clock reads */

volatile uint64_t count;                /* read by the host while paused */
static uint64_t pattern[PATTERN_WORDS];
static volatile uint64_t ticks, last_tick_ns;
static bool failed_time, failed_ticks, failed_cadence, failed_memory, failed_user;
static uint8_t user_stack[16384] ALIGNED(16);
static volatile uint64_t user_pos, user_generation;   /* handed to and from ring 3 */

static uint64_t mix(uint64_t i, uint64_t generation)
{
    uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ULL ^ generation * 0xD6E8FEB86659FD93ULL;
    return x ^ x >> 29;
}

static void tick_handler(evtchn_port_t port, void *arg)
{
    (void)port, (void)arg;
    last_tick_ns = now_ns();
    ticks = ticks + 1;
}

/* Ring 3: the next TIME_EVERY words of the pattern, then back to ring 0. */
static void user_fill(void)
{
    uint64_t pos = user_pos, generation = user_generation;
    for (unsigned i = 0; i < TIME_EVERY; i++) {
        pattern[pos] = mix(pos, generation);
        if (++pos == PATTERN_WORDS) {
            pos = 0;
            generation++;
        }
    }
    user_pos = pos;
    user_generation = generation;
    user_return(0);
}

/* Once: a failed check is one line, not one per report. */
static void fail_once(bool *reported, const char *name, bool ok, const char *what,
                      unsigned long a, unsigned long b)
{
    if (ok || *reported)
        return;
    *reported = true;
    check(name, false, "%s (%lu, %lu)", what, a, b);
}

/* Words [0, pos) hold generation g, the rest generation g - 1 (where g > 0). */
static bool pattern_intact(uint64_t generation, uint64_t pos, uint64_t *bad)
{
    for (uint64_t i = 0; i < PATTERN_WORDS; i++) {
        uint64_t g = i < pos ? generation : generation - 1;
        uint64_t want = (i < pos || generation) ? mix(i, g) : 0;
        if (pattern[i] != want) {
            *bad = i;
            return false;
        }
    }
    return true;
}

int guest_main(void)
{
    const char *s;
    uint64_t seconds = 0, period = 10 * MS, report = 500 * MS;
    if ((s = cmdline_get("seconds")))
        seconds = strtoul(s, NULL, 0);
    if ((s = cmdline_get("period_ms")))
        period = strtoul(s, NULL, 0) * MS;
    if ((s = cmdline_get("report_ms")))
        report = strtoul(s, NULL, 0) * MS;
    bool ring3 = (s = cmdline_get("ring")) && strtoul(s, NULL, 0) == 3;
    long rc = evtchn_init(UPCALL_CALLBACK_VECTOR);
    if (!check_eq("counter.evtchn_init", rc, 0))
        return 0;
    evtchn_set_handler(evtchn_cpu[0].timer_port, tick_handler, NULL);
    uint64_t armed = now_ns();
    last_tick_ns = armed;
    if (!check_eq("counter.periodic_set", vcpu_set_periodic(0, period), 0))
        return 0;
    uint64_t end = seconds ? armed + seconds * 1000 * MS : 0;
    uint64_t next_report = armed + report, last_now = armed;
    uint64_t generation = 0, pos = 0;
    for (;;) {
        if (ring3) {
            user_pos = pos;
            user_generation = generation;
            long r = run_user(user_fill, user_stack + sizeof(user_stack), USER_IRQS);
            fail_once(&failed_user, "counter.user_runs", r == 0,
                      "a run in ring 3 ended with (rc, vector)", (unsigned long)r,
                      (unsigned long)user_fault.vector);
            pos = user_pos;
            generation = user_generation;
            count += TIME_EVERY;
        } else {
            pattern[pos] = mix(pos, generation);
            if (++pos == PATTERN_WORDS) {
                pos = 0;
                generation++;
            }
            if (++count % TIME_EVERY)
                continue;
        }
        uint64_t now = now_ns();
        fail_once(&failed_time, "counter.time_monotonic", now >= last_now,
                  "system time went back", (unsigned long)last_now, (unsigned long)now);
        last_now = now;
        if (now < next_report && (!end || now < end))
            continue;
        /* The tick handler runs meanwhile: its figures first, then the time they are
         * checked against (a tick after the clock read would be "in the future"). */
        uint64_t t = ticks, last = last_tick_ns, bad = 0;
        now = now_ns();
        next_report = now + report;
        fail_once(&failed_ticks, "counter.ticks_continue", now - last <= WAIT_BOUND_NS,
                  "no tick for (ns, ticks)", (unsigned long)(now - last), (unsigned long)t);
        fail_once(&failed_cadence, "counter.tick_cadence", t <= (now - armed) / period + 1,
                  "more ticks than periods since arming", (unsigned long)t,
                  (unsigned long)((now - armed) / period));
        fail_once(&failed_memory, "counter.memory_intact", pattern_intact(generation, pos, &bad),
                  "pattern word (index, generation)", (unsigned long)bad,
                  (unsigned long)generation);
        info("counter_progress", "count=%lu ticks=%lu now=%lu", (unsigned long)count,
             (unsigned long)t, (unsigned long)now);
        if (end && now >= end)
            break;
    }
    vcpu_stop_periodic(0);
    check("counter.time_monotonic", !failed_time, "see above");
    check("counter.ticks_continue", !failed_ticks, "see above");
    check("counter.tick_cadence", !failed_cadence, "see above");
    check("counter.memory_intact", !failed_memory, "see above");
    if (ring3)
        check("counter.user_runs", !failed_user, "see above");
    irq_disable();
    return 0;
}
