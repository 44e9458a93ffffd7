"""Stop signals (pyxen.threads): a SIGTERM whose SignalStop a finalizer swallowed is not lost.

The handler raises SignalStop in whatever Python code the main thread is running when the
signal is handled. Run by the garbage collector, a finalizer (here: weakref.finalize, as
Unicorn's engine objects use) drops that exception as "ignored"; `pyxen run` then slept
forever in Domain.wait, its socket left behind (an under-load run of
test_sigterm_at_any_moment_leaves_nothing_behind caught it). These tests drive real
signals at the test process's own main thread."""

from __future__ import annotations

import os
import signal
import weakref

import pytest

from pyxen.threads import SignalStop, stop_signals


class _Engine:
    """Something with a finalizer, as a Unicorn engine has one."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_stop_swallowed_by_a_finalizer_is_raised_by_the_next_check() -> None:
    with stop_signals.installed():
        engine = _Engine()
        # The signal is handled inside the finalizer: its SignalStop goes nowhere.
        weakref.finalize(engine, os.kill, os.getpid(), signal.SIGTERM)
        del engine
        with pytest.raises(SignalStop) as stop:
            stop_signals.check()
    assert stop.value.signum == signal.SIGTERM
    assert stop.value.exit_status == 143


def test_check_raises_nothing_without_a_signal_or_outside_the_handlers() -> None:
    with stop_signals.installed():
        stop_signals.check()
    stop_signals.check()  # a stop of an earlier run is not carried over


def test_check_waits_for_the_end_of_a_deferred_block() -> None:
    finished = False
    with stop_signals.installed():
        with pytest.raises(SignalStop), stop_signals.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            stop_signals.check()  # held here: the block must finish its teardown
            finished = True
        assert finished
        with pytest.raises(SignalStop):  # the stop stays asked for until the run ends
            stop_signals.check()
