/*
 * Small page-table editor for tests: map 4 KiB / 2 MiB pages at virtual
 * addresses outside the boot identity map (the first GiB, 2 MiB pages).
 * Intermediate tables come from a static pool and are present|rw|user.
 */
#include "runtime.h"

extern uint64_t pml4[512];
static uint64_t pool[16][512] ALIGNED(4096);
static unsigned pool_used;

static uint64_t *alloc_table(void)
{
    if (pool_used >= ARRAY_SIZE(pool))
        return NULL;
    uint64_t *t = pool[pool_used++];
    memset(t, 0, PAGE_SIZE);
    return t;
}

static uint64_t *next_level(uint64_t *table, unsigned idx, bool create)
{
    uint64_t e = table[idx];
    if (e & PTE_P) {
        if (e & PTE_PS)
            return NULL;
        return (uint64_t *)(uintptr_t)(e & 0x000ffffffffff000ULL);
    }
    if (!create)
        return NULL;
    uint64_t *t = alloc_table();
    if (!t)
        return NULL;
    table[idx] = virt_to_phys(t) | PTE_P | PTE_W | PTE_U;
    return t;
}

static uint64_t *walk_to_pd(uint64_t va, bool create)
{
    uint64_t *pdpt = next_level(pml4, (va >> 39) & 511, create);
    if (!pdpt)
        return NULL;
    return next_level(pdpt, (va >> 30) & 511, create);
}

int map_4k(uint64_t va, uint64_t pa, uint64_t flags)
{
    uint64_t *pd = walk_to_pd(va, true);
    if (!pd)
        return -1;
    uint64_t *pt = next_level(pd, (va >> 21) & 511, true);
    if (!pt)
        return -1;
    pt[(va >> 12) & 511] = (pa & ~0xfffULL) | flags;
    invlpg(va);
    return 0;
}

int map_2m(uint64_t va, uint64_t pa, uint64_t flags)
{
    uint64_t *pd = walk_to_pd(va, true);
    if (!pd)
        return -1;
    pd[(va >> 21) & 511] = (pa & ~0x1fffffULL) | flags | PTE_PS;
    invlpg(va);
    return 0;
}

void unmap_4k(uint64_t va)
{
    uint64_t *pd = walk_to_pd(va, false);
    if (!pd)
        return;
    uint64_t *pt = next_level(pd, (va >> 21) & 511, false);
    if (!pt)
        return;
    pt[(va >> 12) & 511] = 0;
    invlpg(va);
}
