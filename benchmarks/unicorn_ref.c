/*
 * unicorn_ref: the same-engine reference for the software CPU's null-hypercall figure.
 *
 * A minimal VMM in C on libunicorn (the library the pip `unicorn` package ships, i.e. the
 * engine pyxen's software CPU drives) that boots the same bench guest ELF as pyxen and as
 * hypercall_ref.c: PVH entry (32-bit flat protected mode, paging off), the same hypercall
 * page on the same port. The guest's `out` to that port reaches an OUT hook in C that does
 * the least possible work — rax = 0, carry on — without leaving the engine. It prints the
 * nanoseconds from uc_emu_start to the shutdown hypercall.
 *
 * MODE "hook" (default) answers inside the hook; MODE "stop" instead stops the engine at
 * every hypercall and re-enters it from the main loop (uc_emu_stop + uc_emu_start), the
 * floor of any design that leaves the engine per hypercall.
 *
 * No unicorn.h ships with the pip package, only unicorn/x86.h: the few declarations of
 * unicorn.h (Unicorn 2.1) this program needs are written out below.
 *
 * usage: unicorn_ref IMAGE ENTRY ITERATIONS_GPA ITERATIONS HYPERCALL_PAGE_FILE PAGE_GPA [hook|stop]
 */
#include <elf.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "ref_common.h"

/* From Unicorn 2.1's unicorn.h (x86.h names struct uc_struct in prototypes). */
struct uc_struct;
typedef struct uc_struct uc_engine;
#include <unicorn/x86.h>

typedef size_t uc_hook;
typedef int uc_err;            /* UC_ERR_OK = 0 */
enum { UC_ARCH_X86 = 4, UC_MODE_32 = 1 << 2, UC_HOOK_INSN = 1 << 1, UC_PROT_ALL = 7 };
uc_err uc_open(int arch, int mode, uc_engine **uc);
uc_err uc_close(uc_engine *uc);
uc_err uc_mem_map_ptr(uc_engine *uc, uint64_t address, size_t size, uint32_t perms, void *ptr);
uc_err uc_reg_read(uc_engine *uc, int regid, void *value);
uc_err uc_reg_write(uc_engine *uc, int regid, const void *value);
uc_err uc_hook_add(uc_engine *uc, uc_hook *hh, int type, void *callback, void *user_data,
                   uint64_t begin, uint64_t end, ...);
uc_err uc_emu_start(uc_engine *uc, uint64_t begin, uint64_t until, uint64_t timeout,
                    size_t count);
uc_err uc_emu_stop(uc_engine *uc);
const char *uc_strerror(uc_err code);

#define MEM_SIZE (16u << 20)
#define PORT 0xE8
#define HC_sched_op 29
#define HC_xen_version 17

struct vmm {
    uint64_t calls;    /* xen_version calls answered */
    bool stop_each;    /* MODE "stop" */
    bool shutdown;
};


static void check(uc_err err, const char *what)
{
    if (err) { fprintf(stderr, "%s: %s\n", what, uc_strerror(err)); exit(1); }
}


/* The whole hypercall handler: rax = 0 for everything but the final sched_op. */
static void on_out(uc_engine *uc, uint32_t port, int size, uint32_t value, void *data)
{
    struct vmm *vmm = data;
    (void)size;
    if (port != PORT) return;
    if (value == HC_sched_op) {
        vmm->shutdown = true;
        uc_emu_stop(uc);
        return;
    }
    uint32_t zero = 0;  /* a 32-bit register write zero-extends, as in the CPU */
    uc_reg_write(uc, UC_X86_REG_EAX, &zero);
    vmm->calls += value == HC_xen_version;
    if (vmm->stop_each) uc_emu_stop(uc);
}

int main(int argc, char **argv)
{
    if (argc != 7 && argc != 8) {
        fprintf(stderr, "usage: %s IMAGE ENTRY ITER_GPA ITERATIONS PAGE_FILE PAGE_GPA [hook|stop]\n",
                argv[0]);
        return 2;
    }
    uint8_t stubs[4096];
    read_page(argv[5], stubs);
    uint64_t entry = strtoull(argv[2], NULL, 0), iter_gpa = strtoull(argv[3], NULL, 0);
    uint64_t iterations = strtoull(argv[4], NULL, 0), page_gpa = strtoull(argv[6], NULL, 0);
    struct vmm vmm = { .stop_each = argc == 8 && !strcmp(argv[7], "stop") };
    if ((argc == 8 && !vmm.stop_each && strcmp(argv[7], "hook"))
        || page_gpa & 0xfff || page_gpa + 4096 > MEM_SIZE) {
        fprintf(stderr, "MODE must be hook or stop; PAGE_GPA a page in RAM\n");
        return 2;
    }

    uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) die("mmap");
    load_elf(argv[1], mem, MEM_SIZE);
    memcpy(mem + iter_gpa, &iterations, sizeof iterations);
    /* Unicorn 2.1 cannot hook WRMSR, and its CPU ignores the Xen MSR: the page goes where
     * the guest will ask for it (its `hypercall_page` symbol, given by the harness) before
     * the guest starts, instead of at the MSR write — outside the timed loop either way. */
    memcpy(mem + page_gpa, stubs, sizeof stubs);

    /* UC_MODE_32: the engine starts in flat 32-bit protected mode with paging off, the PVH
     * entry state, from which the guest itself enables long mode, as on KVM. (pyxen's
     * engine is created in UC_MODE_64 and then given this state; the mode only selects
     * what the register API and the reset state look like, not how code is translated.) */
    uc_engine *uc;
    check(uc_open(UC_ARCH_X86, UC_MODE_32, &uc), "uc_open");
    check(uc_mem_map_ptr(uc, 0, MEM_SIZE, UC_PROT_ALL, mem), "uc_mem_map_ptr");
    uc_hook hh;
    check(uc_hook_add(uc, &hh, UC_HOOK_INSN, (void *)on_out, &vmm, 1, 0, UC_X86_INS_OUT),
          "hook OUT");

    uint64_t pc = entry, start = now_ns();
    while (!vmm.shutdown) {
        check(uc_emu_start(uc, pc, 0, 0, 0), "uc_emu_start");
        uint32_t eip;
        check(uc_reg_read(uc, UC_X86_REG_EIP, &eip), "read eip");
        if (!vmm.stop_each && !vmm.shutdown) {
            fprintf(stderr, "engine stopped at %#x before the shutdown hypercall\n", eip);
            return 1;
        }
        pc = eip;
    }
    uint64_t elapsed = now_ns() - start;
    if (vmm.calls != iterations) {
        fprintf(stderr, "answered %llu xen_version calls, expected %llu\n",
                (unsigned long long)vmm.calls, (unsigned long long)iterations);
        return 1;
    }
    printf("%llu\n", (unsigned long long)elapsed);
    uc_close(uc);
    return 0;
}
