/*
 * Shared request/response rings as Xen's public io/ring.h defines them (the rings of
 * blkif, netif and the other split drivers): the header comes from libxen-dev as is; this
 * file gives it the barriers it asks its includer for. On x86 stores are not reordered
 * with stores nor loads with loads, so xen_wmb/xen_rmb only stop the compiler; xen_mb
 * orders a store before a later load (RING_PUSH_*_AND_CHECK_NOTIFY, RING_FINAL_CHECK_*),
 * done with a locked add, not mfence (an SSE2 instruction the kvm_pvm ring-0 emulator may
 * lack).
 */
#ifndef PYXEN_GUEST_RING_H
#define PYXEN_GUEST_RING_H
#include "runtime.h"

#define xen_mb()  asm volatile("lock; addl $0, (%%rsp)" ::: "memory", "cc")
#define xen_rmb() barrier()
#define xen_wmb() barrier()
#include <xen/io/ring.h>

#endif
