"""The pacing primitives on plain numbers: no clock, no network."""

from __future__ import annotations

from consentgate.adapters.pacing import ChatPacer, SlidingWindow


def test_a_sliding_window_names_the_moment_the_next_event_fits() -> None:
    window = SlidingWindow(limit=3, window=60.0)
    for at in (0.0, 10.0, 20.0):
        assert window.next_free("k", at) == at
        window.record("k", at)
    assert window.next_free("k", 30.0) == 60.0  # the oldest of the three leaves the window
    assert not window.allow("k", now=59.9)
    assert window.allow("k", now=60.0)
    assert window.next_free("other", 30.0) == 30.0


def test_a_chat_gets_one_slot_per_interval_and_a_group_twenty_a_minute() -> None:
    pacer = ChatPacer(interval=1.0, group_per_minute=20)
    person, group = 42, -100123
    slots = []
    for _ in range(3):
        slot = pacer.next_slot(person, 0.0)
        pacer.reserve(person, slot, 0.0)
        slots.append(slot)
    assert slots == [0.0, 1.0, 2.0]
    group_slots = []
    for _ in range(21):
        slot = pacer.next_slot(group, 0.0)
        pacer.reserve(group, slot, 0.0)
        group_slots.append(slot)
    assert group_slots[:20] == [float(i) for i in range(20)]
    assert group_slots[20] == 60.0  # the first of the twenty has left the minute
    # Another chat never waits for these.
    assert pacer.next_slot(7, 0.0) == 0.0


def test_a_hold_keeps_the_chat_waiting_until_the_provider_allows() -> None:
    pacer = ChatPacer(interval=1.0, group_per_minute=0)
    pacer.hold(42, until=30.0)
    assert pacer.next_slot(42, 5.0) == 30.0
    for i in range(25):  # no group limit configured: one a second, no minute cap
        pacer.reserve(-5, float(i), float(i))
    assert pacer.next_slot(-5, 25.0) == 25.0
