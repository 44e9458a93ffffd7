"""pyxen.backends."""
