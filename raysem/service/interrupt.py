"""Stopping a study: the first SIGINT ends the running Tune run and the study (``--resume`` goes on); and two
test hooks, so that tests interrupt where they mean to: a SIGINT landed at a named boundary, and a barrier
that holds units while a test acts."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any


class StudyInterrupted(RuntimeError):
    """A Tune run ended before all its trials did (SIGINT, or ``failure.fail_fast`` after a failed trial)."""


class StopOnSigint:
    """Within a study, the first SIGINT stops the running Tune run the way Tune's Ctrl-C does (through
    the SIGUSR1 handler each Tune run installs) and is remembered, so the study stops instead of going
    on to its next phase; a second SIGINT interrupts at once. Outside the main thread, does nothing."""

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None

    def __enter__(self) -> StopOnSigint:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received:
            raise KeyboardInterrupt
        self.received = True
        if signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's handler: checkpoint the experiment, end the run


INTERRUPT_AT = "RAYSEM_INTERRUPT_AT"
_reported: dict[str, int] = {}


def interrupt_at(boundary: str) -> None:
    """Test hook: SIGINT this driver once, as a Ctrl-C landing at a named boundary would, when
    ``$RAYSEM_INTERRUPT_AT`` names it: ``grid:N``, ``search:N`` or ``confirm:N`` (once N units of that
    phase reported in this process), ``search-end`` (the search done, its confirmation not begun) or
    ``end`` (every phase done, the study run not yet marked FINISHED)."""
    wanted = os.environ.get(INTERRUPT_AT, "")
    name, _, count = wanted.partition(":")
    if not wanted or name != boundary:
        return
    _reported[boundary] = _reported.get(boundary, 0) + 1
    if _reported[boundary] >= int(count or 1):
        del os.environ[INTERRUPT_AT]
        _reported.clear()
        os.kill(os.getpid(), signal.SIGINT)


BARRIER = "RAYSEM_UNIT_BARRIER"


def wait_at_barrier(folder: str | None) -> None:
    """Test hook: with ``$RAYSEM_UNIT_BARRIER`` naming a folder on the driver (handed to every unit through its
    context), each unit takes the next ticket (a file ``unit-<n>``, created exclusively); the first ``pass``
    units (a number in the folder's ``pass`` file) go on, the others wait for a ``release`` file, so that a test
    acts (loses a node, say) while a known number of units has finished and the next one is running."""
    if not folder:
        return
    root = Path(folder)
    ticket = 0
    while True:
        try:
            os.close(os.open(root / f"unit-{ticket}", os.O_CREAT | os.O_EXCL))
            break
        except FileExistsError:
            ticket += 1
    if ticket < int((root / "pass").read_text()):
        return
    while not (root / "release").exists():
        time.sleep(0.1)
