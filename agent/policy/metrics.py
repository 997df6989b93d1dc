"""On-board metrics: scores computed in the car, so the raw signals never leave it.

Every metric has the same small surface:

    m.inputs                      the signal names it reads (VSS paths)
    m.feed(t, name, value)        -> records of windows that closed (usually ())
    m.poll(t)                     -> records of a window no sample can change any more
    m.flush(t)                    -> records of the window in progress (end of data); resets
    m.feeders()                   -> {name: what takes that input's samples as feed would}
                                     (feed itself, or a method of it that skips a dispatch)

Records are `(t, name, value)` tuples, `t` the end of the window they cover.
With `window_s` set, windows are tumbling and aligned to multiples of
`window_s` in the timestamps' clock (t = 0, w, 2w, ...), so two cars' (or two
drives') windows line up; with `window_s=None` one window runs until `flush`.
A window in which the metric received no input sample emits nothing (a car
parked for a week does not produce a week of zero records).

| record | metric | value |
|---|---|---|
| metric.distance_km | `Distance` | km driven in the window (float) |
| metric.driving_time_s | `DrivingTime` | seconds with speed > moving_kmh (float) |
| metric.harsh_braking_count | `HarshEvents("braking")` | events confirmed in the window (int) |
| metric.harsh_acceleration_count | `HarshEvents("acceleration")` | events (int) |
| metric.night_share | `NightShare` | night driving time / driving time, 0..1 (float) |
| metric.over_speed_share | `OverSpeedShare` | time over limit / driving time, 0..1 (float) |

Shares are emitted only for windows with driving time (a share of nothing is
not a number); `DrivingTime` gives the weight to combine windows.

Time is integrated between consecutive speed samples only when they are at
most `max_gap_s` apart (default 5 s): a gap in the data (a silent ECU, an
agent restart) is not bridged by guessing. Distance uses the trapezoidal rule
(speed linear between samples, as the odometer does); time shares hold each
sample until the next one (a sample classifies the interval it starts).
An interval that straddles a window boundary is split at the boundary.

Per sample the work is a dict-free compare of the name, a few float
operations and no allocation; records are built once per window.
"""

from __future__ import annotations

import itertools
import math
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Iterable
from zoneinfo import ZoneInfo

__all__ = [
    "SPEED",
    "ACCEL_LONG",
    "ODOMETER",
    "Distance",
    "DrivingTime",
    "HarshEvents",
    "NightShare",
    "OverSpeedShare",
    "MetricSet",
]

SPEED = "Vehicle.Speed"  # km/h
ACCEL_LONG = "Vehicle.Acceleration.Longitudinal"  # m/s^2, forward positive
ODOMETER = "Vehicle.TraveledDistance"  # km

_EMPTY: tuple = ()
_INF = math.inf


class _Windowed:
    """Tumbling windows over the metric's own input samples."""

    name = ""
    inputs: frozenset = frozenset()
    _poll_delay = 0.0  # how long after a window's end a sample could still change it

    def __init__(self, window_s: float | None, max_gap_s: float):
        if window_s is not None and not (window_s > 0 and math.isfinite(window_s)):
            raise ValueError(f"window_s must be a positive number of seconds or None, not {window_s!r}")
        if not (max_gap_s > 0):
            raise ValueError(f"max_gap_s must be positive, not {max_gap_s!r}")
        self.window_s = window_s
        self.max_gap_s = float(max_gap_s)
        self._ws: float | None = None  # current window [ws, we); None: no window open
        self._we = _INF
        self._seen = False  # an input sample fell into the current window
        self._reset()

    def feeders(self) -> dict[str, Any]:
        """Per input name, what `MetricSet` calls with (t, name, value): `feed`, or a more direct method of it."""
        return {name: self.feed for name in self.inputs}

    # subclasses: accumulators
    def _reset(self) -> None:  # pragma: no cover - abstract
        pass

    def _emit(self, t_end: float) -> list:  # pragma: no cover - abstract
        return []

    def _open(self, t: float) -> None:
        w = self.window_s
        if w is None:
            self._ws, self._we = t, _INF
        else:
            ws = math.floor(t / w) * w
            self._ws, self._we = ws, ws + w
        self._seen = False

    def _roll(self, t: float) -> list:
        """Close the current window (its end has passed) and open the one containing t."""
        out = self._emit(self._we) if self._seen else []
        self._reset()
        self._open(t)
        return out

    def _take(self, t: float) -> list:
        """A sample at t counts: the first one opens a window, one past its end rolls it (returns what it closed)."""
        out = _EMPTY
        if self._ws is None:
            self._open(t)
        elif t >= self._we:
            out = self._roll(t)
        self._seen = True
        return out

    def poll(self, t: float) -> list:
        """Close the current window if no future sample can change it (a timer for quiet periods)."""
        if self._ws is None or t < self._we + self._poll_delay:
            return []
        out = self._emit(self._we) if self._seen else []
        self._reset()
        self._ws, self._we, self._seen = None, _INF, False
        return out

    def flush(self, t: float) -> list:
        """End of data: records for the window in progress up to t, then start afresh."""
        out = self._emit(min(t, self._we)) if (self._ws is not None and self._seen) else []
        self._reset()
        self._ws, self._we, self._seen = None, _INF, False
        self._forget()
        return out

    def _forget(self) -> None:
        """Drop the memory of the last samples (flush = the data ended)."""


class _SpeedIntervals(_Windowed):
    """Metrics integrated over the intervals between consecutive speed samples."""

    def __init__(self, window_s: float | None, max_gap_s: float, speed: str):
        self.speed = speed
        self.inputs = frozenset({speed})
        self._t: float | None = None
        self._v = 0.0
        self._poll_delay = max_gap_s
        super().__init__(window_s, max_gap_s)

    def _forget(self) -> None:
        self._t = None

    def _interval(self, t0: float, v0: float, t1: float, v1: float) -> None:  # pragma: no cover - abstract
        pass

    def feed(self, t: float, name: str, value: Any):
        if name != self.speed:
            return _EMPTY
        return self._speed(t, name, value)

    def feeders(self) -> dict[str, Any]:
        # the speed's samples straight to _speed: one Python call per sample and metric less than through feed
        return {**super().feeders(), **({self.speed: self._speed} if self.speed in self.inputs else {})}

    def _speed(self, t: float, name: str, v: float):
        """A speed sample (`name` is the speed's: the signature MetricSet calls with)."""
        t0 = self._t
        if t0 is not None and t < t0:
            return _EMPTY  # out of order: ignore
        v0 = self._v
        self._t = t
        self._v = v
        if self._ws is None:
            self._open(t)
            self._seen = True
            return _EMPTY
        out = _EMPTY
        dt = t - t0 if t0 is not None else _INF
        ok = 0.0 < dt <= self.max_gap_s
        if t >= self._we:
            b = self._we
            if ok and t0 < b:
                vb = v0 + (v - v0) * (b - t0) / dt
                self._interval(t0, v0, b, vb)
                t0, v0 = b, vb
            out = self._roll(t)
        if ok and t > t0:
            self._interval(t0, v0, t, v)
        self._seen = True
        return out


class Distance(_SpeedIntervals):
    """Distance driven, km: the trapezoidal integral of Vehicle.Speed, or the
    Vehicle.TraveledDistance (odometer) deltas when the car sends them.

    source: "auto" (odometer deltas in windows that have them, speed otherwise),
    "speed" or "odometer". Odometer deltas are attributed to the window of the
    later sample; negative deltas (a reset) and deltas faster than
    max_speed_kmh are ignored; a delta across a gap is real distance and kept.
    """

    name = "metric.distance_km"

    def __init__(self, window_s: float | None = None, *, source: str = "auto", max_gap_s: float = 5.0,
                 max_speed_kmh: float = 400.0, speed: str = SPEED, odometer: str = ODOMETER):
        if source not in ("auto", "speed", "odometer"):
            raise ValueError(f"distance source must be auto, speed or odometer, not {source!r}")
        self.source = source
        self.odometer = odometer
        self.max_speed_kmh = float(max_speed_kmh)
        self._odo: float | None = None
        self._odo_t = 0.0
        super().__init__(window_s, max_gap_s, speed)
        self.inputs = frozenset({speed, odometer}) if source == "auto" else frozenset({speed if source == "speed" else odometer})

    def _reset(self) -> None:
        self._km = 0.0
        self._odo_km = 0.0
        self._has_odo = False

    def _forget(self) -> None:
        self._t = None
        self._odo = None

    def _interval(self, t0: float, v0: float, t1: float, v1: float) -> None:
        self._km += (v0 + v1) * (t1 - t0) / 7200.0  # mean km/h * s / 3600

    def feed(self, t: float, name: str, value: Any):
        if name == self.speed:
            if self.source == "odometer":
                return _EMPTY
            return self._speed(t, name, value)
        if name != self.odometer or self.source == "speed":
            return _EMPTY
        prev = self._odo
        prev_t = self._odo_t
        if prev is not None and t < prev_t:
            return _EMPTY
        self._odo = value
        self._odo_t = t
        out = self._take(t)
        if prev is not None:
            d = value - prev
            if d >= 0.0 and d <= 0.05 + self.max_speed_kmh * (t - prev_t) / 3600.0:
                self._odo_km += d
                self._has_odo = True
        return out

    def _emit(self, t_end: float) -> list:
        if self._has_odo and self.source != "speed":
            return [(t_end, self.name, self._odo_km)]
        if self.source == "odometer":
            return []
        return [(t_end, self.name, self._km)]


class _Share(_SpeedIntervals):
    """Fraction of driving time (speed > moving_kmh) for which `_hit` holds."""

    def __init__(self, window_s: float | None, max_gap_s: float, speed: str, moving_kmh: float):
        self.moving_kmh = float(moving_kmh)
        super().__init__(window_s, max_gap_s, speed)

    def _reset(self) -> None:
        self._drive = 0.0
        self._hit_s = 0.0

    def _hit(self, t: float, v: float) -> bool:  # pragma: no cover - abstract
        return False

    def _interval(self, t0: float, v0: float, t1: float, v1: float) -> None:
        if v0 > self.moving_kmh:
            dt = t1 - t0
            self._drive += dt
            if self._hit(t0, v0):
                self._hit_s += dt

    def _emit(self, t_end: float) -> list:
        if self._drive <= 0.0:
            return []
        return [(t_end, self.name, self._hit_s / self._drive)]


class DrivingTime(_Share):
    """Seconds driven (speed > moving_kmh): the weight of a window's shares."""

    name = "metric.driving_time_s"

    def __init__(self, window_s: float | None = None, *, moving_kmh: float = 1.0, max_gap_s: float = 5.0, speed: str = SPEED):
        super().__init__(window_s, max_gap_s, speed, moving_kmh)

    def _emit(self, t_end: float) -> list:
        return [(t_end, self.name, self._drive)]


class OverSpeedShare(_Share):
    """Share of driving time with speed above limit_kmh."""

    name = "metric.over_speed_share"

    def __init__(self, limit_kmh: float, window_s: float | None = None, *, moving_kmh: float = 1.0,
                 max_gap_s: float = 5.0, speed: str = SPEED):
        if not (limit_kmh > 0):
            raise ValueError(f"speed limit must be positive, not {limit_kmh!r}")
        self.limit_kmh = float(limit_kmh)
        super().__init__(window_s, max_gap_s, speed, moving_kmh)

    def _hit(self, t: float, v: float) -> bool:
        return v > self.limit_kmh


def _time_of_day(value: "str | float | int") -> float:
    """"22:00" / "05:30" / "5:30:15" or hours (22, 5.5) -> seconds since midnight."""
    if isinstance(value, str):
        parts = value.strip().split(":")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            nums = []
        if not 2 <= len(nums) <= 3 or not 0 <= nums[0] <= 24 or not all(0 <= n < 60 for n in nums[1:]):
            raise ValueError(f"not a time of day (HH:MM): {value!r}")
        s = nums[0] * 3600 + nums[1] * 60 + (nums[2] if len(nums) == 3 else 0)
    elif type(value) in (int, float):
        s = float(value) * 3600.0
    else:
        raise ValueError(f"not a time of day (HH:MM): {value!r}")
    if not 0 <= s <= 86400:
        raise ValueError(f"not a time of day (HH:MM): {value!r}")
    return float(s) % 86400.0


def _tz(value: "str | tzinfo | timedelta | float | int") -> tzinfo:
    if isinstance(value, tzinfo):
        return value
    if isinstance(value, timedelta):
        return timezone(value)
    if type(value) in (int, float):
        return timezone(timedelta(hours=value))  # a fixed offset, in hours
    if isinstance(value, str):
        if value.upper() in ("UTC", "Z"):
            return timezone.utc
        return ZoneInfo(value)  # ZoneInfoNotFoundError (a KeyError) for unknown names
    raise ValueError(f"not a time zone: {value!r}")


class NightShare(_Share):
    """Share of driving time between start and end local time (default 22:00-05:00).

    tz: an IANA zone name ("Europe/Berlin", daylight saving time included),
    "UTC", a tzinfo, a timedelta, or a fixed offset in hours (1, 5.5, -4).
    The zone's UTC offset is looked up once per minute of data, so a sample
    costs an addition and a modulo. Night is [start, end), wrapping midnight
    when start > end.
    """

    name = "metric.night_share"

    def __init__(self, window_s: float | None = None, *, start: "str | float" = "22:00", end: "str | float" = "05:00",
                 tz: "str | tzinfo | timedelta | float" = "UTC", moving_kmh: float = 1.0, max_gap_s: float = 5.0,
                 speed: str = SPEED):
        self.start_s = _time_of_day(start)
        self.end_s = _time_of_day(end)
        if self.start_s == self.end_s:
            raise ValueError("night start and end must differ")
        self.tz = _tz(tz)
        self._minute: int | None = None
        self._offset = 0.0
        super().__init__(window_s, max_gap_s, speed, moving_kmh)

    def local_seconds(self, t: float) -> float:
        """Seconds since local midnight at POSIX time t."""
        minute = int(t // 60.0)
        if minute != self._minute:
            self._minute = minute
            off = datetime.fromtimestamp(minute * 60.0, self.tz).utcoffset()
            self._offset = off.total_seconds() if off is not None else 0.0
        return (t + self._offset) % 86400.0

    def _hit(self, t: float, v: float) -> bool:
        s = self.local_seconds(t)
        if self.start_s < self.end_s:
            return self.start_s <= s < self.end_s
        return s >= self.start_s or s < self.end_s


class HarshEvents(_Windowed):
    """Harsh braking (kind="braking") or harsh acceleration events, counted.

    An event starts when the longitudinal acceleration reaches the threshold
    (braking: a <= -threshold, default 4.0 m/s^2; acceleration: a >= threshold,
    default 3.0 m/s^2), counts once it has lasted min_duration_s (a sample holds
    until the next one, so one spike does not count), and ends when the
    acceleration comes back past threshold - hysteresis. A new start within
    refractory_s of a counted event's end belongs to the same manoeuvre (ABS
    cycling) and is not counted again. A gap over max_gap_s ends an event.

    Without a Vehicle.Acceleration.Longitudinal signal the acceleration is the
    derivative of Vehicle.Speed over spans of at least derivative_span_s (so
    the speed's resolution does not turn into noise); once an acceleration
    sample has been seen, speed is not used.
    """

    def __init__(self, kind: str = "braking", threshold: float | None = None, window_s: float | None = None, *,
                 hysteresis: float = 1.0, min_duration_s: float = 0.1, refractory_s: float = 2.0,
                 derivative_span_s: float = 0.5, max_gap_s: float = 5.0, accel: str = ACCEL_LONG, speed: str = SPEED):
        if kind == "braking":
            self._sign = -1.0
            threshold = 4.0 if threshold is None else threshold
        elif kind == "acceleration":
            self._sign = 1.0
            threshold = 3.0 if threshold is None else threshold
        else:
            raise ValueError(f"kind must be braking or acceleration, not {kind!r}")
        self.kind = kind
        self.name = f"metric.harsh_{kind}_count"
        self.threshold = abs(float(threshold))
        if not self.threshold > 0:
            raise ValueError("threshold must not be 0")
        if not 0 <= hysteresis < self.threshold:
            raise ValueError("hysteresis must be in [0, threshold)")
        self._release = self.threshold - float(hysteresis)
        self.min_duration_s = float(min_duration_s)
        self.refractory_s = float(refractory_s)
        self.derivative_span_s = float(derivative_span_s)
        self.accel = accel
        self.speed = speed
        self.inputs = frozenset({accel, speed})
        self.total = 0  # events over the metric's life (not reset by windows)
        self._forget_state()
        super().__init__(window_s, max_gap_s)

    def _forget_state(self) -> None:
        self._active = False  # inside an excursion past the threshold
        self._counted = False  # this excursion has been counted
        self._enter_t = 0.0
        self._last_event_end = -_INF
        self._last_t: float | None = None  # last level sample
        self._accel_seen = False
        self._ref_t: float | None = None  # speed derivative reference
        self._ref_v = 0.0

    def _forget(self) -> None:
        self._forget_state()

    def _reset(self) -> None:
        self._count = 0

    def _emit(self, t_end: float) -> list:
        return [(t_end, self.name, self._count)]

    def feed(self, t: float, name: str, value: Any):
        if name == self.accel:
            self._accel_seen = True
            a = value
        elif name == self.speed:
            if self._accel_seen:
                a = None
            else:
                a = self._derivative(t, value)
        else:
            return _EMPTY
        if self._ws is not None and t < self._we:  # _take's common case, without its call: in the open window
            self._seen = True
            out = _EMPTY
        else:
            out = self._take(t)
        if a is not None:
            self._level(t, a)
        return out

    def _derivative(self, t: float, v: float) -> float | None:
        rt = self._ref_t
        if rt is None or t - rt > self.max_gap_s or t < rt:
            self._ref_t, self._ref_v = t, v
            return None
        if t - rt < self.derivative_span_s:
            return None
        a = (v - self._ref_v) / 3.6 / (t - rt)
        self._ref_t, self._ref_v = t, v
        return a

    def _level(self, t: float, a: float) -> None:
        x = self._sign * a
        last = self._last_t
        self._last_t = t
        if self._active and last is not None and t - last > self.max_gap_s:
            self._active = False  # a gap ends the excursion (counted or not)
            if self._counted:
                self._last_event_end = last
        if not self._active:
            if x >= self.threshold:
                self._active = True
                self._enter_t = t
                # a restart right after a counted event is the same manoeuvre
                self._counted = t - self._last_event_end < self.refractory_s
                if not self._counted and self.min_duration_s <= 0.0:
                    self._count_event()
            return
        if not self._counted and t - self._enter_t >= self.min_duration_s:
            self._count_event()  # held past the threshold for min_duration_s (until this sample)
        if x < self._release:
            self._active = False
            if self._counted:
                self._last_event_end = t

    def _count_event(self) -> None:
        self._counted = True
        self._count += 1
        self.total += 1


class _ShareGroup(_SpeedIntervals):
    """Time shares of one speed signal over the same windows, integrated together (`MetricSet` makes them).

    Shares with the same speed, window, gap and moving speed see the same samples, so their windows
    open, roll and close together: one interval computation per sample serves them all, where each
    share made two Python calls per sample of its own (`_speed`, `_interval`; a policy with night
    driving and over-speed shares has three, issue 16). Each share keeps its accumulators, does the
    same float operations as alone, and emits its own records, in the shares' order.
    """

    def __init__(self, shares: "tuple[_Share, ...]"):
        first = shares[0]
        self.shares = shares
        self.moving_kmh = first.moving_kmh
        self._hitting = tuple(s for s in shares if type(s)._hit is not _Share._hit)
        super().__init__(first.window_s, first.max_gap_s, first.speed)

    @staticmethod
    def key(metric: _Windowed) -> tuple | None:
        """What shares must have in common to be grouped (None: not a share)."""
        if not isinstance(metric, _Share) or metric.inputs != {metric.speed}:
            return None
        return metric.window_s, metric.max_gap_s, metric.speed, metric.moving_kmh

    def _reset(self) -> None:
        for share in self.shares:
            share._reset()

    def _interval(self, t0: float, v0: float, t1: float, v1: float) -> None:
        if v0 > self.moving_kmh:
            dt = t1 - t0
            for share in self.shares:
                share._drive += dt
            for share in self._hitting:
                if share._hit(t0, v0):
                    share._hit_s += dt

    def _emit(self, t_end: float) -> list:
        return [r for share in self.shares for r in share._emit(t_end)]


def _grouped(metrics: tuple[_Windowed, ...]) -> list[_Windowed]:
    """The metrics, with each run of two or more shares that can be integrated together as one `_ShareGroup`."""
    out: list[_Windowed] = []
    for key, run in itertools.groupby(metrics, _ShareGroup.key):
        each = list(run)
        out += [_ShareGroup(tuple(each))] if key is not None and len(each) > 1 else each  # type: ignore[arg-type]
    return out


class MetricSet:
    """Several metrics fed from one sample stream: dispatch by signal name, records concatenated."""

    def __init__(self, metrics: Iterable[_Windowed]):
        self.metrics = tuple(metrics)
        self._parts = _grouped(self.metrics)  # what is fed, polled and flushed
        by_name: dict[str, list] = {}
        for m in self._parts:
            for n, feed in m.feeders().items():
                by_name.setdefault(n, []).append(feed)
        self._by_name = {n: tuple(fs) for n, fs in by_name.items()}
        self.inputs = frozenset(self._by_name)

    def feeds(self, name: str) -> tuple:
        """What takes the samples of `name`, each called as feed(t, name, value) and returning records: () if none."""
        return self._by_name.get(name, ())

    def feed(self, t: float, name: str, value: Any):
        feeds = self._by_name.get(name)
        if feeds is None:
            return _EMPTY
        out = _EMPTY
        for f in feeds:
            r = f(t, name, value)
            if r:
                out = list(out) + list(r) if out else r
        return out

    def poll(self, t: float) -> list:
        return [r for m in self._parts for r in m.poll(t)]

    def flush(self, t: float) -> list:
        return [r for m in self._parts for r in m.flush(t)]
