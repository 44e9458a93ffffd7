"""pyxen.toolstack."""
