/*
 * hypercall_ref: the reference for the null-hypercall benchmark.
 *
 * A minimal KVM VMM in C that boots the same bench guest ELF as pyxen (same PVH entry
 * state, same hypercall stubs on the same port) and answers every port-I/O exit with the
 * least possible work: rax = 0 through the sync-regs area, re-enter. It prints the
 * nanoseconds from the first KVM_RUN to the shutdown hypercall.
 *
 * The hypercall page is read from a file (pyxen's own page), so both VMMs run exactly the
 * same guest instructions — on hosts that emulate guest ring-0 code, instruction counts
 * matter as much as the exits.
 *
 * usage: hypercall_ref IMAGE ENTRY ITERATIONS_GPA ITERATIONS HYPERCALL_PAGE_FILE
 */
#include <elf.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "ref_common.h"

#define MEM_SIZE (16u << 20)
#define PORT 0xE8
#define XEN_MSR 0x40000000u
#define HC_sched_op 29



static void flat(struct kvm_segment *s, uint16_t sel, uint8_t type)
{
    s->base = 0; s->limit = 0xffffffff; s->selector = sel; s->type = type;
    s->present = 1; s->dpl = 0; s->db = 1; s->s = 1; s->l = 0; s->g = 1; s->unusable = 0;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s IMAGE ENTRY ITER_GPA ITERATIONS PAGE_FILE\n", argv[0]);
        return 2;
    }
    uint8_t stubs[4096];
    read_page(argv[5], stubs);
    uint64_t entry = strtoull(argv[2], NULL, 0), iter_gpa = strtoull(argv[3], NULL, 0);
    uint64_t iterations = strtoull(argv[4], NULL, 0);

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");

    uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) die("mmap");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uint64_t)mem };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region)) die("memory region");
    load_elf(argv[1], mem, MEM_SIZE);
    memcpy(mem + iter_gpa, &iterations, sizeof iterations);

    struct kvm_enable_cap cap = { .cap = KVM_CAP_X86_USER_SPACE_MSR };
    cap.args[0] = KVM_MSR_EXIT_REASON_FILTER | KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_INVAL;
    if (ioctl(vm, KVM_ENABLE_CAP, &cap)) die("user space MSR");
    uint8_t deny = 0;
    struct kvm_msr_filter filter = { .flags = KVM_MSR_FILTER_DEFAULT_ALLOW };
    filter.ranges[0] = (struct kvm_msr_filter_range){
        .flags = KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE, .nmsrs = 1, .base = XEN_MSR, .bitmap = &deny };
    if (ioctl(vm, KVM_X86_SET_MSR_FILTER, &filter)) die("MSR filter");

    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) die("mmap run");

    /* The host's CPUID (long mode etc.); the bench guest needs no Xen leaves. */
    struct { struct kvm_cpuid2 h; struct kvm_cpuid_entry2 e[256]; } cpuid = { .h.nent = 256 };
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid)) die("KVM_GET_SUPPORTED_CPUID");
    if (ioctl(vcpu, KVM_SET_CPUID2, &cpuid)) die("KVM_SET_CPUID2");

    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs)) die("get sregs");
    flat(&sregs.cs, 0x08, 0xb);
    flat(&sregs.ds, 0x10, 0x3); flat(&sregs.es, 0x10, 0x3); flat(&sregs.fs, 0x10, 0x3);
    flat(&sregs.gs, 0x10, 0x3); flat(&sregs.ss, 0x10, 0x3);
    sregs.tr.base = 0; sregs.tr.limit = 0x67; sregs.tr.selector = 0x18; sregs.tr.type = 0xb;
    sregs.tr.present = 1; sregs.tr.s = 0;
    sregs.cr0 = 0x11; sregs.cr4 = 0; sregs.efer = 0;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs)) die("set sregs");
    struct kvm_regs regs = { .rip = entry, .rflags = 2 };
    if (ioctl(vcpu, KVM_SET_REGS, &regs)) die("set regs");
    run->kvm_valid_regs = KVM_SYNC_X86_REGS;

    uint64_t start = now_ns();
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
        if (run->exit_reason == KVM_EXIT_IO && run->io.port == PORT) {
            if ((uint32_t)run->s.regs.regs.rax == HC_sched_op) break;
            run->s.regs.regs.rax = 0;
            run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
        } else if (run->exit_reason == KVM_EXIT_X86_WRMSR && run->msr.index == XEN_MSR) {
            memcpy(mem + (run->msr.data & ~0xfffull), stubs, sizeof stubs);
            run->msr.error = 0;
        } else {
            fprintf(stderr, "unexpected exit %u (msr %#x)\n", run->exit_reason, run->msr.index);
            return 1;
        }
    }
    printf("%llu\n", (unsigned long long)(now_ns() - start));
    return 0;
}
