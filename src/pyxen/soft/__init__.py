"""The software-CPU vCPU backend (Unicorn), for hosts where KVM is absent or slow."""
