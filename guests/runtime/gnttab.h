/*
 * Grant tables for the kit's guests (v1 entries): the granting side as Linux's
 * drivers/xen/grant-table.c and Mini-OS's gnttab.c use the table, and the hypercalls of the
 * side that maps or copies. Linked into the guests that need it (see the Makefile).
 *
 * Xen 4.17 rules the helpers follow (xen/common/grant_table.c, public/grant_table.h):
 *  - the table's frames enter the guest's physmap with XENMEM_add_to_physmap
 *    (XENMAPSPACE_grant_table, idx = frame number); refs 0..GNTTAB_NR_RESERVED_ENTRIES-1
 *    are the toolstack's (the console's and the store's), so a guest's own start at 8;
 *  - an entry is written domid and frame first, the flags last, after a write barrier: a
 *    grantee must never see GTF_permit_access with a stale frame;
 *  - ending foreign access clears the flags only while neither GTF_reading nor
 *    GTF_writing is set (a compare-and-exchange, gnttab_end_foreign_access_ref's rule):
 *    while the grantee maps or copies, the page stays granted.
 */
#ifndef PYXEN_GUEST_GNTTAB_H
#define PYXEN_GUEST_GNTTAB_H
#include "runtime.h"

#define GNTTAB_FIRST_REF     GNTTAB_NR_RESERVED_ENTRIES   /* the first ref a guest uses */
#define GNTTAB_CALL_FAILED   ((int16_t)-1000)  /* the hypercall itself failed (no status) */

extern volatile grant_entry_v1_t *gnttab_v1;  /* the table, once gnttab_setup() mapped it */

/* Map grant-table frames 0..nr-1 at `frames` (page-aligned, nr pages); 0 or the first
 * failing add_to_physmap's negative errno. */
long gnttab_setup(void *frames, unsigned nr);
/* Entry `ref` for `domid` and the page at guest frame `gfn`, with `flags`:
 * GTF_permit_access [| GTF_readonly], or 0 (domid and frame written, nothing granted). */
void gnttab_grant(grant_ref_t ref, domid_t domid, uint64_t gfn, uint16_t flags);
/* GTF_reading | GTF_writing as the table shows them now (0: no grantee uses the page). */
uint16_t gnttab_busy(grant_ref_t ref);
/* End foreign access: true once the entry is clear; false while the grantee still has
 * the page mapped or is copying (the entry is then left as it was). */
bool gnttab_end_access(grant_ref_t ref);
/* GNTTABOP_map_grant_ref of (dom, ref) at guest-physical `gpa` (GNTMAP_host_map, read-only
 * if asked): the GNTST status, the handle in *handle. */
int16_t gnttab_map(domid_t dom, grant_ref_t ref, uint64_t gpa, bool readonly,
                   grant_handle_t *handle);
/* GNTTABOP_unmap_grant_ref of what gnttab_map put at `gpa`: the GNTST status. */
int16_t gnttab_unmap(uint64_t gpa, grant_handle_t handle);

#endif
