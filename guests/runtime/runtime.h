/*
 * pyxen guest kit runtime: everything a test guest needs.
 *
 * A guest provides `int guest_main(void)`; the runtime boots (PVH entry,
 * long mode, IDT, Xen discovery, hypercall page), calls it, and then prints
 * `RESULT <passed> <failed>` and powers off.
 */
#ifndef PYXEN_GUEST_RUNTIME_H
#define PYXEN_GUEST_RUNTIME_H

#include <stdint.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdbool.h>

/* Xen public headers, as installed by Debian's libxen-dev (never copied). */
#include <xen/xen.h>
#include <xen/version.h>
#include <xen/sched.h>
#include <xen/memory.h>
#include <xen/vcpu.h>
#include <xen/features.h>
#include <xen/event_channel.h>
#include <xen/grant_table.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/params.h>
#include <xen/arch-x86/hvm/start_info.h>
#include <xen/arch-x86/cpuid.h>
#include <xen/errno.h>
#include <xen/io/console.h>
#include <xen/io/xs_wire.h>

#include "segments.h"

#define PAGE_SIZE 4096UL
#define PAGE_SHIFT 12
#define ALIGNED(n) __attribute__((aligned(n)))
#define NORETURN __attribute__((noreturn))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))

/* How long a test waits for something that should happen soon: an event, a
 * reply, another vCPU, a deadline met. Generous on purpose: the host may be
 * busy, or stall for hundreds of ms. Checks assert that things happen, in
 * order and never early -- not how fast: speed goes to INFO lines and to
 * `python -m benchmarks`. A check that something does NOT happen sleeps for
 * a fixed window instead, which a busy host only lengthens. */
#define WAIT_BOUND_NS 10000000000ULL

/* Negated Xen errno values, as hypercalls return them. */
#define EPERM_     (-XEN_EPERM)
#define ENOENT_    (-XEN_ENOENT)
#define ESRCH_     (-XEN_ESRCH)
#define E2BIG_     (-XEN_E2BIG)
#define EAGAIN_    (-XEN_EAGAIN)
#define ENOMEM_    (-XEN_ENOMEM)
#define EACCES_    (-XEN_EACCES)
#define EFAULT_    (-XEN_EFAULT)
#define EBUSY_     (-XEN_EBUSY)
#define EEXIST_    (-XEN_EEXIST)
#define EINVAL_    (-XEN_EINVAL)
#define ENOSPC_    (-XEN_ENOSPC)
#define EDOM_      (-XEN_EDOM)
#define ENOSYS_    (-XEN_ENOSYS)
#define ENODATA_   (-XEN_ENODATA)
#define EILSEQ_    (-XEN_EILSEQ)
#define EOPNOTSUPP_ (-XEN_EOPNOTSUPP)
#define ENOBUFS_   (-XEN_ENOBUFS)

/* ---- boot / platform state (runtime/xen.c) ---- */
struct boot_info {
    bool xen;                 /* Xen signature found (else: bare QEMU, debugcon) */
    uint32_t cpuid_base;      /* 0x40000000 + k*0x100 */
    uint32_t cpuid_max_leaf;
    uint32_t version;         /* leaf base+1 eax: major<<16 | minor */
    uint32_t hypercall_pages; /* leaf base+2 eax */
    uint32_t hypercall_msr;   /* leaf base+2 ebx */
    uint32_t hvm_features;    /* leaf base+4 eax (0 if the leaf is absent) */
    bool domid_present;
    uint32_t domid;           /* leaf base+4 ecx when XEN_HVM_CPUID_DOMID_PRESENT */
    bool vcpuid_present;
    uint32_t vcpuid;          /* leaf base+4 ebx when XEN_HVM_CPUID_VCPU_ID_PRESENT */
    struct hvm_start_info *start_info;
    bool dom0;                /* start_info->flags & SIF_INITDOMAIN */
    const char *cmdline;      /* "" if none */
    uint64_t ram_top;         /* end of the highest RAM range in the memmap */
};
extern struct boot_info boot;
extern uint8_t hypercall_page[4096];
extern char _image_start[], _image_end[];

/* ---- hypercalls (runtime/xen.c) ---- */
long hypercall5(unsigned nr, unsigned long a1, unsigned long a2,
                unsigned long a3, unsigned long a4, unsigned long a5);
#define hypercall0(nr) hypercall5(nr, 0, 0, 0, 0, 0)
#define hypercall1(nr, a) hypercall5(nr, (unsigned long)(a), 0, 0, 0, 0)
#define hypercall2(nr, a, b) hypercall5(nr, (unsigned long)(a), (unsigned long)(b), 0, 0, 0)
#define hypercall3(nr, a, b, c) \
    hypercall5(nr, (unsigned long)(a), (unsigned long)(b), (unsigned long)(c), 0, 0)

long HYPERVISOR_xen_version(int cmd, void *arg);
long HYPERVISOR_console_io(int cmd, unsigned count, const void *buf);
long HYPERVISOR_sched_op(int cmd, void *arg);
long HYPERVISOR_hvm_op(unsigned long op, void *arg);
long HYPERVISOR_memory_op(unsigned long cmd, void *arg);
long HYPERVISOR_vcpu_op(int cmd, unsigned vcpu, void *arg);
long HYPERVISOR_multicall(multicall_entry_t *calls, unsigned long nr);
long HYPERVISOR_set_timer_op(uint64_t timeout);
long HYPERVISOR_event_channel_op(int cmd, void *arg);
long HYPERVISOR_grant_table_op(unsigned cmd, void *uop, unsigned count);

/* 32-bit compat-mode hypercall: far-calls into the CS.L=0 segment
 * (runtime/entry.S). Arguments are truncated to 32 bits. */
long compat_hypercall(unsigned nr, unsigned long a1, unsigned long a2,
                      unsigned long a3, unsigned long a4, unsigned long a5);

NORETURN void shutdown(unsigned reason);
NORETURN void halt_forever(void);  /* cli; hlt forever (after a shutdown) */
/* NB: in Xen 4.17 an HVM vCPU executing HLT with IF=0 is taken offline
 * (hvm_hlt -> hvm_vcpu_down) and the domain is powered off when no vCPU is
 * left ("All CPUs offline -- powering off"). To block without shutting down,
 * use block_forever(): sti; hlt with no interrupt source armed. */
NORETURN void block_forever(void);

/* hvm params */
long hvm_get_param(unsigned domid, unsigned idx, uint64_t *value);
long hvm_set_param(unsigned domid, unsigned idx, uint64_t value);

/* shared_info: mapped at a page of our image by XENMEM_add_to_physmap. */
extern shared_info_t *shared_info;
long map_shared_info(void);        /* 0 or -errno; idempotent */
uint64_t xen_system_time_ns(const struct vcpu_time_info *t); /* with version loop */
uint64_t xen_now_ns(void);        /* vcpu 0's time from shared_info */
void xen_wallclock(uint64_t *sec, uint32_t *nsec); /* boot wallclock (version loop) */
/* A ring's event channel, without the event-channel library: send on `port`;
 * sleep in SCHEDOP_poll until it is pending or system time `deadline`, then
 * clear it (false once the deadline has passed). */
void notify_port(evtchn_port_t port);
bool poll_port(evtchn_port_t port, uint64_t deadline);
void mask_port(evtchn_port_t port, bool masked);
/* A ring a dom0 service shares with us (the store, the console): its frame and port from
 * two HVM params; the frame mapped at `va`, the port masked (the caller polls it).
 * 0, or -ENOENT without such a ring, -ENOSYS without Xen, another -errno. */
long map_service_ring(unsigned pfn_param, unsigned evtchn_param, uint64_t va,
                      evtchn_port_t *port);
uint64_t hv_now_ns(void);         /* HVMOP_get_time: right even if shared_info's copy froze */

/* ---- console / printf (runtime/printf.c) ---- */
/* To console_io (the hypervisor's console, `xl dmesg`), or with `console=hvc0` on the
 * command line to the PV console ring (`xl console`); to port 0xE9 without Xen. */
void console_write(const char *s, size_t len);
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) PRINTF_LIKE(3, 4);
int printf(const char *fmt, ...) PRINTF_LIKE(1, 2);  /* one console write per call */
void puts_raw(const char *s);

/* ---- the PV console ring, hvc0 (runtime/hvc.c) ---- */
/* Map the domain's console ring (HVM_PARAM_CONSOLE_PFN/_EVTCHN) and mask its port, which
 * the kit polls; 0, or -ENOENT when the domain has none, or another negative errno. */
long hvc_open(void);
volatile struct xencons_interface *hvc_ring(void);  /* NULL until hvc_open() */
evtchn_port_t hvc_port(void);
/* Copy into `out` (wrapping), publish, notify. A write that fits in the ring goes in
 * whole: while there is no room for it, wait for the back end (SCHEDOP_poll, at most
 * WAIT_BOUND_NS without progress); a bigger one goes in as room comes. How many bytes
 * went in: fewer than len if the back end stalled, the indices are impossible or the
 * port is gone. */
size_t hvc_write(const char *s, size_t len);
bool hvc_drain(uint64_t deadline);   /* until the back end consumed all of `out` */
/* Up to n bytes of input, waiting for them until system time `deadline`; how many came. */
size_t hvc_read(char *buf, size_t n, uint64_t deadline);
/* One byte of console input (-1 at the deadline); one line of it, without its end
 * ("\r", "\n" or "\r\n"), NUL-terminated in buf: its length, or -1 at the deadline.
 * `echo` writes what is typed back (a raw terminal shows nothing itself); DEL/BS erase. */
int console_getc(uint64_t deadline);
long console_readline(char *buf, size_t size, uint64_t deadline, bool echo);
/* The runtime's side: console_init() reads `console=hvc0` (runtime_main), console_write
 * uses hvc_console_write() (false: not on the ring, or busy), console_flush() waits
 * (bounded) for the ring to drain before a shutdown, hvc_evtchn_reset() brackets
 * EVTCHNOP_reset(self), which closes the ring's port (then: console_io). */
void console_init(void);
bool hvc_console(void);
bool hvc_console_write(const char *s, size_t len);
void console_flush(void);
void hvc_evtchn_reset(bool done);

/* ---- XenStore over the guest ring (runtime/xs.c) ---- */
/* Map the store ring (HVM_PARAM_STORE_PFN/_EVTCHN) and mask its port, which the client
 * polls; 0, or -ENOENT when the domain has no store, or another negative errno. */
long xs_open(void);
bool xs_ready(void);                 /* open, and the stream has not been given up */
volatile struct xenstore_domain_interface *xs_ring(void);   /* NULL until xs_open() */
evtchn_port_t xs_port(void);
/* One request (`len` payload bytes, parts NUL-separated as xs_wire wants) in transaction
 * `tx` (0: none) and its reply, NUL-terminated in `reply` (XS_DIRECTORY's parts keep their
 * NULs). Returns the reply's type -- XS_ERROR with the errno name in `reply` and in
 * xs_error() -- or -1: no store, a payload over XENSTORE_PAYLOAD_MAX, or no reply within
 * WAIT_BOUND_NS. Watch events met on the way are queued for xs_read_watch(). Relative paths
 * are relative to the domain's home, /local/domain/<domid>. */
int xs_request(uint32_t type, uint32_t tx, const void *payload, uint32_t len,
               char *reply, size_t size);
int xs_read(uint32_t tx, const char *path, char *out, size_t size);   /* XS_READ on success */
int xs_write(uint32_t tx, const char *path, const char *value);       /* XS_WRITE */
int xs_watch(const char *path, const char *token);                   /* XS_WATCH */
int xs_unwatch(const char *path, const char *token);                 /* XS_UNWATCH */
int xs_transaction_start(uint32_t *tx);                              /* XS_TRANSACTION_START */
/* XS_TRANSACTION_END; a commit that lost a race is XS_ERROR with xs_error() "EAGAIN". */
int xs_transaction_end(uint32_t tx, bool commit);
const char *xs_error(void);          /* errno name of the last XS_ERROR reply */
/* The next watch event (its path and token, NUL-terminated, cut to the sizes given):
 * one already queued, or one xenstored sends until system time `deadline` (0: only what
 * has arrived). false when none came. */
bool xs_read_watch(char *path, size_t psize, char *token, size_t tsize, uint64_t deadline);
bool xs_pending(void);               /* an event queued, or bytes waiting in the ring */
unsigned xs_events_dropped(void);    /* events lost because nobody read the queue */
/* For guests that talk to another domain through the store (interdomain, vchan).
 * Our domid: the CPUID leaf's when Xen gives it, else our node "domid" (0 if neither). */
unsigned xs_domid(void);
/* Wait until `path` exists, is readable, is not empty and, with `want`, reads `want`
 * (NULL: any value); with `stop` (NULL: none), another value that ends the wait at once.
 * A watch wakes us on changes, and the node is read again at least every 500 ms anyway
 * (an event may never come, e.g. for a write made before the permissions that let us read
 * it). true with the value in `out`; false after `bound` ns, on `stop`, or when the store
 * is gone, with the last other value read (or "") in `out`. */
bool xs_wait(const char *path, const char *want, const char *stop, char *out, size_t size,
             uint64_t bound);
/* Write `path` = value in transaction `tx` (0: none), then XS_SET_PERMS it to
 * "n<owner>" "r<reader>": owned by `owner`, readable by `reader` only. false with the
 * failed request and its answer in `why` ("write ..." or "set_perms ..."). */
bool xs_write_shared(uint32_t tx, const char *path, const char *value, unsigned owner,
                     unsigned reader, char *why, size_t wsize);
/* The other domain of a pair, as the host tells it in our node "data/peer" (decimal),
 * waited for with xs_wait for `bound` ns: its domid, or -1 when none came, or it is not a
 * domid below DOMID_FIRST_RESERVED other than `self`. What was read (or "") in `out`. */
int xs_wait_peer(unsigned self, char *out, size_t size, uint64_t bound);

/* ---- string helpers (runtime/lib.c) ---- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
size_t strnlen(const char *s, size_t max);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strchr(const char *s, int c);
unsigned long strtoul(const char *s, const char **end, int base);
/* Skip spaces, read a decimal number into *v: the rest of s, or NULL if no number is there. */
const char *parse_uint(const char *s, unsigned long *v);

/* cmdline: "key=value" words. cmdline_get returns a static copy of the
 * value (or NULL when the key is absent); a bare "key" gives "". */
const char *cmdline_get(const char *key);
bool cmdline_has(const char *key);
void format_utc(uint64_t unix_sec, char *buf, size_t size);

/* ---- tests (runtime/test.c) ---- */
extern unsigned tests_passed, tests_failed;
void test_pass(const char *name);
void test_fail(const char *name, const char *fmt, ...) PRINTF_LIKE(2, 3);
bool check(const char *name, bool cond, const char *fmt, ...) PRINTF_LIKE(3, 4);
bool check_eq(const char *name, long got, long expected);
bool check_range(const char *name, long got, long lo, long hi);
void info(const char *key, const char *fmt, ...) PRINTF_LIKE(2, 3);
NORETURN void finish(void);        /* RESULT p f, then poweroff */

/* ---- CPU helpers ---- */
static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t *a, uint32_t *b,
                         uint32_t *c, uint32_t *d)
{
    asm volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}
static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}
static inline void wrmsr(uint32_t msr, uint64_t v)
{
    asm volatile("wrmsr" :: "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory");
}
static inline uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    asm volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((uint64_t)hi << 32) | lo;
}
static inline void outb(uint16_t port, uint8_t v) { asm volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { asm volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline void barrier(void) { asm volatile("" ::: "memory"); }
/* x86 does not reorder loads with loads: a compiler barrier is enough (and
 * avoids lfence, an SSE2 instruction the kvm_pvm ring-0 emulator may lack). */
static inline void rmb(void) { asm volatile("" ::: "memory"); }
static inline uint64_t read_cr3(void) { uint64_t v; asm volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline void invlpg(uint64_t va) { asm volatile("invlpg (%0)" :: "r"(va) : "memory"); }

/* ---- traps (runtime/traps.c) ---- */
struct trap_frame {
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
    uint64_t vector, error;
    uint64_t rip, cs, rflags, rsp, ss;
};
void traps_init(void);
/* Called first for an exception taken in ring 0 (any vCPU): true means handled, return
 * through the frame (which the hook may change). NULL: none. */
extern bool (*kernel_trap_hook)(struct trap_frame *f);
/* A present, DPL-0, 64-bit interrupt gate for `vector` in the IDT loaded now. */
void install_interrupt_gate(unsigned vector, const void *entry);
/* Ring 3 (runtime/entry.S + traps.c). run_user enters fn at CPL3 on
 * user_stack with the given IOPL; it returns the user's %rax when ring 3
 * calls user_return() (`int $0x80` through a DPL-3 gate), or USER_FAULTED
 * when ring 3 faults (details in user_fault). */
#define USER_RETURN_MAGIC 0x52455455524e5533ULL
extern bool user_int80_was_ud;   /* the int $0x80 arrived as #UD (kvm_pvm) */
static inline void user_return(long v)
{
    asm volatile("int $0x80" :: "a"(v), "b"(USER_RETURN_MAGIC) : "memory");
    for (;;)
        ;
}
#define USER_FAULTED 0x7fa17ed0ff5e7000L
/* iopl | USER_IRQS: ring 3 runs with interrupts on (IF=1), e.g. to take event upcalls
 * while it works (vCPU 0 only: the upcall runs on the trap stack, which smp_id() counts as
 * vCPU 0's). */
#define USER_IRQS 0x200
long run_user(void (*fn)(void), void *user_stack_top, unsigned iopl);
struct user_fault_info { bool faulted; uint64_t vector, error, rip, cr2; };
extern struct user_fault_info user_fault;
/* Expected kernel-mode fault recovery: when armed, a fault in ring 0 at any
 * rip is recorded and execution continues at the recovery rip. */
void arm_kernel_fault(void *resume_rip);
void disarm_kernel_fault(void);

/* ---- page tables (runtime/paging.c) ---- */
#define PTE_P   0x001ULL
#define PTE_W   0x002ULL
#define PTE_U   0x004ULL
#define PTE_PS  0x080ULL
/* Map one 4 KiB page va -> pa (va must be outside the first GiB). */
int map_4k(uint64_t va, uint64_t pa, uint64_t flags);
int map_2m(uint64_t va, uint64_t pa, uint64_t flags);
void unmap_4k(uint64_t va);
/* Physical address of a kernel pointer (identity map: itself). */
static inline uint64_t virt_to_phys(const void *p) { return (uint64_t)(uintptr_t)p; }
static inline uint64_t pfn_of(const void *p) { return virt_to_phys(p) >> PAGE_SHIFT; }

/* ---- guest entry points ---- */
int guest_main(void);

#endif
