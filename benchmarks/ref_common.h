/*
 * What the C reference VMMs in benchmarks/ share: a fatal error, the monotonic clock,
 * loading a guest ELF's PT_LOAD segments at their physical addresses, and the page file.
 */
#ifndef PYXEN_BENCH_REF_COMMON_H
#define PYXEN_BENCH_REF_COMMON_H

#include <elf.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>

static void die(const char *what) { perror(what); exit(1); }

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/* Copy the image's PT_LOAD segments into `mem` (mem_size bytes of guest-physical RAM). */
static void load_elf(const char *path, uint8_t *mem, uint64_t mem_size)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) die(path);
    uint8_t *img = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (img == MAP_FAILED) die("mmap image");
    Elf64_Ehdr *eh = (Elf64_Ehdr *)img;
    for (int i = 0; i < eh->e_phnum; i++) {
        Elf64_Phdr *ph = (Elf64_Phdr *)(img + eh->e_phoff + i * eh->e_phentsize);
        if (ph->p_type != PT_LOAD) continue;
        if (ph->p_paddr + ph->p_memsz > mem_size) { fprintf(stderr, "segment too big\n"); exit(1); }
        memcpy(mem + ph->p_paddr, img + ph->p_offset, ph->p_filesz);
    }
}

/* The hypercall page pyxen would write (a file of 4096 bytes from the harness). */
static void read_page(const char *path, uint8_t page[4096])
{
    FILE *pf = fopen(path, "rb");
    if (!pf || fread(page, 1, 4096, pf) != 4096) die(path);
    fclose(pf);
}

#endif
