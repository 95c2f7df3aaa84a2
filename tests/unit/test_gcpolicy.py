"""The collector policy: freezes every N committed commands, thaws every Kth time."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from exchange.gcpolicy import GcPolicy


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_freezes_the_surviving_heap_every_n_commands_and_thaws_every_kth_time() -> None:
    policy = GcPolicy(freeze_every=100, thaw_every=3)
    kept = [[i] for i in range(50)]  # tracked objects alive across the freeze
    policy.count(60)
    assert gc.get_freeze_count() == 0, "froze before 100 commands"
    policy.count(40)
    frozen = gc.get_freeze_count()
    assert frozen >= len(kept) and policy.freezes == 1
    policy.count(99)
    assert gc.get_freeze_count() == frozen, "froze again before the next 100"
    policy.count(1)
    assert policy.freezes == 2 and gc.get_freeze_count() >= frozen
    policy.count(100)  # the third: a thaw, the frozen objects go back to the collector
    assert (policy.freezes, policy.thaws, gc.get_freeze_count()) == (3, 1, 0)
    policy.count(100)
    assert gc.get_freeze_count() > 0, "the cycle starts again after a thaw"


def test_a_frozen_cycle_is_collected_after_the_thaw() -> None:
    policy = GcPolicy(freeze_every=1, thaw_every=2)

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # type: ignore[attr-defined]
    policy.count(1)  # frozen while alive
    del a, b
    gc.collect()
    assert not any(type(o) is Node for o in gc.get_objects()), "frozen: out of the collector's sight"
    policy.thaw()
    assert sum(1 for o in gc.get_objects() if type(o) is Node) == 2, "the dead cycle is back in view"
    gc.collect()
    assert sum(1 for o in gc.get_objects() if type(o) is Node) == 0, "and collected"


def test_zero_never_freezes_and_bad_bounds_are_refused() -> None:
    policy = GcPolicy(freeze_every=0)
    policy.count(10**9)
    assert gc.get_freeze_count() == 0 and policy.freezes == 0
    with pytest.raises(ValueError):
        GcPolicy(freeze_every=-1)
    with pytest.raises(ValueError):
        GcPolicy(thaw_every=0)


def test_the_collector_is_paused_inside_and_restored_after() -> None:
    from exchange.gcpolicy import collector_paused

    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():  # nested: the inner one leaves it off
            pass
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled(), "a collector that was off stays off"
    finally:
        gc.enable()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("boom")
    assert gc.isenabled(), "restored after an exception too"
