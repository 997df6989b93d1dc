"""When a crash capture starts and when its event ends (49 CFR 563.5 definitions).

Trigger: a longitudinal speed change of at least 8 km/h within 150 ms. Two
sources can show it: the vehicle speed signal, and the longitudinal
acceleration integrated over time (what an airbag control unit does; it sees
a crash the wheel speed sensors miss, such as a parked car pushed with its
wheels braked). End of event: the moment the change within 20 ms becomes
0.8 km/h or less.

Values are sampled and held: a signal keeps its last value until the next
sample, so a trace can answer "how much did it change in the last 150 ms"
at any time, also between samples.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

TRIGGER_KMH = 8.0
TRIGGER_WINDOW = 0.150
SETTLE_KMH = 0.8
SETTLE_WINDOW = 0.020
ACCEL_HOLD = 0.1  # seconds an acceleration value is held without a new sample (a silent sensor is not a crash)
_KEEP = TRIGGER_WINDOW + 0.05  # what a trace must hold: the window, and the value held at its start
_PRUNE = 0.5  # a trace is pruned back to _KEEP once its oldest point is this old


def _low_high(values: list[float]) -> tuple[float, float]:
    """min(values) and max(values) of a trace's floats (not empty), from one sorted(): list.sort compares
    floats in C, min() and max() through Python's generic comparison, about 100 instructions a float (issue 16)."""
    ordered = sorted(values)
    return ordered[0], ordered[-1]


@dataclass(frozen=True)
class Trigger:
    """Why a capture started: at `t`, `signal` changed by `delta_kmh` within the trigger window."""

    t: float
    kind: str  # "delta-v", "airbag" or "crash-signal"
    signal: str
    delta_kmh: float = 0.0


class VelocityTrace:
    """A velocity (km/h) sampled and held, kept for the last 200 ms."""

    __slots__ = ("times", "values", "low", "high")

    def __init__(self) -> None:
        # the points, in time order, as two lists (a bulk extend is then two list copies, no tuple per point)
        self.times: list[float] = []
        self.values: list[float] = []
        # min(values) and max(values), kept as points come and recomputed only when the trace is pruned:
        # could_trigger runs for every speed and acceleration sample, and scanning the values each time
        # was a good part of what crash readiness cost (issue 16)
        self.low = float("inf")
        self.high = float("-inf")

    def add(self, t: float, v: float) -> None:
        times = self.times
        if times and t < times[-1]:
            return  # out of order: the held value already covers it
        times.append(t)
        self.values.append(v)
        if v < self.low:
            self.low = v
        if v > self.high:
            self.high = v
        if t - times[0] > _PRUNE:  # now and then, not per sample: older points only cost a little in could_trigger
            self._prune(t - _KEEP)

    def _prune(self, horizon: float) -> None:
        """Drop the points before the last one at or before `horizon` (its value is held into the window)."""
        times, values = self.times, self.values
        drop = bisect.bisect_right(times, horizon) - 1  # one slice, not a pop per point
        if drop > 0:
            del times[:drop]
            del values[:drop]
        self.low, self.high = _low_high(values)

    def extend(self, times: list[float], new: list[float]) -> None:
        """Add the samples since the last flush at once (times and values, in arrival order): what add() does for each.

        Pruned from the first new point on, so that a check at any of them finds its window whole.
        """
        if not times:
            return
        mine = self.times
        if (mine and times[0] < mine[-1]) or times != sorted(times):
            for t, v in zip(times, new):  # out of order: add() drops what the held value already covers
                self.add(t, v)
            return
        self._append(times, new)

    def _append(self, times: list[float], new: list[float]) -> None:
        """extend() of samples known to be in order and not before the trace's last point: C loops only."""
        mine = self.times
        mine.extend(times)
        self.values.extend(new)
        if times[0] - mine[0] > _PRUNE:
            self._prune(times[0] - _KEEP)  # which takes the range of what it keeps (at most flushes: one sort, not two)
            return
        low, high = _low_high(new)
        if low < self.low:
            self.low = low
        if high > self.high:
            self.high = high

    def could_trigger(self) -> bool:
        """Cheap and conservative: could a window of what the trace holds (up to 0.5 s) have a trigger-size change?"""
        return len(self.values) > 1 and self.high - self.low >= TRIGGER_KMH

    def at(self, t: float) -> float | None:
        """The held value at t (None before the first sample)."""
        index = bisect.bisect_right(self.times, t)
        return self.values[index - 1] if index else None

    def largest_change(self, t: float, window: float) -> float:
        """The largest |v(t1) - v(t0)| with t - window <= t0 <= t1 <= t (held values; 0 without data)."""
        times = self.times
        first = bisect.bisect_right(times, t - window)  # the points after t - window; the one before is held into it
        values = self.values[first:bisect.bisect_right(times, t, first)]
        if first:
            values.append(self.values[first - 1])
        if len(values) < 2:
            return 0.0
        return max(values) - min(values)

    def change(self, t: float, window: float) -> float:
        """v(t) - v(t - window), held values; 0 without data."""
        now, then = self.at(t), self.at(t - window)
        if now is None or then is None:
            return 0.0
        return now - then


class AccelerationIntegral:
    """Longitudinal acceleration (m/s^2) integrated into a velocity change (km/h): the ACU's delta-V."""

    __slots__ = ("trace", "_t", "_a", "_v")

    def __init__(self) -> None:
        self.trace = VelocityTrace()
        self._t: float | None = None
        self._a = 0.0
        self._v = 0.0

    def add(self, t: float, accel: float) -> None:
        if self._t is not None:
            if t < self._t:
                return
            self._v += self._a * min(t - self._t, ACCEL_HOLD) * 3.6
        self._t, self._a = t, accel
        self.trace.add(t, self._v)

    def add_all(self, times: list[float], accels: list[float]) -> None:
        """add() for each of the samples since the last flush (in arrival order), the trace extended once.

        The same floating-point operations in the same order as add(), so the sums are the ones
        every sample gives. (A loop: at a flush's 10 to 50 samples Python 3.11's specialised loop
        is cheaper than chained C iterators: `accumulate` over `map`s counted 13.7 M instructions
        more on the city drive, docs/performance.md.)
        """
        if not times:
            return
        last_t = self._t
        if last_t is None:  # the first sample: nothing held before it to integrate
            self.add(times[0], accels[0])
            times, accels = times[1:], accels[1:]
            if not times:
                return
            last_t = self._t
        if times[0] < last_t or times != sorted(times):
            self._add_unordered(times, accels)
            return
        velocities: list[float] = []
        append = velocities.append
        hold = ACCEL_HOLD
        a, v = self._a, self._v
        for t, accel in zip(times, accels):
            dt = t - last_t
            v += a * (dt if dt < hold else hold) * 3.6
            append(v)
            last_t = t
            a = accel
        self._t, self._a, self._v = last_t, a, v
        self.trace._append(times, velocities)

    def _add_unordered(self, times: list[float], accels: list[float]) -> None:
        """add_all() of samples not all in order: a loop per sample, dropping those before the last one kept."""
        kept: list[float] = []
        velocities: list[float] = []
        last_t, a, v = self._t, self._a, self._v
        for t, accel in zip(times, accels):
            if last_t is not None:
                if t < last_t:
                    continue
                dt = t - last_t
                v += a * (dt if dt < ACCEL_HOLD else ACCEL_HOLD) * 3.6
            last_t, a = t, accel
            kept.append(t)
            velocities.append(v)
        self._t, self._a, self._v = last_t, a, v
        self.trace.extend(kept, velocities)

    def extend(self, t: float) -> None:
        """Carry the held acceleration up to t (no sample since): keeps the trace current between frames."""
        if self._t is not None and t > self._t:
            self.add(t, self._a)


@dataclass
class DeltaV:
    """Velocity traces of one car; `check` answers whether a crash-level change happened."""

    speed: VelocityTrace = field(default_factory=VelocityTrace)
    accel: AccelerationIntegral = field(default_factory=AccelerationIntegral)
    speed_signal: str = ""
    accel_signal: str = ""

    def _is_accel(self, signal: str) -> bool:
        return bool(signal) and signal == self.accel_signal

    def check(self, trace: VelocityTrace, signal: str, t: float) -> Trigger | None:
        """A delta-V trigger at t on `trace` (just given a sample), or None. Called for every sample: cheap."""
        if not trace.could_trigger():
            return None
        change = trace.largest_change(t, TRIGGER_WINDOW)
        return Trigger(t, "delta-v", signal, round(change, 3)) if change >= TRIGGER_KMH else None

    def settled(self, t: float, signal: str) -> bool:
        """Has the change within 20 ms fallen to 0.8 km/h or less (Part 563's end of event)?"""
        if self._is_accel(signal):
            self.accel.extend(t)
            trace = self.accel.trace
        else:
            trace = self.speed
        return abs(trace.change(t, SETTLE_WINDOW)) <= SETTLE_KMH

    def velocity(self, t: float, signal: str) -> float:
        """The held value of the trace `signal` feeds at t (km/h; 0 before its first sample)."""
        value = (self.accel.trace if self._is_accel(signal) else self.speed).at(t)
        return 0.0 if value is None else value
