"""Quotas for unprivileged domains, with the C xenstored's defaults.

Each limit is the largest allowed value: a domain may own `nodes` nodes, the next one is
refused. Values are per daemon (`Quotas`) and may be overridden per domain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

# Size model of a node record in the C daemon's database: a 24-byte header, 8 bytes per
# permission entry, the value and the NUL-separated list of children.
NODE_HEADER_SIZE = 24
NODE_PERM_SIZE = 8
# The range the C daemon's option parser (get_optval_int) accepts for a quota. 0 is a real
# limit (nothing allowed), not "unlimited".
QUOTA_MAX = 2**31 - 1


@dataclass
class Quotas:
    nodes: int = 1000  # nodes owned per domain (ENOSPC)
    node_size: int = 2048  # bytes per node record, children list included (ENOSPC)
    watches: int = 128  # watches per domain (E2BIG)
    transactions: int = 10  # open transactions per domain (ENOSPC)
    transaction_nodes: int = 1024  # nodes touched by one transaction (ENOSPC)
    permissions: int = 5  # permission entries per node, owner included (ENOSPC)
    path_max: int = 2048  # path length after /local/domain/N/ (EINVAL)

    # Names as the C daemon spells them (xenstore-control quota, GET_QUOTA).
    NAMES = {
        "nodes": "nodes",
        "node-size": "node_size",
        "watches": "watches",
        "transactions": "transactions",
        "transaction-nodes": "transaction_nodes",
        "permissions": "permissions",
        "path-max": "path_max",
    }
    DESCRIPTIONS = {
        "nodes": "Nodes per domain",
        "node-size": "Max. size of a node",
        "watches": "Watches per domain",
        "transactions": "Transactions per domain",
        "transaction-nodes": "Max. number of accessed nodes per transaction",
        "permissions": "Max. number of permissions per node",
        "path-max": "Max. length of a node path",
    }

    def get(self, name: str) -> int:
        return int(getattr(self, self.NAMES[name]))

    def set(self, name: str, value: int) -> None:
        setattr(self, self.NAMES[name], value)

    def copy(self) -> Quotas:
        return Quotas(**{f.name: getattr(self, f.name) for f in fields(self)})


def parse_quota_value(text: str) -> int:
    """A quota from the command line: a decimal count from 0 to QUOTA_MAX, nothing else
    (no sign, no other digits than 0-9), so -E and --quota refuse the same values."""
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError(f"'{text}' is not a whole number from 0 to {QUOTA_MAX}")
    value = int(text)
    if value > QUOTA_MAX:
        raise ValueError(f"'{text}' is larger than {QUOTA_MAX}")
    return value


def node_size(value: bytes, nperms: int, children: tuple[str, ...]) -> int:
    """Size a node counts against the node-size quota."""
    childlen = sum(len(c) + 1 for c in children)
    return NODE_HEADER_SIZE + NODE_PERM_SIZE * nperms + len(value) + childlen
