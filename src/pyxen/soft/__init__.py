"""pyxen.soft."""
