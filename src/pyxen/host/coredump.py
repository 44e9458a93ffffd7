"""xl's coredump-destroy / coredump-restart: a dead domain's memory written to a file.

An ELF64 core (ET_CORE) with one PT_LOAD per run of populated guest-physical memory
(p_paddr = guest-physical address), as the domain process reported them when the domain
stopped; for a process that died without reporting, the memfd's data extents (SEEK_DATA /
SEEK_HOLE: frames never written are holes there, so left out). libxc writes its own
xc_core layout with p2m sections for crash tools; this file carries the memory only."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from pyxen.domain.memory import PAGE_SHIFT

if TYPE_CHECKING:
    from pyxen.host.hosted import HostedDomain

ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")
ET_CORE, EM_X86_64, PT_LOAD, PF_RW = 4, 62, 1, 6
IDENT = b"\x7fELF\x02\x01\x01" + bytes(9)  # 64-bit, little-endian, version 1, System V
COPY_CHUNK = 1 << 20


def data_runs(fd: int) -> list[tuple[int, int]]:
    """(offset, length) of every data extent of `fd`."""
    runs: list[tuple[int, int]] = []
    end = os.fstat(fd).st_size
    offset = 0
    while offset < end:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after offset
            break
        stop = os.lseek(fd, start, os.SEEK_HOLE)
        runs.append((start, stop - start))
        offset = stop
    return runs


def write_core(dom: HostedDomain, target: Path) -> None:
    """Write `dom`'s memory to `target` (its directory is created)."""
    if dom.memory_runs is not None:
        runs = [(gfn << PAGE_SHIFT, frames << PAGE_SHIFT) for gfn, frames in dom.memory_runs]
    else:
        runs = data_runs(dom.memfd)
    target.parent.mkdir(parents=True, exist_ok=True)
    headers_end = ELF_HEADER.size + PROGRAM_HEADER.size * len(runs)
    data_start = -(-headers_end // 4096) * 4096
    with open(target, "wb") as out:
        out.write(ELF_HEADER.pack(IDENT, ET_CORE, EM_X86_64, 1, 0, ELF_HEADER.size, 0, 0,
                                  ELF_HEADER.size, PROGRAM_HEADER.size, len(runs), 0, 0, 0))
        offset = data_start
        for gpa, length in runs:
            out.write(PROGRAM_HEADER.pack(PT_LOAD, PF_RW, offset, gpa, gpa, length, length, 4096))
            offset += length
        out.seek(data_start)
        for gpa, length in runs:
            done = 0
            while done < length:
                chunk = os.pread(dom.memfd, min(COPY_CHUNK, length - done), gpa + done)
                if not chunk:
                    raise OSError(f"guest memory ended early at {gpa + done:#x}")
                out.write(chunk)
                done += len(chunk)
