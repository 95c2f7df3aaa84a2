"""When Python's cyclic garbage collector may scan the exchange's long-lived state (ADR 0013).

The engine's resting orders are GC-tracked objects (native classes with links to each other),
and a book of a million of them made every full collection a pause of about 100 ms. CPython
starts a full collection each time the objects promoted to the oldest generation since the last
one reach a quarter of the ones it found alive, so a growing or churning book paid that pause
over and over: in `bench/durable.py` full collections took about a third of the run.

`gc.freeze()` moves every object alive at that moment out of the collector's sight (O(1)); they
are still freed by reference counting as usual. What it costs: cyclic garbage among frozen
objects (a cycle alive at the freeze that dies after it) is not collected while frozen. So the
policy thaws (`gc.unfreeze()`) every `thaw_every` freezes, and the next full collection takes
whatever such cycles accumulated: the memory at stake is bounded, the long pause comes
`thaw_every` times more rarely.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

FREEZE_EVERY = 10_000  # committed commands between freezes
THAW_EVERY = 100  # freezes between thaws: the collector sees everything once per million commands


class GcPolicy:
    """Counts committed commands; freezes the surviving heap every `freeze_every` (0: never)."""

    def __init__(self, freeze_every: int = FREEZE_EVERY, thaw_every: int = THAW_EVERY) -> None:
        if freeze_every < 0 or thaw_every < 1:
            raise ValueError("freeze_every must be >= 0 and thaw_every >= 1")
        self.freeze_every = freeze_every
        self.thaw_every = thaw_every
        self.freezes = 0  # rounds of `freeze_every` commands so far (each a freeze, or every `thaw_every`th a thaw)
        self.thaws = 0  # thaws so far, those after a rebuild included
        self._since = 0

    def count(self, commands: int) -> None:
        if not self.freeze_every:
            return
        self._since += commands
        if self._since < self.freeze_every:
            return
        self._since = 0
        if (self.freezes + 1) % self.thaw_every == 0:
            self.thaw()
        else:
            gc.freeze()
        self.freezes += 1

    def thaw(self) -> None:
        """Give the frozen objects back to the collector: periodically, and when memory was
        rebuilt (the discarded engine's book is a web of cycles that only the collector frees)."""
        gc.unfreeze()
        self.thaws += 1


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic collections inside: for building a large long-lived state at once (a
    recovery, a snapshot's encoding), which would otherwise trigger full collections that
    rescan the growing heap again and again (2-3x the time). Restores the previous setting."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
