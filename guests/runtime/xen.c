/*
 * Xen discovery, hypercall page, hypercall wrappers, start info, shutdown,
 * shared_info and time helpers.
 */
#include "runtime.h"

struct boot_info boot;
shared_info_t *shared_info;
extern uint32_t pvh_start_info_pa[];

/* A page of our image that becomes shared_info (XENMEM_add_to_physmap over
 * a RAM page of ours, which is what Mini-OS, Linux and Solo5 do). */
static uint8_t shared_info_page[4096] ALIGNED(4096);

/* ---------------------------------------------------------------- */
long hypercall5(unsigned nr, unsigned long a1, unsigned long a2,
                unsigned long a3, unsigned long a4, unsigned long a5)
{
    register unsigned long r10 asm("r10") = a4;
    register unsigned long r8 asm("r8") = a5;
    long ret;
    void *stub = hypercall_page + (nr & 127) * 32;

    /* The ABI preserves all registers but rax; Xen debug builds however
     * scribble on argument registers, so treat those as clobbered. */
    asm volatile("call *%[stub]"
                 : "=a"(ret), "+D"(a1), "+S"(a2), "+d"(a3), "+r"(r10), "+r"(r8)
                 : [stub] "r"(stub)
                 : "memory", "cc");
    return ret;
}

long HYPERVISOR_xen_version(int cmd, void *arg)
{ return hypercall2(__HYPERVISOR_xen_version, (long)cmd, arg); }
long HYPERVISOR_console_io(int cmd, unsigned count, const void *buf)
{ return hypercall3(__HYPERVISOR_console_io, (long)cmd, count, buf); }
long HYPERVISOR_sched_op(int cmd, void *arg)
{ return hypercall2(__HYPERVISOR_sched_op, (long)cmd, arg); }
long HYPERVISOR_hvm_op(unsigned long op, void *arg)
{ return hypercall2(__HYPERVISOR_hvm_op, op, arg); }
long HYPERVISOR_memory_op(unsigned long cmd, void *arg)
{ return hypercall2(__HYPERVISOR_memory_op, cmd, arg); }
long HYPERVISOR_vcpu_op(int cmd, unsigned vcpu, void *arg)
{ return hypercall3(__HYPERVISOR_vcpu_op, (long)cmd, vcpu, arg); }
long HYPERVISOR_multicall(multicall_entry_t *calls, unsigned long nr)
{ return hypercall2(__HYPERVISOR_multicall, calls, nr); }
long HYPERVISOR_set_timer_op(uint64_t timeout)
{ return hypercall1(__HYPERVISOR_set_timer_op, timeout); }
long HYPERVISOR_event_channel_op(int cmd, void *arg)
{ return hypercall2(__HYPERVISOR_event_channel_op, (long)cmd, arg); }
long HYPERVISOR_grant_table_op(unsigned cmd, void *uop, unsigned count)
{ return hypercall3(__HYPERVISOR_grant_table_op, cmd, uop, count); }

long hvm_get_param(unsigned domid, unsigned idx, uint64_t *value)
{
    struct xen_hvm_param p = { .domid = (domid_t)domid, .index = idx };
    long rc = HYPERVISOR_hvm_op(HVMOP_get_param, &p);
    if (rc == 0 && value)
        *value = p.value;
    return rc;
}

long hvm_set_param(unsigned domid, unsigned idx, uint64_t value)
{
    struct xen_hvm_param p = { .domid = (domid_t)domid, .index = idx, .value = value };
    return HYPERVISOR_hvm_op(HVMOP_set_param, &p);
}

NORETURN void halt_forever(void)
{
    for (;;)
        asm volatile("cli; hlt");
}

NORETURN void block_forever(void)
{
    for (;;)
        asm volatile("sti; hlt; cli");
}

NORETURN void shutdown(unsigned reason)
{
    if (boot.xen) {
        console_flush();   /* hvc0: the last lines are out of the ring before we go */
        struct sched_shutdown s = { .reason = reason };
        HYPERVISOR_sched_op(SCHEDOP_shutdown, &s);
    } else {
        /* Bare QEMU (no Xen): ACPI-free power-off of the PC machine types. */
        outw(0x604, 0x2000);
        outw(0xb004, 0x2000);
    }
    halt_forever();
}

/* ---------------------------------------------------------------- */
static void xen_discover(void)
{
    uint32_t a, b, c, d;

    for (uint32_t base = 0x40000000; base < 0x40010000; base += 0x100) {
        cpuid(base, 0, &a, &b, &c, &d);
        if (b == XEN_CPUID_SIGNATURE_EBX && c == XEN_CPUID_SIGNATURE_ECX &&
            d == XEN_CPUID_SIGNATURE_EDX && a - base >= 2 && a - base < 0x100) {
            boot.xen = true;
            boot.cpuid_base = base;
            boot.cpuid_max_leaf = a;
            break;
        }
    }
    if (!boot.xen)
        return;
    cpuid(boot.cpuid_base + 1, 0, &a, &b, &c, &d);
    boot.version = a;
    cpuid(boot.cpuid_base + 2, 0, &a, &b, &c, &d);
    boot.hypercall_pages = a;
    boot.hypercall_msr = b;
    if (boot.cpuid_max_leaf >= boot.cpuid_base + 4) {
        cpuid(boot.cpuid_base + 4, 0, &a, &b, &c, &d);
        boot.hvm_features = a;
        /* Xen's cpuid.h: EBX = vcpu id, ECX = domain id, when flagged. */
        if (a & XEN_HVM_CPUID_VCPU_ID_PRESENT) {
            boot.vcpuid_present = true;
            boot.vcpuid = b;
        }
        if (a & XEN_HVM_CPUID_DOMID_PRESENT) {
            boot.domid_present = true;
            boot.domid = c;
        }
    }
}

static void install_hypercall_page(void)
{
    if (!boot.xen) {
        /* No Xen: make every stub `mov $-ENOSYS, %rax; ret` so that the
         * tests fail cleanly instead of jumping into nowhere. */
        for (int i = 0; i < 128; i++) {
            uint8_t *p = hypercall_page + i * 32;
            p[0] = 0x48; p[1] = 0xc7; p[2] = 0xc0;               /* mov $imm32, %rax */
            int32_t v = ENOSYS_;
            memcpy(p + 3, &v, 4);
            p[7] = 0xc3;
        }
        return;
    }
    wrmsr(boot.hypercall_msr, virt_to_phys(hypercall_page));
    if (hypercall_page[0] == 0xc3) {
        /* No console yet: say it on debugcon and crash. */
        const char *m = "PANIC hypercall page not filled (byte 0 is still 0xc3)\n";
        while (*m)
            outb(0xe9, *m++);
        boot.xen = false;
        shutdown(SHUTDOWN_crash);
    }
}

static void parse_start_info(void)
{
    uint64_t pa = pvh_start_info_pa[0];
    boot.cmdline = "";
    if (!pa)
        return;
    struct hvm_start_info *si = (struct hvm_start_info *)(uintptr_t)pa;
    boot.start_info = si;
    if (si->magic != XEN_HVM_START_MAGIC_VALUE)
        return;
    boot.dom0 = (si->flags & SIF_INITDOMAIN) != 0;
    if (si->cmdline_paddr)
        boot.cmdline = (const char *)(uintptr_t)si->cmdline_paddr;
    if (si->version >= 1 && si->memmap_paddr) {
        struct hvm_memmap_table_entry *m = (void *)(uintptr_t)si->memmap_paddr;
        for (uint32_t i = 0; i < si->memmap_entries; i++)
            if (m[i].type == XEN_HVM_MEMMAP_TYPE_RAM && m[i].addr + m[i].size > boot.ram_top)
                boot.ram_top = m[i].addr + m[i].size;
    }
}

/* ---------------------------------------------------------------- */
long map_shared_info(void)
{
    if (shared_info)
        return 0;
    struct xen_add_to_physmap xatp = {
        .domid = DOMID_SELF,
        .space = XENMAPSPACE_shared_info,
        .idx = 0,
        .gpfn = pfn_of(shared_info_page),
    };
    long rc = HYPERVISOR_memory_op(XENMEM_add_to_physmap, &xatp);
    if (rc == 0)
        shared_info = (shared_info_t *)shared_info_page;
    return rc;
}

uint64_t xen_system_time_ns(const struct vcpu_time_info *t)
{
    const volatile struct vcpu_time_info *vt = t;
    uint32_t ver;
    uint64_t tsc, tsc_ts, sys;
    uint32_t mul;
    int8_t shift;

    do {
        ver = vt->version;
        rmb();
        tsc_ts = vt->tsc_timestamp;
        sys = vt->system_time;
        mul = vt->tsc_to_system_mul;
        shift = vt->tsc_shift;
        tsc = rdtsc();
        rmb();
    } while ((ver & 1) || ver != vt->version);

    uint64_t delta = tsc - tsc_ts;
    if (shift < 0)
        delta >>= -shift;
    else
        delta <<= shift;
    /* (delta * mul) >> 32 without 128-bit helpers */
    uint64_t lo = (delta & 0xffffffffULL) * mul;
    uint64_t hi = (delta >> 32) * mul;
    return sys + hi + (lo >> 32);
}

uint64_t xen_now_ns(void)
{
    if (!shared_info)
        return 0;
    return xen_system_time_ns(&shared_info->vcpu_info[0].time);
}

void xen_wallclock(uint64_t *sec, uint32_t *nsec)
{
    volatile shared_info_t *s = shared_info;
    uint32_t ver;
    uint64_t sc;
    uint32_t ns;
    if (!s) {
        *sec = 0;
        *nsec = 0;
        return;
    }
    do {
        ver = s->wc_version;
        rmb();
        sc = s->wc_sec | ((uint64_t)s->xen_wc_sec_hi << 32);
        ns = s->wc_nsec;
        rmb();
    } while ((ver & 1) || ver != s->wc_version);
    *sec = sc;
    *nsec = ns;
}

/* ---------------------------------------------------------------- */
void runtime_main(void)
{
    traps_init();
    xen_discover();
    install_hypercall_page();
    parse_start_info();
    console_init();
    guest_main();
    finish();
}

void notify_port(evtchn_port_t port)
{
    struct evtchn_send send = { .port = port };
    HYPERVISOR_event_channel_op(EVTCHNOP_send, &send);
}

bool poll_port(evtchn_port_t port, uint64_t deadline)
{
    evtchn_port_t ports[1] = { port };
    struct sched_poll p = { .nr_ports = 1, .timeout = deadline };
    set_xen_guest_handle(p.ports, ports);
    HYPERVISOR_sched_op(SCHEDOP_poll, &p);
    volatile unsigned long *pending = &shared_info->evtchn_pending[port / 64];
    __atomic_fetch_and(pending, ~(1UL << (port % 64)), __ATOMIC_SEQ_CST);
    return xen_now_ns() < deadline;
}

/* Xen system time from the hypervisor itself (right even if shared_info's copy froze
 * because a guest moved its vcpu_info). */
uint64_t hv_now_ns(void)
{
    struct xen_hvm_get_time t = { 0 };
    if (HYPERVISOR_hvm_op(HVMOP_get_time, &t) == 0)
        return t.now;
    return xen_now_ns();
}

void mask_port(evtchn_port_t port, bool masked)
{
    volatile unsigned long *word = &shared_info->evtchn_mask[port / 64];
    unsigned long bit = 1UL << (port % 64);
    if (masked)
        __atomic_fetch_or(word, bit, __ATOMIC_SEQ_CST);
    else
        __atomic_fetch_and(word, ~bit, __ATOMIC_SEQ_CST);
}

long map_service_ring(unsigned pfn_param, unsigned evtchn_param, uint64_t va,
                      evtchn_port_t *port)
{
    if (!boot.xen)
        return ENOSYS_;
    uint64_t pfn = 0, evtchn = 0;
    long rc = hvm_get_param(DOMID_SELF, pfn_param, &pfn);
    if (rc == 0)
        rc = hvm_get_param(DOMID_SELF, evtchn_param, &evtchn);
    if (rc)
        return rc;
    if (!pfn || !evtchn)
        return ENOENT_;
    rc = map_shared_info();
    if (rc)
        return rc;
    if (map_4k(va, pfn << PAGE_SHIFT, PTE_P | PTE_W))
        return ENOMEM_;
    *port = (evtchn_port_t)evtchn;
    mask_port(*port, true);
    return 0;
}
