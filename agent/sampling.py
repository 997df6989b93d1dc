"""Sampling: which decoded values become records.

A tap connects one signal to one stream. It records a value when it changes,
at most once per minimum interval; a change held back by the interval is not
lost, it is recorded as soon as the interval has passed (the next frame of
that message), so the ledger never ends on a stale value. The interval is
counted on the frames' clock in both directions: when that clock steps back
by more than an interval, the change is recorded at once.
"""

from __future__ import annotations

from typing import Any, Callable

SampleSink = Callable[[float, str, Any, "str | None"], None]

#: How often a feed (metrics, aggregates, the position) is offered a frame that repeats the last one byte for
#: byte, in seconds of the data's clock: often enough that a value that holds is no gap to the metrics
#: (max_gap_s, 5 s) nor to the aggregates (max_hold_s, 5 s), and that a standstill ends a trip on time; not every
#: repeat, which a replay pays for (1 % of a policy replay's instructions, issue 16). On-change taps get none.
REPEAT_EVERY = 1.0


class _Unowned:
    """Stands in for a message handler until one adopts the tap."""

    pending = 0


class Tap:
    """On-change, minimum-interval sampling of one signal into one stream."""

    __slots__ = ("sink", "name", "source", "min_interval", "last", "due", "back", "pending", "owner")
    # Offering again the value a tap was last offered does nothing while it holds no change back (see
    # `offer`), so a handler may skip it. False for a consumer that also acts on time or on every value.
    on_change_only = True

    def __init__(self, sink: SampleSink, name: str, source: str | None, min_interval: float, owner: "Any" = None):
        self.sink = sink
        self.name = name
        self.source = source  # DBC Message.Signal when `name` is a VSS path, else None
        self.min_interval = min_interval
        self.last: Any = None
        # A change is due from an interval after the last record on (`due`), or an interval before it (`back`):
        # frames carry the wall clock, which can step back (NTP) or be one wrong line of a log ahead, and waiting
        # for it to pass the last record again dropped every change until then (docs/socketcan.md,
        # clock-stepped-back). Both bounds kept, not the record's time: one comparison when a change is due.
        self.due = self.back = float("-inf")
        self.pending = False
        self.owner = owner if owner is not None else _Unowned()  # the handler counting taps waiting for their interval

    def offer(self, t: float, value: Any) -> None:
        if value == self.last and not self.pending:
            return
        if t >= self.due or t < self.back:
            if value != self.last:
                self.sink(t, self.name, value, self.source)
                self.last = value
                if self.min_interval:  # without one, every change is due: the bounds stay at -inf
                    self.due = t + self.min_interval
                    self.back = t - self.min_interval
            if self.pending:
                self.pending = False
                self.owner.pending -= 1
        elif not self.pending:
            self.pending = True
            self.owner.pending += 1


class MessageHandler:
    """Everything the pipeline does with one message's frames: skip, extract, sample."""

    __slots__ = ("extract", "taps", "last_data", "pending", "values", "on_change_only", "quiet_until")
    watched = False  # the crash ring reads this message at its ticks (carledger.edr.recorder.WatchedHandler)

    def __init__(self, extract: Callable[[bytes], list], taps: list[list[Tap]]):
        self.extract = extract
        self.taps = taps  # one list of taps per extracted signal
        self.last_data: bytes | None = None
        self.pending = 0  # taps holding a change back until their interval passes
        self.values: list | None = None  # what the last frame that was offered decoded to
        # Only on-change taps: a frame whose signals all decode as before (a counter or a checksum moved)
        # changes nothing they record. A feed (metrics, aggregates, the position) wants a repeat of the
        # last frame too, now and then (REPEAT_EVERY): a metric tells a signal that holds its value from
        # a silent ECU by the samples still coming (carledger.policy.metrics, max_gap_s). Known at the
        # first frame, once the taps are all there.
        self.on_change_only: bool | None = None
        self.quiet_until = float("-inf")  # a repeated frame before this time is not offered to the feeds

    def handle(self, t: float, data: bytes) -> None:
        if data == self.last_data and not self.pending:
            if self.on_change_only or t < self.quiet_until:
                return  # the same bytes decode the same: on-change taps record nothing, a feed had one lately
            self.quiet_until = t + REPEAT_EVERY
        self.last_data = data
        values = self.extract(data)
        only = self.on_change_only
        if only is None:
            only = self._on_change_only()
        if only:
            previous, self.values = self.values, values
            if not self.pending and values is not previous and values == previous:
                return  # every tap was last offered these values and holds nothing back: offering is a no-op
        for value, taps in zip(values, self.taps):
            if value is not None:
                for tap in taps:
                    tap.offer(t, value)

    def _on_change_only(self) -> bool:
        """Known at the first frame, once the taps are all there: do they all record only changes?"""
        only = self.on_change_only = all(getattr(tap, "on_change_only", False) for each in self.taps for tap in each)
        return only
