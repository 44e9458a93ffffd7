/*
 * EVTCHNOP_send on an IPI port with the 2-level ABI, in C: the event behind every wake-up
 * one vCPU gives another (Linux's reschedule and call-function IPIs, the kit's ping-pong),
 * which costs about a hundred microseconds of Python.
 *
 * This is a fast path for pyxen.hv.event_channel's EVTCHNOP_send, not a second event
 * channel implementation: it does what Evtchn2L.set_pending does for a port that
 * pyxen.hv.event_channel.FastSends has listed in `target` (an IPI port, its vCPU's
 * vcpu_info known, no vCPU polling), in Xen's order (evtchn_2l_set_pending): pending bit,
 * mask, the vCPU's selector bit, evtchn_upcall_pending. Every other port, and any argument
 * it cannot read, goes to Python. Python keeps `enabled` at 0 while it changes anything the
 * table depends on (FastSends.hold), so the table is never seen half made.
 *
 * It runs in the caller's OUT hook, while the caller's engine holds the machine's baton: no
 * other engine runs, as for Python's machine.exclusive(); the bits change with atomic
 * instructions, as hv.atomic's do, since pyxen's other threads set bits too.
 */
#include <stdint.h>

#include "native_walk.h"

#define SEND_PORTS 4096   /* EVTCHN_2L_NR_CHANNELS (64-bit guests) */
#define SEND_VCPUS 128

struct send_table {
    uint32_t enabled;                /* 0: every send goes to Python */
    uint32_t reserved;
    uint64_t sent;                   /* sends made here */
    uint8_t *bitmaps;                /* shared_info */
    uint32_t pending_off, mask_off;  /* evtchn_pending, evtchn_mask in shared_info */
    uint32_t sel_off, upcall_off;    /* evtchn_pending_sel, evtchn_upcall_pending */
    uint8_t *vcpu_info[SEND_VCPUS];
    uint16_t target[SEND_PORTS];     /* vCPU + 1 an IPI port notifies; 0: Python's */
};

/* What the caller still owes the vCPU the event went to (in *vcpu). */
enum { SEND_PYTHON = -1, SEND_DONE = 0, SEND_RAISE = 1, SEND_KICK = 2 };

int pyxen_send_ipi(struct send_table *t, const struct view *v, uint64_t arg, int *vcpu)
{
    uint32_t port;
    if (!__atomic_load_n(&t->enabled, __ATOMIC_ACQUIRE) || !read_linear(v, arg, &port, 4)
            || port >= SEND_PORTS || !t->target[port])
        return SEND_PYTHON;
    int target = t->target[port] - 1;
    uint8_t *info = t->vcpu_info[target];
    uint64_t bit = 1ull << (port % 64), word = port / 64;
    uint64_t *pending = (uint64_t *)(t->bitmaps + t->pending_off) + word;
    uint64_t *mask = (uint64_t *)(t->bitmaps + t->mask_off) + word;
    *vcpu = target;
    t->sent++;
    if (__atomic_fetch_or(pending, bit, __ATOMIC_SEQ_CST) & bit)
        return SEND_DONE;  /* already pending: nothing new to signal */
    if (__atomic_load_n(mask, __ATOMIC_SEQ_CST) & bit)
        return SEND_DONE;
    uint64_t sel_bit = 1ull << word;
    if (__atomic_fetch_or((uint64_t *)(info + t->sel_off), sel_bit, __ATOMIC_SEQ_CST) & sel_bit)
        return SEND_DONE;
    /* vcpu_mark_events_pending: raise the upcall, or kick a vCPU that has one already */
    if (__atomic_exchange_n(info + t->upcall_off, 1, __ATOMIC_SEQ_CST) == 0)
        return SEND_RAISE;
    return SEND_KICK;
}
