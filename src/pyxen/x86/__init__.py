"""The x86 architecture's rules, shared by both vCPU backends and the hypervisor.

A rule that KVM and the software CPU must both follow (the CPUID policy first) lives here
once, so the two backends cannot drift apart in what a guest sees.
"""
