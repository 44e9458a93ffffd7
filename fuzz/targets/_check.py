"""What every target checks besides "no unexpected exception"."""

from __future__ import annotations


class Bug(AssertionError):
    """An invariant the code under test promises is broken (not an assert: -O keeps it)."""


def require(condition: object, what: str) -> None:
    if not condition:
        raise Bug(what)


def one_line(error: BaseException) -> None:
    """A user-facing error is one line of text."""
    text = str(error)
    require(text and "\n" not in text and "\r" not in text,
            f"{type(error).__name__} is not one line: {text!r}")
