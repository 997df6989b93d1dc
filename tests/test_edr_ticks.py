"""The ring's tick-only signals, read from their message's newest frame, give the ticks every sample would."""

from __future__ import annotations

import random
from types import SimpleNamespace

from carledger.edr.recorder import CrashRecorder, WatchedHandler, _WatchedDecoded
from carledger.edr.ring import SnapshotRing


def _extract(data: bytes) -> list:
    """Two one-byte signals; the second is absent from a 1-byte frame, and from a frame muxed out (byte 255)."""
    b = None if len(data) < 2 or data[1] == 255 else data[1]
    return [data[0], b]


def _frames(seed: int) -> list[tuple[float, bytes]]:
    rng = random.Random(seed)
    t, out = 1000.0, []
    for _ in range(800):
        t += rng.choice([0.003, 0.01, 0.02, 0.05, 0.1, 0.13])
        if rng.random() < 0.01:
            t += 2.5  # a silence longer than STALE: nothing held is current after it
        kind = rng.random()
        data = bytes([rng.randrange(4)]) if kind < 0.1 else bytes([rng.randrange(4), rng.choice([rng.randrange(4), 255])])
        out.append((round(t, 6), data))
    return out


def _sampled(frames: list[tuple[float, bytes]]) -> SnapshotRing:
    ring = SnapshotRing()
    for t, data in frames:
        for name, value in zip("ab", _extract(data)):
            if value is not None:
                ring.offer(t, name, value, f"M.{name}")
    return ring


class _Taken:
    """A stream's tap, as far as the handler sees one: what it was offered."""

    def __init__(self) -> None:
        self.offered: list[tuple[float, object]] = []

    def offer(self, t: float, value: object) -> None:
        self.offered.append((t, value))


def _watched(frames: list[tuple[float, bytes]], *, multiplexed: bool, taken: _Taken | None = None) -> SnapshotRing:
    """The ring fed as the bus's frame loop feeds it; with `taken`, a stream also takes signal a (the decoding handler)."""
    ring = SnapshotRing()
    recorder = SimpleNamespace(ring=ring, capture=None, flush=lambda: None, _flush_at=float("-inf"))
    recorder.tick = lambda t: CrashRecorder.tick(recorder, t)  # type: ignore[arg-type]
    kind = WatchedHandler if taken is None else _WatchedDecoded
    taps = [[], []] if taken is None else [[taken], []]
    handler = kind(recorder, ("car", "M"), _extract, taps, 2, multiplexed)  # type: ignore[arg-type]
    ring.watch(("car", "M"), handler, [(0, "a", "M.a"), (1, "b", "M.b")])
    for t, data in frames:
        CrashRecorder.frame(recorder, handler, t, data)  # type: ignore[arg-type]  # what the bus's frame loop does
    return ring


def test_ticks_from_frames_equal_ticks_from_every_sample() -> None:
    for seed in range(6):
        frames = _frames(seed)
        expected = [(t, sorted(row)) for t, row in _sampled(frames).ticks]
        assert len(expected) > 50
        assert [(t, sorted(row)) for t, row in _watched(frames, multiplexed=True).ticks] == expected
        short_only = [(t, data if data[-1] != 255 else data[:1]) for t, data in frames]  # no mux: short frames only
        expected = [(t, sorted(row)) for t, row in _sampled(short_only).ticks]
        assert [(t, sorted(row)) for t, row in _watched(short_only, multiplexed=False).ticks] == expected
        taken = _Taken()
        assert [(t, sorted(row)) for t, row in _watched(short_only, multiplexed=False, taken=taken).ticks] == expected
        assert taken.offered and all(value is not None for _, value in taken.offered)


def test_short_frames_of_a_compiled_extractor_hold_what_the_frame_before_carried() -> None:
    """The decoding handler folds through the compiled extractor's own length test (calling_on_short)."""
    import cantools

    from carledger.decode.extract import compile_message

    db = cantools.database.load_string('VERSION ""\nNS_ :\nBS_:\nBU_: A\nBO_ 10 M: 2 A\n'
                                       ' SG_ a : 0|8@1+ (1,0) [0|0] "" A\n SG_ b : 8|8@1+ (1,0) [0|0] "" A\n',
                                       database_format="dbc", strict=False)
    extract = compile_message(db.get_message_by_name("M"), ["a", "b"]).extract
    for seed in range(6):
        frames = [(t, data if data[-1] != 255 else data[:1]) for t, data in _frames(seed)]
        expected = [(t, sorted(row)) for t, row in _sampled(frames).ticks]
        ring = SnapshotRing()
        recorder = SimpleNamespace(ring=ring, capture=None, flush=lambda: None, _flush_at=float("-inf"))
        recorder.tick = lambda t, r=recorder: CrashRecorder.tick(r, t)  # type: ignore[misc]
        taken = _Taken()
        handler = _WatchedDecoded(recorder, ("car", "M"), extract, [[taken], []], 2, False)  # type: ignore[arg-type]
        assert handler.extract_frame.__code__ is extract.__code__  # no test of its own per frame
        ring.watch(("car", "M"), handler, [(0, "a", "M.a"), (1, "b", "M.b")])
        for t, data in frames:
            CrashRecorder.frame(recorder, handler, t, data)  # type: ignore[arg-type]
        assert [(t, sorted(row)) for t, row in ring.ticks] == expected
        assert taken.offered


def test_ticks_flush_the_trigger_every_half_second_of_data_and_when_the_clock_steps_back() -> None:
    from carledger.edr.recorder import FLUSH_EVERY

    flushed: list[int] = []
    recorder = SimpleNamespace(ring=SnapshotRing(), _flush_at=float("-inf"))
    recorder.flush = lambda: flushed.append(1)
    for k in range(20):  # 2 s of ticks
        CrashRecorder.tick(recorder, round(100.0 + k * 0.1, 6))  # type: ignore[arg-type]
    assert FLUSH_EVERY == 0.5 and len(flushed) == 4  # at 100.0, 100.5, 101.0 and 101.5
    CrashRecorder.tick(recorder, 50.0)  # type: ignore[arg-type]  # the data's clock stepped back an hour
    assert len(flushed) == 5


def test_a_silence_forgets_the_frames_before_it() -> None:
    ring = _watched([(100.0, b"\x07\x00"), (100.05, b"\x07\x00"), (100.12, b"\x07\x00")], multiplexed=False)
    assert ring.ticks[-1][1] == (("a", 7, "M.a"), ("b", 0, "M.b"))
    ring.advance(105.0)  # the car was silent for longer than STALE; no new frame of M since
    ring.advance(105.3)
    assert ring.ticks[-1][1] == ()


def test_a_tick_keeps_frames_and_decodes_them_only_when_read() -> None:
    """Between captures a tick keeps the newest frames as they are; reading the ticks decodes them."""
    calls = []

    def counting(data: bytes) -> list:
        calls.append(data)
        return _extract(data)

    ring = SnapshotRing()
    recorder = SimpleNamespace(ring=ring, capture=None, flush=lambda: None, _flush_at=float("-inf"))
    recorder.tick = lambda t: CrashRecorder.tick(recorder, t)  # type: ignore[arg-type]
    handler = WatchedHandler(recorder, ("car", "M"), counting, [[], []], 2, False)  # type: ignore[arg-type]
    ring.watch(("car", "M"), handler, [(0, "a", "M.a"), (1, "b", "M.b")])
    for k in range(300):  # 3 s of a 100 Hz message: 29 ticks
        CrashRecorder.frame(recorder, handler, 100.0 + k * 0.01, bytes([k % 4, k % 3]))  # type: ignore[arg-type]
    assert len(ring._kept) >= 29 and calls == []  # nothing decoded per frame or per tick
    window = ring.window(100.0)
    assert len(calls) == len(window) == len(ring._kept)
    t, row = window[-1]
    newest = max(k for k in range(300) if 100.0 + k * 0.01 <= t)  # the newest frame at or before the tick
    assert row == (("a", newest % 4, "M.a"), ("b", newest % 3, "M.b"))


def test_the_bulk_trace_paths_give_the_floats_every_sample_gives() -> None:
    """VelocityTrace.extend and AccelerationIntegral.add_all (a tick's samples at once) against add() per sample:
    the same integral, to the bit, and the same trigger-window answers (out-of-order samples included)."""
    from carledger.edr.trigger import AccelerationIntegral, VelocityTrace

    for seed in range(60):
        rng = random.Random(seed)
        bulk, each = AccelerationIntegral(), AccelerationIntegral()
        speed_bulk, speed_each = VelocityTrace(), VelocityTrace()
        t = 1000.0
        # odd seeds: steps under ACCEL_HOLD only (a car's sensor); even ones: longer steps too, each held to ACCEL_HOLD
        steps = [0.0, 0.001, 0.01, 0.0123, 0.0999] if seed % 2 else [0.0, 0.001, 0.01, 0.0123, 0.1, 0.15, 0.37]
        for _ in range(rng.randrange(1, 40)):
            times, values = [], []
            for _ in range(rng.randrange(0, 30)):
                t += rng.choice(steps)
                times.append(round(t - (0.05 if rng.random() < 0.03 else 0.0), 6))
                values.append(rng.uniform(-30.0, 30.0))
            bulk.add_all(times, values)
            speed_bulk.extend(times, values)
            for when, value in zip(times, values):
                each.add(when, value)
                speed_each.add(when, value)
            assert (bulk._t, bulk._a, bulk._v) == (each._t, each._a, each._v)
            for trace in (bulk.trace, speed_bulk):  # could_trigger's range, kept by _append and _prune (sorted())
                assert not trace.values or (trace.low, trace.high) == (min(trace.values), max(trace.values))
            if times and times == sorted(times):
                for trace_bulk, trace_each in ((bulk.trace, each.trace), (speed_bulk, speed_each)):
                    assert trace_bulk.largest_change(times[-1], 0.15) == trace_each.largest_change(times[-1], 0.15)
                    assert trace_bulk.change(times[-1], 0.02) == trace_each.change(times[-1], 0.02)


def test_a_flag_messages_frames_that_decode_as_before_reach_no_tap_and_an_edge_still_does() -> None:
    """An airbag or crash flag looks for edges only: its message's handler may skip a frame whose signals decode
    as the one before (only a counter moved), as it does for on-change taps; a rising edge is still offered."""
    from carledger.edr.recorder import _FlagEdge
    from carledger.sampling import MessageHandler, Tap

    flagged: list = []
    recorder = SimpleNamespace(capture=None, _flag_values={}, flag=lambda role, name, t, value: flagged.append((t, value)))
    recorded: list = []
    tap = Tap(lambda t, name, value, source: recorded.append((t, value)), "Vehicle.Airbag", None, 0.0)
    offered: list = []

    class CountedEdge(_FlagEdge):
        __slots__ = ()

        def offer(self, t: float, value: object) -> None:
            offered.append(t)
            super().offer(t, value)

    edge = CountedEdge(recorder, "airbag", "Vehicle.Airbag")
    handler = MessageHandler(lambda data: [data[0] & 1], [[tap, edge]])  # the counter (data[1]) is not extracted
    for k in range(50):
        handler.handle(1000.0 + k * 0.01, bytes([0, k % 16]))
    handler.handle(1000.5, bytes([1, 2]))
    assert handler.on_change_only is True
    assert offered == [1000.0, 1000.5] and flagged == [(1000.0, 0), (1000.5, 1)]
    assert recorded == [(1000.0, 0), (1000.5, 1)]
