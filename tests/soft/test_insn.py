"""soft/insn.py's straight_line_end: where a single step's instruction ends, so the step can
stop at an exit there instead of counting instructions (a counted run flushes every block)."""

from __future__ import annotations

import pytest

from pyxen.soft.insn import plain_store, straight_line_end

BASE = 0xFFFF_FFFF_8100_0000


@pytest.mark.parametrize(("code", "length"), [
    ("c70000000000", 6),            # movl $0, (%rax): an xAPIC write
    ("c74070ff010000", 7),          # movl $0x1ff, 0x70(%rax)
    ("8b8280030000", 6),            # mov 0x380(%rdx), %eax
    ("f0480fb12a", 5),              # lock cmpxchg %rbp, (%rdx)
    ("f3a5", 2),                    # rep movsl: every iteration is one instruction
    ("fb", 1),                      # sti
    ("f4", 1),                      # hlt
])
def test_straight_line_instructions_end_after_their_bytes(code: str, length: int) -> None:
    raw = bytes.fromhex(code) + b"\x90" * 15
    assert straight_line_end(raw, BASE, 64) == BASE + length


@pytest.mark.parametrize("code", [
    "ebfe",            # jmp .
    "7405",            # je +5
    "e800000000",      # call
    "c3",              # ret
    "48cf",            # iretq
    "cd80",            # int $0x80
    "ff20",            # jmp *(%rax)
    "e2fe",            # loop
])
def test_branches_are_left_to_a_counted_step(code: str) -> None:
    assert straight_line_end(bytes.fromhex(code) + b"\x90" * 15, BASE, 64) is None


def test_undecodable_bytes_are_left_to_a_counted_step() -> None:
    assert straight_line_end(b"", BASE, 64) is None
    assert straight_line_end(bytes.fromhex("c700"), BASE, 64) is None  # cut short


@pytest.mark.parametrize("code, length, size", [
    ("8902", 2, 4),                  # mov %eax,(%rdx): Linux's writel, an APIC EOI
    ("c70001000000", 6, 4),          # movl $1,(%rax)
    ("48893c25b000e0fe", 8, 8),      # mov %rdi,0xfee000b0
    ("8807", 2, 1),                  # mov %al,(%rdi)
])
def test_a_plain_store_retires_without_a_replay(code: str, length: int, size: int) -> None:
    assert plain_store(bytes.fromhex(code) + b"\x90" * 8, BASE, 64) == (length, size)


@pytest.mark.parametrize("code", [
    "8b02",    # mov (%rdx),%eax: a load needs the device's answer
    "0107",    # add %eax,(%rdi): reads the old value, sets flags
    "8707",    # xchg: a load too
    "f3ab",    # rep stos: many stores
    "89c0",    # mov %eax,%eax: no memory at all
])
def test_anything_else_is_replayed(code: str) -> None:
    assert plain_store(bytes.fromhex(code) + b"\x90" * 8, BASE, 64) is None
