"""Xen's public ABI (Xen 4.17, x86-64): constants and struct layouts, one module per header.

tests/test_abi_layouts.py compiles a C program against Debian's libxen-dev headers and checks
every ctypes struct here (size and field offsets) against it.
"""
