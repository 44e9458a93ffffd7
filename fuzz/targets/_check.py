"""What every target checks besides "no unexpected exception"."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class Bug(AssertionError):
    """An invariant the code under test promises is broken (not an assert: -O keeps it)."""


def require(condition: object, what: str) -> None:
    if not condition:
        raise Bug(what)


def reads_back(parse, spec: str, value) -> None:  # type: ignore[no-untyped-def]
    """`value` (what `parse` made of `spec`) written back by its to_spec() parses the same,
    or to_spec() refuses it in one line."""
    try:
        text = value.to_spec()
    except ValueError as e:
        one_line(e)
        return
    again = parse(text)
    require(again == value, f"{spec!r} is {value}, but its to_spec() {text!r} is {again}")


def one_line(error: BaseException) -> None:
    """A user-facing error is one line of text."""
    text = str(error)
    require(text and "\n" not in text and "\r" not in text,
            f"{type(error).__name__} is not one line: {text!r}")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def no_logged_errors(name: str) -> Iterator[None]:
    """Run quietly with logger `name` (its warnings about bad input are expected), and
    raise Bug if it logged an ERROR: the code under test caught a bug of its own and said
    so. The logger is left as it was (a test suite may import a target)."""
    logger = logging.getLogger(name)
    records = _Records()
    saved = logger.propagate
    logger.addHandler(records)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(records)
        logger.propagate = saved
    errors = [r for r in records.records if r.levelno >= logging.ERROR]
    if errors:
        exc = errors[0].exc_info[1] if errors[0].exc_info else None
        raise Bug(f"{name} logged an error: {errors[0].getMessage()}") from exc
