"""XenStoreError: the one exception of the store, client and server alike.

Xen's wire protocol carries errors as errno *names* ("ENOENT"), so the exception carries the
name; the store core raises it and the connection layer turns it into an XS_ERROR reply.
"""

from __future__ import annotations

import errno as _errno

from pyxen.abi.xs_wire import XSD_ERROR_NAMES


class XenStoreError(Exception):
    """An operation failed with a Xen errno name such as "EACCES"."""

    def __init__(self, name: str, message: str = "") -> None:
        self.name = name if name in XSD_ERROR_NAMES else "EINVAL"
        self.errno = getattr(_errno, self.name)
        super().__init__(f"{self.name}: {message}" if message else self.name)
