"""Reading back a saved state: the JSON-able dicts each part of a domain saves are read from
a file or a network, so every field is checked for its type before it is used, and a
mismatch is one ValueError naming the field (the restore turns it into a StreamError)."""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


class Saved:
    """A saved dict, read field by field: `what` names it in errors ("vCPU1", "port 5")."""

    def __init__(self, data: object, what: str) -> None:
        if not isinstance(data, dict):
            raise ValueError(f"the saved {what} is not a record")
        self.data: dict[str, Any] = data
        self.what = what

    def _bad(self, key: str, kind: str) -> ValueError:
        return ValueError(f"the saved {self.what} has no valid {key} ({kind} expected)")

    def int(self, key: str, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
        value = self.data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise self._bad(key, f"an integer in [{lo}, {hi}]")
        return value

    def opt_int(self, key: str, lo: int = 0, hi: int = (1 << 64) - 1) -> int | None:
        return None if self.data.get(key) is None else self.int(key, lo, hi)

    def bool(self, key: str) -> bool:
        value = self.data.get(key)
        if not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return value

    def str(self, key: str) -> str:
        value = self.data.get(key)
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return value

    def hex(self, key: str, size: int | None = None) -> bytes:
        try:
            value = bytes.fromhex(self.str(key))
        except ValueError:
            raise self._bad(key, "hex bytes") from None
        if size is not None and len(value) != size:
            raise self._bad(key, f"{size} hex bytes")
        return value

    def ints(self, key: str, length: int | None = None) -> list[int]:
        value = self.data.get(key)
        if not isinstance(value, list) or (length is not None and len(value) != length) or \
                not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            raise self._bad(key, "a list of integers" + (f" of {length}" if length else ""))
        return value

    def list(self, key: str) -> list[Any]:
        value = self.data.get(key)
        if not isinstance(value, list):
            raise self._bad(key, "a list")
        return value

    def sub(self, key: str, what: str | None = None) -> Saved:
        return Saved(self.data.get(key), what or f"{self.what} {key}")
