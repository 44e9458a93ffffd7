"""Save, restore and (to come) live migration of a domain: the stream format
(`stream`), guest frames in it (`pages`)."""
