"""pyxen.domain."""
