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


def test_a_clock_that_steps_back_or_one_frame_far_ahead_loses_no_change():
    """Frames carry the wall clock: an NTP step back, or one log line a year ahead, must not hold every change
    until the clock passes the last record again (it held 47,000 of a replay's 96,000 ABS_SPEED samples)."""
    ahead = 0.0 + 365 * 86400
    frames = [(10.0, 1), (10.1, 2), (ahead, 3), (10.2, 4), (10.3, 5), (10.4, 5), (11.0, 6)]
    assert run(frames, 0) == [(10.0, 1), (10.1, 2), (ahead, 3), (10.2, 4), (10.3, 5), (11.0, 6)]
    # with an interval: the step back is a whole interval away from the last record, so due at once;
    # the interval then counts from that record again
    assert run(frames, 0.5) == [(10.0, 1), (ahead, 3), (10.2, 4), (11.0, 6)]
    # jitter under the interval (two buses' batches interleaving on one tap) is held as before
    assert run([(10.0, 1), (9.8, 2), (10.2, 3), (10.6, 3)], 0.5) == [(10.0, 1), (10.6, 3)]


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


def test_frames_that_decode_as_before_change_nothing_recorded_even_around_a_held_change():
    """A counter byte moves in every frame: the signal's value decides, and a held-back change still lands."""
    out, offers = [], []

    class Counting(Tap):
        __slots__ = ()

        def offer(self, t, value):
            offers.append(t)
            Tap.offer(self, t, value)

    handler = MessageHandler(lambda data: [data[0]], [])
    handler.taps.append([Counting(lambda t, n, v, s: out.append((t, v)), "x", None, 0.5, owner=handler)])
    frames = [(0.0, 1), (0.1, 1), (0.2, 2), (0.3, 2), (0.8, 2), (0.9, 2), (1.0, 1), (1.1, 1), (1.6, 1), (1.7, 1)]
    for counter, (t, value) in enumerate(frames):
        handler.handle(t, bytes([value, counter]))
    # 2 waits out the interval from 0.0 and lands at 0.8; 1 comes back at 1.0, inside 2's interval, and lands at 1.6
    assert out == [(0.0, 1), (0.8, 2), (1.6, 1)]
    # not offered: 0.1 (as before), 0.9 and 1.7 (as before, nothing held back)
    assert offers == [0.0, 0.2, 0.3, 0.8, 1.0, 1.1, 1.6]


def test_a_feed_is_offered_every_value_even_when_the_frame_decodes_as_before():
    from carledger.policy.engine import Feed

    seen = []
    handler = MessageHandler(lambda data: [data[0]], [[Feed.of(lambda name, t, value: seen.append((t, value)), "x")]])
    for counter, t in enumerate([0.0, 0.1, 0.2]):
        handler.handle(t, bytes([7, counter]))
    assert seen == [(0.0, 7), (0.1, 7), (0.2, 7)]


def test_a_value_that_returns_after_a_reverted_change_is_recorded():
    out = []
    handler = MessageHandler(lambda data: [data[0]], [])
    handler.taps.append([Tap(lambda t, n, v, s: out.append((t, v)), "x", None, 0.5, owner=handler)])
    # 2 is held back, reverts to 1 (nothing recorded when the interval ends at 0.6), then 2 again at 0.7
    for counter, (t, value) in enumerate([(0.0, 1), (0.1, 2), (0.2, 1), (0.6, 1), (0.7, 2)]):
        handler.handle(t, bytes([value, counter]))
    assert out == [(0.0, 1), (0.7, 2)]


def test_a_rounded_tap_records_a_held_rounded_change_though_the_raw_value_repeats():
    from carledger.policy.engine import QuantizedTap
    from carledger.policy.precision import quantizer

    out = []
    tap = QuantizedTap(quantizer(10), lambda t, n, v, s: out.append((t, v)), "x", None, 0.5)
    for t, raw in [(0.0, 12), (0.1, 17), (0.2, 17), (0.6, 17), (0.7, 17), (0.8, 12), (1.2, 12), (1.3, 13)]:
        tap.offer(t, raw)
    # 17 rounds to 20: held inside the interval, recorded at 0.6 though 17 came before; 12 (10) the same way at 1.2
    assert out == [(0.0, 10), (0.6, 20), (1.2, 10)]
