"""Host mode: the pyxen daemon, its domain processes and the client that talks to it."""
