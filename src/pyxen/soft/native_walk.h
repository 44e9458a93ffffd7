/*
 * The guest page walk the software CPU's native code shares (native_deliver.c,
 * native_send.c): pyxen.hv.pagewalk's rules for 4-level paging (present bits at every level,
 * RW at every level for a write when CR0.WP is set, PS at the PDPT and PD levels; no
 * accessed/dirty bits), over one window of guest RAM. Anything outside the window, or any
 * walk that would fault, is reported as a failure: the caller then leaves the work to Python.
 */
#ifndef PYXEN_NATIVE_WALK_H
#define PYXEN_NATIVE_WALK_H

#include <stdint.h>
#include <string.h>

#define CR0_WP (1ull << 16)
#define CR0_PG (1ull << 31)
#define CR4_LA57 (1ull << 12)
#define EFER_LMA (1ull << 10)
#define PTE_P (1ull << 0)
#define PTE_RW (1ull << 1)
#define PTE_PS (1ull << 7)
#define ADDR_MASK 0x000FFFFFFFFFF000ull

struct view {
    uint8_t *ram;                  /* guest-physical address 0 in this process */
    uint64_t ram_start, ram_end;   /* the only guest-physical range used */
    uint64_t cr0, cr3;
};

static inline int in_view(const struct view *v, uint64_t gpa, uint64_t len)
{
    return v->ram && gpa >= v->ram_start && gpa <= v->ram_end && len <= v->ram_end - gpa;
}

static inline int canonical48(uint64_t va)
{
    uint64_t top = va >> 47;
    return top == 0 || top == 0x1FFFF;
}

/* The guest-physical address of `va` (4-level paging), or 0 in *ok when it would fault. */
static inline uint64_t walk(const struct view *v, uint64_t va, int write, int *ok)
{
    int check_write = write && (v->cr0 & CR0_WP);
    uint64_t table = v->cr3 & ADDR_MASK;
    *ok = 0;
    if (!canonical48(va))
        return 0;
    for (int level = 4; level >= 1; level--) {
        int shift = 12 + 9 * (level - 1);
        uint64_t at = table + ((va >> shift) & 511) * 8;
        if (!in_view(v, at, 8))
            return 0;
        uint64_t entry;
        memcpy(&entry, v->ram + at, 8);
        if (!(entry & PTE_P) || (check_write && !(entry & PTE_RW)))
            return 0;
        if (level == 1 || ((entry & PTE_PS) && level <= 3)) {
            uint64_t page_mask = (1ull << shift) - 1;
            *ok = 1;
            return ((entry & ADDR_MASK) & ~page_mask) | (va & page_mask);
        }
        table = entry & ADDR_MASK;
    }
    return 0;
}

/* Copy `len` bytes at linear `va` (implicit supervisor read) into `out`; 0 if it faults. */
static inline int read_linear(const struct view *v, uint64_t va, void *out, uint64_t len)
{
    uint8_t *dst = out;
    while (len) {
        uint64_t n = 4096 - (va & 0xFFF);
        if (n > len)
            n = len;
        int ok;
        uint64_t gpa = walk(v, va, 0, &ok);
        if (!ok || !in_view(v, gpa, n))
            return 0;
        memcpy(dst, v->ram + gpa, n);
        dst += n, va += n, len -= n;
    }
    return 1;
}

#endif
