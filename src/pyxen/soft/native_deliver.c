/*
 * The software CPU's delivery of an external interrupt in long mode, in C: the path every
 * event upcall, IPI and timer tick takes, which costs tens of microseconds in Python.
 *
 * This is a fast path for pyxen.soft.interrupts.deliver, not a second implementation of
 * the architecture: it computes exactly what that function computes for the common case
 * (an external interrupt, long mode with 4-level paging, a present 64-bit interrupt or
 * trap gate to a present 64-bit code segment in the GDT, the frame pushed on the current
 * stack, the IST stack or the TSS's RSPn), and declines (returns 0, having changed nothing)
 * whenever anything else holds: any check that would fault, any access outside the RAM
 * window it is given, 5-level paging, compat-mode oddities. Python then delivers as
 * before. tests/soft/test_native_deliver.py holds the two to the same results.
 *
 * The page walk is native_walk.h's, which follows pyxen.hv.pagewalk. Afterwards Python
 * recomputes QEMU's mode flags (Context.recompute_hflags) and records the
 * frame's pages as written (dirty logging), from `written`.
 */
#include <stdint.h>
#include <string.h>

#include "native_walk.h"

#define CR0_PE (1ull << 0)
#define RF_TF (1ull << 8)
#define RF_IF (1ull << 9)
#define RF_NT (1ull << 14)
#define RF_RF (1ull << 16)
#define RF_VM (1ull << 17)
#define DESC_TYPE_SHIFT 8
#define DESC_S (1u << 12)
#define DESC_DPL_SHIFT 13
#define DESC_P (1u << 15)
#define DESC_L (1u << 21)
#define DESC_B (1u << 22)
#define DESC_G (1u << 23)
#define DESC_ACCESSED (1u << 8)

enum { SEG_CS = 1, SEG_SS = 2, SEG_TR = 7, SEG_GDT = 8, SEG_IDT = 9 };
enum { REG_RSP = 6, REG_RIP = 16, REG_RFLAGS = 17 };  /* struct Regs (KVM's order) */

struct segment_cache {  /* QEMU's SegmentCache */
    uint32_t selector;
    uint32_t pad;
    uint64_t base;
    uint32_t limit;
    uint32_t flags;
};

struct deliver_args {
    /* in */
    uint8_t *ram;                  /* guest-physical address 0 in this process */
    uint64_t ram_start, ram_end;   /* the only guest-physical range used */
    uint8_t *env;                  /* a saved CPUX86State (uc_context data, after its header) */
    uint64_t *regs;                /* struct Regs */
    uint32_t env_segs, env_cr, env_efer, env_hflags;  /* offsets in env (cpustate.py) */
    uint32_t vector;
    /* out: the frame's pieces, for dirty logging */
    uint32_t pieces;
    uint32_t reserved;
    uint64_t written_gpa[2];
    uint64_t written_len[2];
};

static struct segment_cache *seg(const struct deliver_args *a, int index)
{
    return (struct segment_cache *)(a->env + a->env_segs + 24 * index);
}

static uint64_t env_u64(const struct deliver_args *a, uint32_t offset)
{
    uint64_t value;
    memcpy(&value, a->env + offset, 8);
    return value;
}

/* Deliver external interrupt `vector`: 1 when done, 0 when declined (nothing changed). */
int pyxen_deliver_external(struct deliver_args *a)
{
    uint64_t *regs = a->regs;
    uint64_t cr0 = env_u64(a, a->env_cr), cr4 = env_u64(a, a->env_cr + 32);
    uint64_t efer = env_u64(a, a->env_efer);
    uint32_t hflags;
    memcpy(&hflags, a->env + a->env_hflags, 4);
    struct view v = { a->ram, a->ram_start, a->ram_end, cr0, env_u64(a, a->env_cr + 24) };
    a->pieces = 0;
    if (!(cr0 & CR0_PE) || !(cr0 & CR0_PG) || (regs[REG_RFLAGS] & RF_VM)
        || !(efer & EFER_LMA) || (cr4 & CR4_LA57) || a->vector > 255)
        return 0;

    /* The gate: a present 64-bit interrupt (0xE) or trap (0xF) gate. */
    struct segment_cache *idt = seg(a, SEG_IDT);
    if ((uint64_t)a->vector * 16 + 15 > idt->limit)
        return 0;
    uint64_t gate[2];
    if (!read_linear(&v, idt->base + a->vector * 16, gate, 16))
        return 0;
    uint64_t lo = gate[0], hi = gate[1];
    uint64_t offset = (lo & 0xFFFF) | (lo >> 48) << 16 | (hi & 0xFFFFFFFFull) << 32;
    uint32_t selector = lo >> 16 & 0xFFFF, ist = lo >> 32 & 7, attr = lo >> 40 & 0xFF;
    uint32_t gate_type = attr & 0xF;
    if ((gate_type != 0xE && gate_type != 0xF) || (attr & 0x10) || !(attr & 0x80))
        return 0;

    /* Its code segment: a present 64-bit code descriptor in the GDT, DPL <= CPL. */
    uint32_t cpl = hflags & 3;
    struct segment_cache *gdt = seg(a, SEG_GDT);
    uint32_t index = selector & ~7u;
    if ((selector & ~3u) == 0 || (selector & 4) || index + 7 > gdt->limit)
        return 0;
    uint64_t raw;
    if (!read_linear(&v, gdt->base + index, &raw, 8))
        return 0;
    uint32_t dlo = raw & 0xFFFFFFFFu, dhi = raw >> 32;
    uint32_t flags = dhi & 0x00FFFF00u;
    uint64_t base = (dlo >> 16) | ((uint64_t)(dhi & 0xFF) << 16) | (dhi & 0xFF000000u);
    uint64_t limit = (dlo & 0xFFFF) | (dhi & 0x000F0000u);
    if (dhi & DESC_G)
        limit = (limit << 12) | 0xFFF;
    uint32_t type = flags >> DESC_TYPE_SHIFT & 0xF, dpl = flags >> DESC_DPL_SHIFT & 3;
    if (!(flags & DESC_S) || !(type & 8) || dpl > cpl || !(flags & DESC_L) || (flags & DESC_B)
        || !(flags & DESC_P))
        return 0;
    uint32_t new_cpl = (type & 4) ? cpl : dpl;

    /* The stack: IST, else RSPn from the TSS on a privilege change, else the current one. */
    uint64_t rsp = regs[REG_RSP];
    struct segment_cache *tr = seg(a, SEG_TR);
    uint64_t field = ist ? 0x24 + 8 * (ist - 1) : new_cpl < cpl ? 4 + 8 * new_cpl : 0;
    if (field) {
        if (field + 7 > tr->limit || !read_linear(&v, tr->base + field, &rsp, 8))
            return 0;
    }
    rsp &= ~0xFull;
    uint64_t frame[5] = { regs[REG_RIP], seg(a, SEG_CS)->selector, regs[REG_RFLAGS],
                          regs[REG_RSP], seg(a, SEG_SS)->selector };  /* lowest first */
    uint64_t bottom = rsp - sizeof frame;
    if (!canonical48(rsp - 1) || !canonical48(bottom) || rsp < sizeof frame)
        return 0;

    /* Every page of the frame must be writable before anything is written. */
    uint64_t gpa[2], len[2], from[2];
    uint32_t pieces = 0;
    for (uint64_t high = rsp; high > bottom; pieces++) {
        uint64_t low = (high - 1) & ~0xFFFull;
        if (low < bottom)
            low = bottom;
        int ok;
        gpa[pieces] = walk(&v, low, 1, &ok);
        len[pieces] = high - low;
        from[pieces] = low - bottom;
        if (!ok || !in_view(&v, gpa[pieces], len[pieces]))
            return 0;
        high = low;
    }

    /* Commit. */
    for (uint32_t i = 0; i < pieces; i++) {
        memcpy(a->ram + gpa[i], (uint8_t *)frame + from[i], len[i]);
        a->written_gpa[i] = gpa[i], a->written_len[i] = len[i];
    }
    a->pieces = pieces;
    regs[REG_RSP] = bottom;
    if (new_cpl < cpl) {
        struct segment_cache *ss = seg(a, SEG_SS);
        ss->selector = new_cpl, ss->base = 0, ss->limit = 0;
        ss->flags = new_cpl << DESC_DPL_SHIFT;
    }
    if (!(gate_type & 1))  /* an interrupt gate */
        regs[REG_RFLAGS] &= ~RF_IF;
    regs[REG_RFLAGS] &= ~(RF_TF | RF_NT | RF_RF | RF_VM);
    struct segment_cache *cs = seg(a, SEG_CS);
    cs->selector = (selector & ~3u) | new_cpl, cs->base = base, cs->limit = (uint32_t)limit;
    cs->flags = flags | DESC_ACCESSED;
    regs[REG_RIP] = offset;
    return 1;
}
