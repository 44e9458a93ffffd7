"""pyxen: the Xen hypervisor, re-implemented in Python on Linux KVM."""

__version__ = "0.1.0"
