"""xen/hypfs.h: XEN_HYPFS_OP_* and the interface version."""

from __future__ import annotations

XEN_HYPFS_VERSION = 1
XEN_HYPFS_MAX_PATHLEN = 1024

XEN_HYPFS_OP_get_version = 0
XEN_HYPFS_OP_read = 1
XEN_HYPFS_OP_write_contents = 2
