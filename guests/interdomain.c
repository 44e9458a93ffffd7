/*
 * interdomain: event channels between two domains that run in two host processes.
 *
 * A PAIR of guests: this image runs twice, as domain A (`role=a`) and domain B (`role=b`).
 * Each reads its peer's domid from its own store node `data/peer` (i.e.
 * /local/domain/<self>/data/peer), which the host writes as dom0 once both domains exist.
 * Needs `--xenstore`. Every wait is bounded (WAIT_BOUND_NS, or PEER_BOUND_NS = 3x that
 * for what depends on the peer's progress), so a broken host gives FAIL lines, never a hang.
 *
 * Protocol (P = the peer's domid; node values are decimal, space-separated):
 *  both  TEST .evtchn_init, .xenstore; bind_interdomain(30000, 1) == -ESRCH [.bind_no_domain];
 *        wait for data/peer [.peer] (PEER_BOUND_NS: the host writes it once both exist).
 *  A 1.  pa1 = alloc_unbound(SELF, P) [.alloc_unbound]; pdecoy = alloc_unbound(SELF, 0),
 *        unbound for dom0, not for B. Write data/evtchn = "<pa1> <pdecoy>" and set its
 *        permissions to "n<A>" "r<P>" (B may read it) [.publish].
 *    2.  poll status(pa1) until interdomain with dom P [.peer_bound].
 *    3.  echo: pa1's handler counts and sends back on pa1 at once; wait until `rounds`
 *        events came (at most WAIT_BOUND_NS between two) [.echo_rounds]. The handler masks
 *        pa1 before it echoes the last one, so B's next pings only set it pending.
 *    3b. echo by polling: `rounds` times, SCHEDOP_poll on pa1 until it is pending (at most
 *        WAIT_BOUND_NS each), clear it, send on pa1 [.poll_echo_rounds]. pa1 stays masked.
 *    4.  poll status(pa1) until unbound, remote == P: B closed its end
 *        [.peer_close_unbinds]; send(pa1) == 0 (dropped) [.send_unbound_dropped].
 *    5.  wait for /local/domain/<P>/data/evtchn2 = "<pb2>"; pa2 = bind_interdomain(P, pb2)
 *        [.bind_peer_port], pa2 pending right after [.bind_sets_local_pending];
 *        status(pa2) interdomain dom P port pb2 [.status_interdomain]; binding pb2 again
 *        == -EINVAL [.bind_twice]; send one event on pa2, one must come back
 *        [.channel2_both_ways]. Then RESULT and poweroff: the destruction B watches for.
 *  B 1.  wait for /local/domain/<P>/data/evtchn = "<pa1> <pdecoy>" [.peer_ports].
 *    2.  bind_interdomain(P, pdecoy) == -EINVAL [.bind_not_for_us], (P, 0) == -EINVAL
 *        [.bind_port0], (P, 100000) == -EINVAL [.bind_out_of_range].
 *    3.  pb1 = bind_interdomain(P, pa1) [.bind], pb1 pending right after
 *        [.bind_sets_local_pending]; status(pb1) interdomain dom P port pa1
 *        [.status_interdomain].
 *    4.  `rounds` times: t0 = now_ns(); send(pb1); wait until pb1's handler count goes up
 *        by one; sample now_ns() - t0 [.pingpong: every round answered].
 *    4b. mask pb1; `rounds` times: t0; send(pb1); SCHEDOP_poll on pb1 until it is pending;
 *        sample now_ns() - t0; clear it [.pingpong_poll]; unmask pb1 (its number comes
 *        back as pb2, and a 2-level port keeps its mask bit across close). No upcall and no handler in the
 *        path: the signal between the two domain processes and the two hypercalls. Then the
 *        null hypercall (xen_version(XENVER_version, NULL)), timed one by one, 200 times.
 *    5.  close(pb1) == 0 [.close]; status(pb1) closed [.closed_status].
 *    6.  pb2 = alloc_unbound(SELF, P) [.alloc_unbound]; data/evtchn2 = "<pb2>", readable
 *        by A [.publish]; poll status(pb2) until interdomain with dom P [.peer_bound2];
 *        wait for A's event on pb2 and send one back [.channel2_received].
 *    7.  poll status(pb2) (PEER_BOUND_NS) until unbound with remote == P: A's destruction
 *        closed its end [.peer_destroyed_unbinds]. Then RESULT and poweroff.
 *
 * Xen 4.17 semantics (xen/common/event_channel.c):
 *  - alloc_unbound(dom, remote_dom) makes a port only remote_dom may bind.
 *  - bind_interdomain: -ESRCH if no such remote domain (rcu_lock_domain_by_id); -EINVAL if
 *    the remote port is not valid, not ECS_UNBOUND (port 0 is ECS_RESERVED; a bound port is
 *    ECS_INTERDOMAIN), or unbound for another domain. On success both ends are
 *    ECS_INTERDOMAIN and the binder's new local port is set pending ("be safe"): the binder
 *    binds with interrupts off, checks that bit, then clears it, so its counters count only
 *    the peer's sends.
 *  - evtchn_close of an interdomain port: the other end becomes ECS_UNBOUND for the closer's
 *    domain (status u.unbound.dom == closer); the closed port reads EVTCHNSTAT_closed.
 *  - send on an ECS_UNBOUND port: 0, the notification is dropped.
 *  - a destroyed domain's ports are closed (evtchn_destroy), so the peer's ends become
 *    unbound for the dead domain.
 * Store permissions (XS_SET_PERMS payload "path\0n<owner>\0r<reader>\0"; xenstored only
 * sends a watch event to a domain that may read the node) come from tools/xenstore.
 *
 * cmdline: role=a|b (required), rounds=N (ping-pong rounds, default 200; give both the same)
 * INFO keys: role, rounds, domid, peer; A: pa1, pdecoy, pb1 (from status), pa2, echoed;
 *   B: pa1, pdecoy, pb1, pb2, pingpong_rounds, pingpong_rtt_median_ns, pingpong_rtt_p99_ns,
 *   pingpong_rtt_min_ns, the same four with poll_ for step 4b (poll_rounds,
 *   poll_rtt_median_ns, ...), null_hypercall_ns (the host benchmark compares them).
 */
#include "guest.h"
#include "evtchn.h"

#define MS              1000000ULL
#define PEER_BOUND_NS   (3 * WAIT_BOUND_NS)  /* for what waits on the peer's progress */
#define STATUS_POLL_NS  (16 * MS)            /* the longest pause between two status polls */
#define NO_DOMAIN       30000                /* below DOMID_FIRST_RESERVED, never created */
#define MAX_SAMPLES     4096                 /* RTT samples kept (the first ones) */
#define NULL_CALLS      200

static unsigned self;                        /* our domid */
static domid_t peer;                         /* the other domain's */
static volatile uint64_t hits1, hits2;       /* events on channel 1 / channel 2 */
static unsigned rounds = 200;                /* ping-pong rounds, each way of measuring */
static uint64_t rtt[MAX_SAMPLES], null_ns[NULL_CALLS];
static char buf[128], path[96];

static void count_handler(evtchn_port_t port, void *arg) { (*(volatile uint64_t *)arg)++; }

/* A's channel-1 handler: the echo server. */
static void echo_handler(evtchn_port_t port, void *arg)
{
    if (++hits1 == rounds)
        evtchn_mask(port);     /* step 3b polls for the pings that follow */
    evtchn_send(port);
}

/* Whether `port` (masked: no upcall) became pending before system time `deadline`, waiting
 * in SCHEDOP_poll. */
static bool poll_pending(evtchn_port_t port, uint64_t deadline)
{
    while (!evtchn_is_pending(port)) {
        if (now_ns() >= deadline)
            return false;
        sched_poll(&port, 1, deadline);
    }
    return true;
}

/* Sort the first `n` samples and report them as <prefix>rtt_{median,p99,min}_ns. */
static void report_rtt(const char *prefix, unsigned n)
{
    char key[40];
    if (!n)
        return;
    sort_u64(rtt, n);
    snprintf(key, sizeof(key), "%srtt_median_ns", prefix);
    info(key, "%lu", (unsigned long)percentile_u64(rtt, n, 50));
    snprintf(key, sizeof(key), "%srtt_p99_ns", prefix);
    info(key, "%lu", (unsigned long)percentile_u64(rtt, n, 99));
    snprintf(key, sizeof(key), "%srtt_min_ns", prefix);
    info(key, "%lu", (unsigned long)rtt[0]);
}

/* Our `node` = value, owned by us, readable by the peer only. */
static bool publish(const char *node, const char *value)
{
    char why[160];
    return check("interdomain.publish",
                 xs_write_shared(0, node, value, self, peer, why, sizeof(why)), "%s", why);
}

/* Poll EVTCHNOP_status of our `port` (after 1, 2, 4, .. 16 ms) until it is in `state`;
 * false after `bound` (st then holds the last status seen). */
static bool wait_status(evtchn_port_t port, uint32_t state, struct evtchn_status *st,
                        uint64_t bound)
{
    uint64_t deadline = now_ns() + bound, pause = MS;
    for (;;) {
        long rc = evtchn_status(DOMID_SELF, port, st);
        if (rc == 0 && st->status == state)
            return true;
        if (now_ns() >= deadline)
            return false;
        block_until(now_ns() + pause);
        if (pause < STATUS_POLL_NS)
            pause *= 2;
    }
}

/* bind_interdomain with interrupts off: give the new port its handler, report whether Xen
 * left it pending (it must: "be safe"), clear that so only the peer's sends are counted. */
static long bind_quiet(domid_t rdom, evtchn_port_t rport, evtchn_port_t *port,
                       evtchn_handler_t fn, void *arg, bool *was_pending)
{
    uint64_t f = irq_save();
    long rc = evtchn_bind_interdomain(rdom, rport, port);
    *was_pending = rc == 0 && evtchn_is_pending(*port);
    if (rc == 0) {
        evtchn_set_handler(*port, fn, arg);
        evtchn_clear_pending(*port);
    }
    irq_restore(f);
    return rc;
}

/* Sleep until *count reaches target, allowing `gap` between two events. */
static bool wait_progress(volatile uint64_t *count, uint64_t target, uint64_t gap)
{
    /* One read per round: a ping that lands between a second read and the wait would make
     * it wait for one ping too many. */
    for (uint64_t seen; (seen = *count) < target;)
        if (!wait_for_count(count, seen + 1, now_ns() + gap))
            return false;
    return true;
}

static void role_a(void)
{
    evtchn_port_t pa1 = 0, decoy = 0, pa2 = 0, p;
    struct evtchn_status st = { 0 };
    long rc;

    /* 1. Channel 1 (its handler set before B can know it) and a decoy, published for B. */
    rc = evtchn_alloc_unbound(DOMID_SELF, peer, &pa1);
    if (rc == 0)
        evtchn_set_handler(pa1, echo_handler, NULL);
    long rs = rc ? rc : evtchn_status(DOMID_SELF, pa1, &st);
    if (!check("interdomain.alloc_unbound", rs == 0 && st.status == EVTCHNSTAT_unbound &&
               st.u.unbound.dom == peer, "rc %ld port %u status %u remote %u (expected %u)",
               rs, pa1, st.status, st.u.unbound.dom, peer))
        return;
    rc = evtchn_alloc_unbound(DOMID_SELF, peer ? 0 : self, &decoy);
    info("pa1", "%u", pa1);
    info("pdecoy", "%u", decoy);
    snprintf(path, sizeof(path), "%u %u", pa1, rc == 0 ? decoy : 0);
    if (!publish("data/evtchn", path))
        return;

    /* 2. B binds it. */
    bool ok = wait_status(pa1, EVTCHNSTAT_interdomain, &st, PEER_BOUND_NS);
    if (!check("interdomain.peer_bound", ok && st.u.interdomain.dom == peer,
               "status of %u: %u dom %u (expected interdomain, dom %u)", pa1, st.status,
               st.u.interdomain.dom, peer))
        return;
    info("pb1", "%u", st.u.interdomain.port);

    /* 3. Echo B's pings (the handler does it). */
    ok = wait_progress(&hits1, rounds, WAIT_BOUND_NS);
    check("interdomain.echo_rounds", ok, "%lu of %u pings came", (unsigned long)hits1, rounds);

    /* 3b. Echo by polling the masked port. */
    unsigned polled = 0;
    while (ok && polled < rounds && poll_pending(pa1, now_ns() + WAIT_BOUND_NS)) {
        evtchn_clear_pending(pa1);
        evtchn_send(pa1);
        polled++;
    }
    check("interdomain.poll_echo_rounds", polled == rounds, "%u of %u pings came", polled,
          rounds);

    /* 4. B closes its end: ours is unbound for B again; a send on it is dropped. */
    ok = wait_status(pa1, EVTCHNSTAT_unbound, &st, PEER_BOUND_NS);
    check("interdomain.peer_close_unbinds", ok && st.u.unbound.dom == peer,
          "status of %u: %u remote %u (expected unbound, remote %u)", pa1, st.status,
          st.u.unbound.dom, peer);
    info("echoed", "%lu", (unsigned long)hits1);
    check_eq("interdomain.send_unbound_dropped", evtchn_send(pa1), 0);

    /* 5. Channel 2: A binds B's port. */
    snprintf(path, sizeof(path), "/local/domain/%u/data/evtchn2", peer);
    unsigned long pb2 = 0;
    if (!xs_wait(path, NULL, NULL, buf, sizeof(buf), PEER_BOUND_NS) ||
        !parse_uint(buf, &pb2)) {
        test_fail("interdomain.bind_peer_port", "no port in %s ('%s')", path, buf);
        return;
    }
    bool pending;
    rc = bind_quiet(peer, (evtchn_port_t)pb2, &pa2, count_handler, (void *)&hits2, &pending);
    if (!check("interdomain.bind_peer_port", rc == 0, "bind_interdomain(%u, %lu): %ld", peer,
               pb2, rc))
        return;
    info("pa2", "%u", pa2);
    check("interdomain.bind_sets_local_pending", pending, "port %u not pending after the bind",
          pa2);
    rs = evtchn_status(DOMID_SELF, pa2, &st);
    check("interdomain.status_interdomain", rs == 0 && st.status == EVTCHNSTAT_interdomain &&
          st.u.interdomain.dom == peer && st.u.interdomain.port == pb2,
          "rc %ld status %u dom %u port %u (expected dom %u port %lu)", rs, st.status,
          st.u.interdomain.dom, st.u.interdomain.port, peer, pb2);
    check_eq("interdomain.bind_twice", evtchn_bind_interdomain(peer, (evtchn_port_t)pb2, &p),
             EINVAL_);
    rc = evtchn_send(pa2);
    ok = rc == 0 && wait_for_count(&hits2, 1, now_ns() + PEER_BOUND_NS);
    check("interdomain.channel2_both_ways", ok, "send %ld, %lu events came back", rc,
          (unsigned long)hits2);
    /* Return: RESULT and poweroff; our destruction closes pa2, which B checks. */
}

static void role_b(void)
{
    evtchn_port_t pb1 = 0, pb2 = 0, p;
    struct evtchn_status st = { 0 };
    unsigned long pa1 = 0, decoy = 0;
    const char *s;
    long rc;

    /* 1. A's ports. */
    snprintf(path, sizeof(path), "/local/domain/%u/data/evtchn", peer);
    bool ok = xs_wait(path, NULL, NULL, buf, sizeof(buf), PEER_BOUND_NS) &&
              (s = parse_uint(buf, &pa1)) && parse_uint(s, &decoy);
    if (!check("interdomain.peer_ports", ok, "no '<pa1> <pdecoy>' in %s ('%s')", path, buf))
        return;
    info("pa1", "%lu", pa1);
    info("pdecoy", "%lu", decoy);

    /* 2. What B may not bind. */
    check_eq("interdomain.bind_not_for_us", evtchn_bind_interdomain(peer, decoy, &p), EINVAL_);
    check_eq("interdomain.bind_port0", evtchn_bind_interdomain(peer, 0, &p), EINVAL_);
    check_eq("interdomain.bind_out_of_range", evtchn_bind_interdomain(peer, 100000, &p), EINVAL_);

    /* 3. Channel 1. */
    bool pending;
    rc = bind_quiet(peer, (evtchn_port_t)pa1, &pb1, count_handler, (void *)&hits1, &pending);
    if (!check("interdomain.bind", rc == 0, "bind_interdomain(%u, %lu): %ld", peer, pa1, rc))
        return;
    info("pb1", "%u", pb1);
    check("interdomain.bind_sets_local_pending", pending, "port %u not pending after the bind",
          pb1);
    long rs = evtchn_status(DOMID_SELF, pb1, &st);
    check("interdomain.status_interdomain", rs == 0 && st.status == EVTCHNSTAT_interdomain &&
          st.u.interdomain.dom == peer && st.u.interdomain.port == pa1,
          "rc %ld status %u dom %u port %u (expected dom %u port %lu)", rs, st.status,
          st.u.interdomain.dom, st.u.interdomain.port, peer, pa1);

    /* 4. Ping-pong. The timer is armed before t0 and re-armed only after a wake-up without
     * the answer, so a round trip is send + upcall + hlt wake-up, no set_timer_op. */
    unsigned done = 0;
    irq_disable();
    for (; done < rounds; done++) {
        uint64_t before = hits1, limit = now_ns() + WAIT_BOUND_NS;
        HYPERVISOR_set_timer_op(limit);
        uint64_t t0 = now_ns();
        evtchn_send(pb1);
        while (hits1 == before && now_ns() < limit) {
            safe_halt_cli();
            if (hits1 == before)
                HYPERVISOR_set_timer_op(limit);
        }
        uint64_t t1 = now_ns();
        if (hits1 == before)
            break;
        if (done < MAX_SAMPLES)
            rtt[done] = t1 - t0;
    }
    HYPERVISOR_set_timer_op(0);
    irq_enable();
    check("interdomain.pingpong", done == rounds, "%u of %u rounds answered", done, rounds);
    info("pingpong_rounds", "%u", done);
    report_rtt("pingpong_", done < MAX_SAMPLES ? done : MAX_SAMPLES);

    /* 4b. The same by SCHEDOP_poll on the masked port. */
    unsigned polled = 0;
    evtchn_mask(pb1);
    for (; done == rounds && polled < rounds; polled++) {
        uint64_t t0 = now_ns();
        evtchn_send(pb1);
        if (!poll_pending(pb1, t0 + WAIT_BOUND_NS))
            break;
        if (polled < MAX_SAMPLES)
            rtt[polled] = now_ns() - t0;
        evtchn_clear_pending(pb1);
    }
    /* Unmasked again: the 2-level ABI keeps a port's mask bit when it is closed, and the
     * port number comes back for pb2. */
    evtchn_unmask_local(pb1);
    check("interdomain.pingpong_poll", polled == rounds, "%u of %u rounds answered", polled,
          rounds);
    info("poll_rounds", "%u", polled);
    report_rtt("poll_", polled < MAX_SAMPLES ? polled : MAX_SAMPLES);
    irq_disable();
    for (unsigned i = 0; i < NULL_CALLS; i++) {
        uint64_t t0 = now_ns();
        HYPERVISOR_xen_version(XENVER_version, NULL);
        null_ns[i] = now_ns() - t0;
    }
    irq_enable();
    sort_u64(null_ns, NULL_CALLS);
    info("null_hypercall_ns", "%lu", (unsigned long)percentile_u64(null_ns, NULL_CALLS, 50));

    /* 5. Close our end (A sees its port unbound for us). */
    check_eq("interdomain.close", evtchn_close(pb1), 0);
    rs = evtchn_status(DOMID_SELF, pb1, &st);
    check("interdomain.closed_status", rs == 0 && st.status == EVTCHNSTAT_closed,
          "rc %ld status %u", rs, st.status);

    /* 6. Channel 2, the other way round: A binds our port. */
    rc = evtchn_alloc_unbound(DOMID_SELF, peer, &pb2);
    if (rc == 0)
        evtchn_set_handler(pb2, count_handler, (void *)&hits2);
    if (!check("interdomain.alloc_unbound", rc == 0, "alloc_unbound(self, %u): %ld", peer, rc))
        return;
    info("pb2", "%u", pb2);
    snprintf(path, sizeof(path), "%u", pb2);
    if (!publish("data/evtchn2", path))
        return;
    ok = wait_status(pb2, EVTCHNSTAT_interdomain, &st, PEER_BOUND_NS);
    if (!check("interdomain.peer_bound2", ok && st.u.interdomain.dom == peer,
               "status of %u: %u dom %u (expected interdomain, dom %u)", pb2, st.status,
               st.u.interdomain.dom, peer))
        return;
    ok = wait_for_count(&hits2, 1, now_ns() + WAIT_BOUND_NS);
    rc = ok ? evtchn_send(pb2) : 0;
    check("interdomain.channel2_received", ok && rc == 0, "%lu events from A, reply sent: %ld",
          (unsigned long)hits2, rc);

    /* 7. A powers off; destroying it closes its end of channel 2. */
    ok = wait_status(pb2, EVTCHNSTAT_unbound, &st, PEER_BOUND_NS);
    check("interdomain.peer_destroyed_unbinds", ok && st.u.unbound.dom == peer,
          "status of %u: %u remote %u (expected unbound, remote %u)", pb2, st.status,
          st.u.unbound.dom, peer);
}

int guest_main(void)
{
    const char *s = cmdline_get("role");   /* a static copy the next cmdline_get reuses */
    bool a = s && !strcmp(s, "a"), b = s && !strcmp(s, "b");
    if (!check("interdomain.role", a || b, "role=a or role=b expected, not '%s'",
               s ? s : "(none)"))
        return 0;
    info("role", "%s", a ? "a" : "b");
    if ((s = cmdline_get("rounds")))
        rounds = (unsigned)strtoul(s, NULL, 10);
    info("rounds", "%u", rounds);
    long rc = evtchn_init(UPCALL_CALLBACK_VECTOR);
    if (!check_eq("interdomain.evtchn_init", rc, 0))
        return 0;
    if (!check_eq("interdomain.xenstore", xs_open(), 0))
        return 0;
    self = xs_domid();
    info("domid", "%u", self);

    evtchn_port_t p;
    check_eq("interdomain.bind_no_domain", evtchn_bind_interdomain(NO_DOMAIN, 1, &p), ESRCH_);

    int v = xs_wait_peer(self, buf, sizeof(buf), PEER_BOUND_NS);
    if (!check("interdomain.peer", v >= 0, "data/peer: '%s' (our domid %u)",
               buf[0] ? buf : "(none)", self))
        return 0;
    peer = (domid_t)v;
    info("peer", "%u", peer);
    if (a)
        role_a();
    else
        role_b();
    return 0;
}
