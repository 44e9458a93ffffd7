"""pyxen.kvm."""
