"""Sampling: on change, at most once per minimum interval, and no change is lost."""

from __future__ import annotations

from carledger.sampling import MessageHandler, Tap


def run(frames, min_interval):
    out = []
    handler = MessageHandler(lambda data: [data[0]], [])
    handler.taps.append([Tap(lambda t, n, v, s: out.append((t, v)), "x", None, min_interval, owner=handler)])
    for t, value in frames:
        handler.handle(t, bytes([value]))
    return out


def test_records_only_changes():
    assert run([(0, 1), (1, 1), (2, 2), (3, 2), (4, 1)], 0) == [(0, 1), (2, 2), (4, 1)]


def test_min_interval_holds_changes_back_but_records_the_latest_value_when_it_ends():
    frames = [(0.0, 1), (0.1, 2), (0.2, 3), (0.3, 3), (0.6, 3), (0.7, 4), (1.2, 4)]
    # 2 and 3 arrive inside the 0.5 s interval; 3 is recorded at the first frame after it ends
    assert run(frames, 0.5) == [(0.0, 1), (0.6, 3), (1.2, 4)]


def test_a_change_that_reverts_inside_the_interval_is_not_recorded():
    assert run([(0.0, 1), (0.1, 2), (0.2, 1), (0.6, 1)], 0.5) == [(0.0, 1)]


def test_unchanged_payloads_are_not_decoded_unless_a_tap_waits():
    calls = []

    def extract(data):
        calls.append(data)
        return [data[0]]

    handler = MessageHandler(extract, [])
    handler.taps.append([Tap(lambda *a: None, "x", None, 1.0, owner=handler)])
    for t, v in [(0.0, 1), (0.1, 1), (0.2, 2), (0.3, 2), (1.1, 2), (1.2, 2)]:
        handler.handle(t, bytes([v]))
    # decoded: first frame, the change at 0.2, then frames while the change waits (0.3, 1.1); not 0.1 or 1.2
    assert [c[0] for c in calls] == [1, 2, 2, 2]
    assert handler.pending == 0
