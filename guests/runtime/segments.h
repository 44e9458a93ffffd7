/* GDT layout shared by entry.S and C code. */
#ifndef PYXEN_GUEST_SEGMENTS_H
#define PYXEN_GUEST_SEGMENTS_H
#define KCS64   0x08    /* 64-bit kernel code */
#define KDS     0x10    /* flat kernel data */
#define KCS32   0x18    /* 32-bit (compat) kernel code, CS.L=0 */
#define UDS     0x20    /* user data, DPL 3 */
#define UCS64   0x28    /* 64-bit user code, DPL 3 */
#define UCS32   0x30    /* 32-bit user code, DPL 3 */
#define TSS_SEL 0x38    /* 64-bit TSS (16-byte descriptor) */
#endif
