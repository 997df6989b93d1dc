"""The event data recorder: the pre-crash ring buffer, the trigger, and the capture it writes.

`CrashRecorder` is one more consumer of decoded signals, beside the policy's
streams. It runs only while the owner's policy has an `[edr]` section and is
not paused; then it keeps the last 20 s of the capture signals in memory
(`ring.SnapshotRing`). A trigger (`trigger.py`) turns that into a capture in
the `crash` stream:

1. a cleartext `capture` block (who may read it, why it started, the policy
   version in force), sealed at once;
2. the pre-crash ticks, encrypted to the policy's keys, sealed at once: a
   SIGKILL right after the trigger still leaves them durable;
3. the event at the rate the signals arrive (delta-V) and 10 Hz ticks, sealed
   at the end of the event and then every second of the post-crash window;
4. a cleartext `capture-end` block with the data's seqs and record count.

Then the keep rule: airbag-deployment captures are never overwritten; beyond
the policy's number of non-deployment captures, the oldest one's data is
declared overwritten and its records dropped (its metadata stays).
"""

from __future__ import annotations

import functools
import logging
import math
import operator
import weakref
from typing import Any, Callable

from carledger.decode.extract import calling_on_short
from carledger.edr import signals
from carledger.edr.captures import (
    CAPTURE, CAPTURE_END, CRASH_STREAM, DELTA_V, END_OF_EVENT, OVERWRITTEN, CaptureInfo, read_captures,
)
from carledger.edr.ring import PERIOD, PRE_CRASH, SnapshotRing, Tick
from carledger.edr.trigger import SETTLE_WINDOW, TRIGGER_KMH, TRIGGER_WINDOW, DeltaV, Trigger
from carledger.ledger import Ledger
from carledger.policy.document import CrashCapture
from carledger.sampling import REPEAT_EVERY, MessageHandler

log = logging.getLogger(__name__)

_FLOATS = {float}
_isfinite = math.isfinite
POST_SEAL_EVERY = 1.0  # seconds of the post-crash window between seals (durability within a second)
# seconds of the data's time between the trigger's flushes at ticks: a flush costs the same for 10 samples as
# for 50 (a fast replay's batch holds seconds of data; a car's, one wake-up, and is flushed after it)
FLUSH_EVERY = 0.5


def _number(value: Any) -> float | None:
    """A sample as a finite float; None for what is not one (text, NaN, infinity: no reading, not a crash).

    An IEEE float signal can carry NaN or infinity (an ECU's "invalid" at start-up, a glitch, a forged
    frame). Taken into a trace, one NaN left the acceleration integral NaN for the rest of the drive
    (no delta-V trigger from it again) and masked a speed trace's window; one infinity started a capture
    of an infinite delta-V; a NaN airbag flag counted as deployed. The capture still records the
    value the bus sent (the ring keeps it as it is).
    """
    inner = getattr(value, "value", value)  # cantools NamedSignalValue
    try:
        number = float(inner)
    except (TypeError, ValueError):
        return None
    return number if _isfinite(number) else None


class _Input:
    """One signal into the pre-crash buffer (the consumer interface of the policy's taps).

    `offer` runs for every frame of the signal's message: one comparison, one
    dict store and the role's `then` (nothing more for most roles unless a
    capture runs).
    """

    __slots__ = ("recorder", "ring", "role", "name", "owner")
    pending = False  # never holds a value back (the pipeline asks)

    def __init__(self, recorder: "CrashRecorder", role: str, name: str, source: str | None):
        self.recorder, self.ring, self.role, self.name = recorder, recorder.ring, role, name
        self.ring.sources[name] = source

    def offer(self, t: float, value: Any) -> None:
        ring = self.ring
        if t >= ring.due:
            self.recorder.flush()
            ring.advance(t)
        ring.values[self.name] = value
        self.then(t, value)

    def then(self, t: float, value: Any) -> None:
        """After the buffer has the value: what else this role does with it."""
        if self.recorder.capture is not None:
            self.recorder.poll(t)


class _VelocityInput(_Input):
    """Speed or longitudinal acceleration (OBD-II samples): also what the delta-V trigger watches."""

    __slots__ = ()

    def then(self, t: float, value: Any) -> None:
        self.recorder.velocity(self.role, self.name, t, value)


class _BufferedVelocity:
    """Speed or longitudinal acceleration on a bus: the trigger checked in bulk, not per sample.

    Between captures `offer` stores into a dict (time -> value), a C call: no Python code runs
    per sample. Every FLUSH_EVERY of data (at a tick), and after each batch of frames,
    `CrashRecorder.flush` adds the samples to their trace at once and looks for a trigger only
    where the trace's range allows one, checking each sample then as before: the trigger's time
    and the 150 ms window are the same, found up to FLUSH_EVERY or a wake-up later. During a
    capture every sample goes the full way at once (`now`), as the event's delta-V record and
    end need. The ring reads the signal from its frames (`SnapshotRing.watch`).
    """

    __slots__ = ("recorder", "role", "name", "samples", "offer", "owner", "__weakref__")
    pending = False  # never holds a value back (the pipeline asks)

    def __init__(self, recorder: "CrashRecorder", role: str, name: str):
        self.recorder, self.role, self.name = recorder, role, name
        self.samples: dict[float, Any] = {}
        self.owner: Any = None
        self.immediate(recorder.capture is not None)

    def immediate(self, on: bool) -> None:
        """Every sample at once (a capture runs), or buffered until the next tick."""
        # partial(setitem, samples), not samples.__setitem__: the same store, but a call the interpreter makes
        # without the slot wrapper's generic path (about a quarter less per sample)
        self.offer = self.now if on else functools.partial(operator.setitem, self.samples)

    def now(self, t: float, value: Any) -> None:
        self.recorder.velocity(self.role, self.name, t, value)

    def take(self) -> tuple[list[float], list[float]]:
        """The samples since the last flush, as numbers, in arrival order: (times, values), built in C loops."""
        samples = self.samples
        if not samples:
            return [], []
        times, values = list(samples), list(samples.values())
        samples.clear()
        # not all floats (ints, a cantools NamedSignalValue ...), or not all finite (a NaN or an infinity makes the
        # sum one; so may finite values that overflow it, which _number then keeps): convert, leaving those out
        if not _FLOATS.issuperset(map(type, values)) or not _isfinite(sum(values)):
            pairs = [(t, n) for t, n in zip(times, map(_number, values)) if n is not None]
            times, values = [t for t, _ in pairs], [n for _, n in pairs]
        return times, values


class _FlagInput(_Input):
    """An airbag or crash signal (OBD-II samples): its rising edge triggers a capture."""

    __slots__ = ()

    def then(self, t: float, value: Any) -> None:
        _edge(self.recorder, self.role, self.name, t, value)


class _FlagEdge:
    """An airbag or crash signal on a bus: its rising edge triggers a capture.

    The ring reads the signal's value from its message's frames at each tick (`SnapshotRing.watch`);
    this only looks for the edge: one comparison per sample while the value repeats.
    """

    __slots__ = ("recorder", "role", "name", "owner")
    pending = False  # never holds a value back (the pipeline asks)
    # The value it was last offered, offered again, finds no edge (`_edge` returns, or `flag` sees none), so
    # its message's handler may skip a frame that decodes as the one before. What else that call did during
    # a capture, `poll`, `CrashRecorder.frame` does after every frame of the message: the ring reads these
    # signals, so the message is watched. Without this, the flag's message (ACU_STATUS) offered every tap each
    # frame whose bytes changed (its counter, which no stream reads) though its signals decoded as before:
    # 305 instructions a frame of the city drive, a sixth of what readiness cost (issue 16).
    on_change_only = True

    def __init__(self, recorder: "CrashRecorder", role: str, name: str):
        self.recorder, self.role, self.name = recorder, role, name
        self.owner: Any = None

    def offer(self, t: float, value: Any) -> None:
        _edge(self.recorder, self.role, self.name, t, value)


def _edge(recorder: "CrashRecorder", role: str, name: str, t: float, value: Any) -> None:
    """Hands an airbag or crash signal's sample to `CrashRecorder.flag` unless it repeats the value it had."""
    last = recorder._flag_values
    if recorder.capture is None and name in last and last[name] == value:
        return  # the value the signal had: no edge (what flag() would find, without its calls per frame)
    last[name] = value
    recorder.flag(role, name, t, value)


_INPUTS = {signals.SPEED: _VelocityInput, signals.ACCEL_LONG: _VelocityInput,
           signals.AIRBAG: _FlagInput, signals.CRASH: _FlagInput}


class WatchedHandler(MessageHandler):
    """A message handler whose message has capture signals the ring reads at each tick (`SnapshotRing.watch`).

    Its `handle` only keeps (and, when a stream takes the message, decodes) the frame. What the
    ring needs around a frame runs in the bus's frame loop instead (`CrashRecorder.frame` says
    what): the ticks before it are emitted when the frame is at or past the next tick, and a
    running capture is polled after it. Checked there, a frame costs a comparison, not a call
    (issue 16: this handler's own check per frame was most of what crash readiness still cost).
    """

    __slots__ = ("recorder", "ring", "decode", "key", "length", "partial")
    watched = True

    def __init__(self, recorder: "CrashRecorder", key: tuple[str, str], extract: Callable[[bytes], list],
                 taps: list[list], length: int, multiplexed: bool):
        super().__init__(extract, taps)
        self.recorder, self.ring, self.key = recorder, recorder.ring, key
        self.decode = any(taps)  # only the ring reads this message: keep its frame, decode at the ticks
        self.length = length
        self.partial = multiplexed  # every frame may lack some of the signals

    def handle(self, t: float, data: bytes) -> None:
        last = self.last_data
        if data == last and not self.pending:
            only = self.on_change_only
            if only is None:
                only = self._on_change_only()
            if only or t < self.quiet_until:  # only on-change taps or none, or a feed had a repeat lately
                return
            self.quiet_until = t + REPEAT_EVERY
        if last is not None and data != last and (self.partial or len(data) < self.length):
            self.ring.fold(self.key)  # this frame may lack a signal the one it replaces has: hold that one's values
        self.last_data = data
        if self.decode:
            for value, taps in zip(self.extract(data), self.taps):
                if value is not None:
                    for tap in taps:
                        tap.offer(t, value)


class _WatchedDecoded(WatchedHandler):
    """`WatchedHandler` of the common message: not multiplexed, and a stream takes some of it.

    `MessageHandler.handle` with the ring's one need added: only a short frame can lack a signal
    here, and its extractor (`extract_frame`) folds the newest frame first. A copy, not a call into
    it nor a test in it: counted in instructions (bench_instructions, city drive with [edr]), calling
    MessageHandler.handle from here cost 0.6 % more than this loop without its skip of a frame that
    decodes as the last, the test in MessageHandler.handle cost every plain replay 0.7 %, and this
    copy saves 1.5 % of the [edr] replay's work.
    """

    __slots__ = ("extract_frame",)

    def __init__(self, recorder: "CrashRecorder", key: tuple[str, str], extract: Callable[[bytes], list],
                 taps: list[list], length: int, multiplexed: bool):
        super().__init__(recorder, key, extract, taps, length, multiplexed)
        # extract, but a frame shorter than the message (it may lack a signal the newest one has) first folds
        # the newest one into the ring's held values; tested where the extractor tests the length anyway, so a
        # frame of the message's length pays no test here (issue 16: the test per frame was 0.4 % of a replay)
        self.extract_frame = calling_on_short(extract, length, functools.partial(self.ring.fold, key))

    def handle(self, t: float, data: bytes) -> None:
        if data == self.last_data and not self.pending:
            if self.on_change_only or t < self.quiet_until:
                return  # as in MessageHandler.handle: a feed gets a repeated frame once per REPEAT_EVERY
            self.quiet_until = t + REPEAT_EVERY
        values = self.extract_frame(data)  # before the frame replaces the newest: a fold reads that one
        self.last_data = data
        only = self.on_change_only
        if only is None:
            only = self._on_change_only()
        if only:  # as MessageHandler.handle: the taps were last offered these values, offering them is a no-op
            previous, self.values = self.values, values
            if not self.pending and values is not previous and values == previous:
                return
        for value, taps in zip(values, self.taps):
            if value is not None:
                for tap in taps:
                    tap.offer(t, value)


class _Capture:
    """One capture being written: its phase, its writer's seals, what its end event will say."""

    def __init__(self, number: int, trigger: Trigger, deployment: bool, start_seq: int, post: float, timeout: float):
        self.number = number
        self.trigger = trigger
        self.deployment = deployment
        self.start_seq = start_seq
        self.post = post
        self.deadline = trigger.t + timeout  # the event ends by then at the latest
        self.end_of_event: float | None = None
        self.done_at: float | None = None
        self.records = 0
        self.max_delta = trigger.delta_kmh
        self.last_seal = trigger.t
        self.reference: float | None = None  # the triggering trace's velocity when the trigger window began


class CrashRecorder:
    """Crash captures for the policy's `[edr]`: fed through `consumers()`, `poll(t)` as the data's clock moves."""

    def __init__(self, ledger: Ledger, *, seal: Callable[[list], Any] | None = None,
                 on_event: Callable[[str, dict], None] | None = None):
        self.ledger = ledger
        self._seal = seal or ledger.seal
        self.on_event = on_event or (lambda kind, detail: None)
        self.settings: CrashCapture | None = None
        self.paused = False
        self.policy_version = 0
        self.policy_digest: bytes | None = None  # of the policy in force: what a capture's blocks name
        self.ring = SnapshotRing(length=PRE_CRASH + FLUSH_EVERY + PERIOD)  # what tick() may flush late
        self._flush_at = -math.inf  # the data's time of the next flush at a tick
        self.delta_v = DeltaV()
        self.capture: _Capture | None = None
        self._flags: dict[str, float] = {}  # airbag and crash signals: last value (edges trigger)
        self._sealer: Any = None  # encrypts to the [edr] keys
        self.captures: list[CaptureInfo] = read_captures(ledger.store)
        # held by the bus handlers: weak references, so that the handlers of a policy no longer in force go
        # (a list, not a WeakSet: flush walks it at every tick, and a WeakSet's iterator is Python code)
        self._buffered: list[weakref.ref[_BufferedVelocity]] = []
        self._flag_values: dict[str, Any] = {}  # airbag and crash signals: the last value as decoded

    # -- configuration ------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """Recording: the policy has [edr] and collection is not paused."""
        return self.settings is not None and not self.paused

    def configure(self, settings: CrashCapture | None, policy_version: int, policy_digest: bytes, *, paused: bool = False) -> bool:
        """The policy in force (`settings` None: no [edr]). True when recording turned on or off.

        While paused nothing is buffered; a running capture finishes under the terms it started with.
        """
        was = self.enabled
        if settings is not None and settings is not self.settings and settings != self.settings:
            from carledger.ledger.encrypt import RecordSealer  # runs at every checkpoint: imported only when needed

            self._sealer = RecordSealer([key for _, key in settings.keys])
        self.settings, self.paused = settings, paused
        if settings is not None:
            self.policy_version, self.policy_digest = policy_version, policy_digest
        if not self.enabled:
            self.ring.clear()
        if self.enabled != was:
            log.info("crash capture: %s", f"on, encrypted to {', '.join(n for n, _ in settings.keys)}" if settings and self.enabled else "off")
        return self.enabled != was

    def wants(self, name: str, source: str | None = None) -> bool:
        """Could the recorder need this signal under the policy (paused or not)? It is decoded then."""
        return self.settings is not None and signals.role_of(name, source) is not None

    def consumers(self, name: str, source: str | None = None) -> list[_Input]:
        """Inputs that take every sample of the signal (OBD-II samples; the trigger's signals on a bus)."""
        if not self.enabled:
            return []
        role = signals.role_of(name, source)
        return [] if role is None else [_INPUTS.get(role, _Input)(self, role, name, source)]

    def frame_consumers(self, name: str, source: str | None = None) -> tuple[list[_Input], bool]:
        """For a signal of a bus's message: the inputs taking every sample, and whether the ring reads it per tick.

        Only the trigger needs every sample, of speed, acceleration, airbag and crash signals; the
        ticks of every signal, those too, are read from its message's newest frame (`watch`).
        """
        if not self.enabled:
            return [], False
        role = signals.role_of(name, source)
        if role is None:
            return [], False
        if role in (signals.SPEED, signals.ACCEL_LONG):
            buffered = _BufferedVelocity(self, role, name)
            self._buffered = [ref for ref in self._buffered if ref() is not None]
            self._buffered.append(weakref.ref(buffered))
            return [buffered], True  # type: ignore[list-item]
        if role in (signals.AIRBAG, signals.CRASH):
            return [_FlagEdge(self, role, name)], True  # type: ignore[list-item]
        return [], True

    def handler(self, key: tuple[str, str], extract: Callable[[bytes], list], taps: list[list],
                held: list[tuple[int, str, str | None]], *, length: int = 8, multiplexed: bool = False) -> MessageHandler:
        """The handler of a bus's message with capture signals the ring reads per tick (`held`: index, name, source).

        `length`: the message's payload length (a shorter frame may lack signals); `multiplexed`: any frame may.
        """
        kind = _WatchedDecoded if any(taps) and not multiplexed else WatchedHandler
        handler = kind(self, key, extract, taps, length, multiplexed)
        self.ring.watch(key, handler, held)
        return handler

    def frame(self, handler: MessageHandler, t: float, data: bytes) -> None:
        """Hand a frame to its message's handler, with what the ring needs around a watched message's frame.

        The buses' frame loop (`carledger.dispatch.BusDispatch.process`) calls this only for a watched
        message's frame at or past `ring.due` (the next tick, or any time while a capture runs:
        the ring's `follow` makes it -inf then), and hands every other frame to its handler
        itself: one comparison per frame. Frames that come another way (reassembled messages)
        come here each.
        """
        watched = handler.watched
        if watched and t >= self.ring.due:
            self.tick(t)
        handler.handle(t, data)
        if watched and self.capture is not None:
            self.poll(t)

    def tick(self, t: float) -> None:
        """A watched message's frame at t is at or past the ring's next tick: emit the ticks before it.

        Every FLUSH_EVERY of the data's time, a trigger in the samples buffered before t starts its
        capture first (the pipeline also flushes after each batch of frames: at the car's pace, every
        wake-up). The ticks emitted since the trigger are still in the ring, which holds FLUSH_EVERY
        more than the pre-crash time, and the capture takes them from there.
        """
        flush_at = self._flush_at
        if t >= flush_at or t < flush_at - FLUSH_EVERY:  # or the data's clock stepped back
            self._flush_at = t + FLUSH_EVERY
            self.flush()
        self.ring.advance(t)

    # -- the data -----------------------------------------------------------------------------

    def velocity(self, role: str, name: str, t: float, value: Any) -> None:
        """A speed or acceleration sample: the delta-V trigger, and during an event the delta-V record."""
        number = value if type(value) is float and _isfinite(value) else _number(value)
        if number is None:
            return
        dv = self.delta_v
        if role == signals.SPEED:
            trace = dv.speed
            trace.add(t, number)
            dv.speed_signal = dv.speed_signal or name
        else:
            dv.accel.add(t, number)
            trace = dv.accel.trace
            dv.accel_signal = dv.accel_signal or name
        capture = self.capture
        if capture is None:
            self.trigger_check(trace, name, t)
        elif capture.end_of_event is None and name == capture.trigger.signal and capture.reference is not None:
            delta = dv.velocity(t, name) - capture.reference
            capture.max_delta = max(capture.max_delta, abs(delta))
            self._add_sample(t, DELTA_V, round(delta, 3), name)
        if self.capture is not None:
            self.poll(t)

    def _live_buffered(self) -> list[_BufferedVelocity]:
        return [each for each in (ref() for ref in self._buffered) if each is not None]

    def flush(self) -> None:
        """The speed and acceleration samples buffered since the last flush: into their traces, and the trigger.

        The earliest trigger among them starts a capture; the samples after it then go the full
        way in time order (their traces already hold them: the delta-V record reads the held value).
        """
        if self.capture is not None or not self._buffered:
            return
        dv = self.delta_v
        first: tuple[Trigger, _BufferedVelocity] | None = None
        taken = []
        for ref in self._buffered:
            each = ref()
            if each is None:
                continue
            times, values = each.take()
            if not times:
                continue
            taken.append((each, times, values))
            if each.role == signals.SPEED:
                trace = dv.speed
                trace.extend(times, values)
                dv.speed_signal = dv.speed_signal or each.name
            else:
                dv.accel.add_all(times, values)
                trace = dv.accel.trace
                dv.accel_signal = dv.accel_signal or each.name
            if trace.high - trace.low < TRIGGER_KMH:  # could_trigger(): no window of the trace can hold one
                continue
            for t in times:
                if first is not None and t >= first[0].t:
                    break
                trigger = dv.check(trace, each.name, t)
                if trigger is not None:
                    first = (trigger, each)
                    break
        if first is None or not self.enabled:
            return
        trigger, source = first
        self._start(trigger)
        later = sorted(((t, each is not source, each, v) for each, times, values in taken for t, v in zip(times, values)
                        if t > trigger.t or (t == trigger.t and each is not source)), key=lambda x: (x[0], x[1]))
        self.poll(trigger.t)
        for t, _, each, v in later:
            self.velocity(each.role, each.name, t, v)

    def trigger_check(self, trace: Any, name: str, t: float) -> None:
        """No capture runs and `trace` (of signal `name`) just took a sample at t: start one on a delta-V trigger."""
        self.flush()  # a trigger in the samples buffered before this one comes first
        if self.capture is not None:
            return
        trigger = self.delta_v.check(trace, name, t)
        if trigger is not None and self.enabled:
            self._start(trigger)

    def flag(self, role: str, name: str, t: float, value: Any) -> None:
        """An airbag or crash signal: a rising edge starts a capture (an airbag one marks it a deployment)."""
        number = _number(value) or 0.0
        before = self._flags.get(name)
        self._flags[name] = number
        capture = self.capture
        if number and before is not None and not before:  # a rising edge, not a car that was already so
            if capture is None:
                self.flush()  # a delta-V trigger in the samples buffered before this edge comes first
                capture = self.capture
            if capture is not None:
                capture.deployment = capture.deployment or role == signals.AIRBAG
            elif self.enabled:
                self._start(Trigger(t, "airbag" if role == signals.AIRBAG else "crash-signal", name))
        if self.capture is not None:
            self.poll(t)

    def poll(self, t: float) -> None:
        """The data's clock is at t: emit ticks, end the event, seal, finish the capture when due."""
        capture = self.capture
        if capture is None:
            self.flush()  # the pipeline flushes after each batch; this covers any other caller
            return
        if capture.done_at is None or t < capture.done_at:
            self.ring.advance(t)
        if capture.end_of_event is None:
            signal = capture.trigger.signal
            settled = capture.trigger.kind == "delta-v" and t >= capture.trigger.t + SETTLE_WINDOW and \
                self.delta_v.settled(t, signal)
            if settled or t >= capture.deadline:
                self._end_of_event(min(t, capture.deadline), "settled" if settled else "timeout")
        elif capture.done_at is not None and t >= capture.done_at:
            self.ring.advance(capture.done_at)
            self._finish(capture.done_at)
        elif t - capture.last_seal >= POST_SEAL_EVERY:
            self._seal_data(t)

    def close(self, t: float) -> None:
        """The agent stops: a running capture ends here, marked interrupted."""
        self.flush()
        if self.capture is not None:
            self._finish(t, interrupted=True)

    # -- writing a capture --------------------------------------------------------------------

    @property
    def _writer(self) -> Any:
        return self.ledger.writer(CRASH_STREAM)

    def _cleartext(self, t: float, kind: str, detail: dict) -> int:
        """A metadata event in a block of its own, readable without a key; returns its seq."""
        writer = self._writer
        self._seal([writer])  # the data so far goes out under encryption first
        sealer, writer.sealer = writer.sealer, None
        writer.add_event(t, kind, detail)
        try:
            self._seal([writer])
        finally:
            writer.sealer = sealer
        return writer.head[0]

    def _start(self, trigger: Trigger) -> None:
        settings = self.settings
        assert settings is not None
        from carledger.ledger.encrypt import recipient_kid, parse_public_key

        self.ring.refresh()  # the signals read per tick, as they are at the trigger
        number = max((c.capture for c in self.captures), default=0) + 1
        deployment = trigger.kind == "airbag" or any(
            v for n, v in self._flags.items() if signals.role_of(n) == signals.AIRBAG
        )
        self._writer.policy_digest = self.policy_digest
        detail = {
            "capture": number,
            "trigger": {"kind": trigger.kind, "signal": trigger.signal, "delta_v_kmh": trigger.delta_kmh,
                        "window_ms": round(TRIGGER_WINDOW * 1000)},
            "deployment": deployment,
            "policy": {"version": self.policy_version, "digest": self.policy_digest.hex() if self.policy_digest else None},
            "keys": [{"name": name, "kid": recipient_kid(parse_public_key(key)).hex()} for name, key in settings.keys],
            "pre_s": PRE_CRASH, "rate_hz": round(1 / PERIOD), "post_s": settings.post,
            "event_timeout_s": settings.event_timeout,
            "signals": sorted(self.ring.values),
        }
        start_seq = self._cleartext(trigger.t, CAPTURE, detail)
        self._writer.sealer = self._sealer  # what follows is the car's data: for the named keys only
        capture = self.capture = _Capture(number, trigger, deployment, start_seq, settings.post, settings.event_timeout)
        if trigger.kind == "delta-v":
            capture.reference = self.delta_v.velocity(trigger.t - TRIGGER_WINDOW, trigger.signal)
        self.captures.append(CaptureInfo(number, trigger.t, start_seq, detail["trigger"], deployment,
                                         detail["policy"], detail["keys"], detail=detail))
        for tick in self.ring.window(trigger.t - PRE_CRASH):
            self._add_tick(tick)
        self.ring.follow(self._add_tick)  # and every frame of a watched message now polls the capture
        for each in self._live_buffered():
            each.immediate(True)  # the event's delta-V record and its end need every sample as it comes
        self._seal_data(trigger.t)
        log.warning("crash capture %d: %s trigger at %.3f (%s, %.1f km/h); pre-crash data sealed",
                    number, trigger.kind, trigger.t, trigger.signal, trigger.delta_kmh)
        self.on_event("crash-capture", {"capture": number, "trigger": detail["trigger"], "deployment": deployment})

    def _add_tick(self, tick: Tick) -> None:
        t, row = tick
        for name, value, source in row:
            self._add_sample(t, name, value, source)

    def _add_sample(self, t: float, name: str, value: Any, source: str | None) -> None:
        inner = getattr(value, "value", value)
        self._writer.add_sample(t, name, inner if type(inner) in (int, float, str) else value, source)
        self.capture.records += 1  # type: ignore[union-attr]

    def _seal_data(self, t: float) -> None:
        self._seal([self._writer])
        self.capture.last_seal = t  # type: ignore[union-attr]

    def _end_of_event(self, t: float, reason: str) -> None:
        capture = self.capture
        assert capture is not None
        capture.end_of_event = t
        capture.done_at = t + capture.post
        self._writer.add_event(t, END_OF_EVENT, {"reason": reason, "delta_v_kmh": round(capture.max_delta, 3)})
        capture.records += 1
        self._seal_data(t)

    def _finish(self, t: float, *, interrupted: bool = False) -> None:
        capture = self.capture
        assert capture is not None
        self.ring.follow(None)
        self.capture = None
        for each in self._live_buffered():
            each.immediate(False)
        first = capture.start_seq + 1
        self._seal([self._writer])
        self._writer.sealer = None  # the capture's data is all sealed
        last = self._writer.head[0]
        detail = {
            "capture": capture.number, "deployment": capture.deployment,
            "seqs": [[first, last]] if last >= first else [], "records": capture.records,
            "end_of_event": capture.end_of_event, "delta_v_kmh": round(capture.max_delta, 3),
        }
        if interrupted:
            detail["interrupted"] = True
        end_seq = self._cleartext(t, CAPTURE_END, detail)
        info = next(c for c in self.captures if c.capture == capture.number)
        info.end_seq, info.deployment, info.interrupted = end_seq, capture.deployment, interrupted
        info.data_seqs = (first, last) if last >= first else None
        info.records = capture.records
        log.warning("crash capture %d: complete (%d records, blocks %d-%d)", capture.number, capture.records, first, last)
        self._keep_rule(t)

    def _keep_rule(self, t: float) -> None:
        """Overwrite the oldest non-deployment captures beyond the policy's number."""
        keep = self.settings.keep_non_deployment if self.settings is not None else None
        if keep is None:
            return
        kept = [c for c in self.captures if not c.deployment and not c.overwritten and not c.interrupted
                and c.end_seq is not None and c.data_seqs is not None]
        store = self.ledger.store
        for info in kept[: max(0, len(kept) - keep)]:
            first, last = info.data_seqs  # type: ignore[misc]
            self._cleartext(t, OVERWRITTEN, {
                "capture": info.capture, "stream": CRASH_STREAM, "seqs": [[first, last]],
                "reason": f"more than {keep} non-deployment captures",
            })
            store.drop_records(store.block_ids(CRASH_STREAM, first, last))
            info.overwritten = True
            log.info("crash capture %d: overwritten (more than %d non-deployment captures)", info.capture, keep)

    def recover(self) -> None:
        """A capture the last run could not finish (killed): declare its end now, marked interrupted."""
        open_ = [c for c in self.captures if c.end_seq is None]
        if not open_:
            return
        head = self._writer.head
        head = head[0] if head else open_[-1].start_seq
        for info in open_:
            first, last = info.start_seq + 1, head
            detail = {"capture": info.capture, "deployment": info.deployment, "interrupted": True,
                      "seqs": [[first, last]] if last >= first else [], "records": None, "end_of_event": None}
            info.end_seq = self._cleartext(info.t, CAPTURE_END, detail)
            info.interrupted = True
            info.data_seqs = (first, last) if last >= first else None
            log.warning("crash capture %d: the agent stopped while recording it; its end is declared now", info.capture)
