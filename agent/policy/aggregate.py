"""Window aggregates: min, max, mean, count (and last) per signal over tumbling windows.

`WindowAggregator(window_s, functions)` is fed samples of any number of
signals and, when a window ends, returns one record per signal and function:
`(window_end, "<signal>.<function>", value)`, e.g. `Vehicle.Speed.mean`.

Windows are aligned to multiples of `window_s` in the timestamps' clock
(t = 0, w, 2w, ...). A window closes when a sample at or after its end
arrives, at `poll(t)` (a timer), or at `flush(t)` (end of data; the window then
ends at t). Only signals that had a sample in the window are reported; a
window with no sample at all reports nothing.

The mean is time-weighted: each value holds until the next sample of its
signal (zero-order hold), for at most `max_hold_s` (default 5 s, so a gap in the
data is not filled with a stale value). A value that holds across a window
boundary counts in both windows, and counts for min and max of the later
window too (the signal had that value there). This is what the signal was on
average over the window, whatever the sampling: with on-change sampling a
sample mean would overweight the moments when the value moves. If no time
was held at all (a single sample at the very end of data) the mean is that
sample's mean. `count` is the number of samples received in the window.

Values that are not numbers (text) are ignored; bools count as 0/1.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

__all__ = ["FUNCTIONS", "WindowAggregator"]

FUNCTIONS = ("min", "max", "mean", "count", "last")
_INF = math.inf
_EMPTY: tuple = ()
_NUMBER = (int, float, bool)


class _Acc:
    """One signal's accumulators (mutable, reused across windows)."""

    __slots__ = ("mn", "mx", "wsum", "wdur", "ssum", "n", "v", "t")

    def __init__(self) -> None:
        self.mn = _INF
        self.mx = -_INF
        self.wsum = 0.0
        self.wdur = 0.0
        self.ssum = 0.0
        self.n = 0
        self.v = 0.0  # last value and its time (carried across windows)
        self.t: float | None = None


class WindowAggregator:
    """Tumbling-window aggregates of numeric signals."""

    def __init__(self, window_s: float, functions: Iterable[str] = ("min", "max", "mean", "count"), *,
                 signals: Iterable[str] | None = None, max_hold_s: float = 5.0):
        if not (window_s > 0 and math.isfinite(window_s)):
            raise ValueError(f"window_s must be a positive number of seconds, not {window_s!r}")
        functions = tuple(functions)
        bad = [f for f in functions if f not in FUNCTIONS]
        if bad or not functions:
            raise ValueError(f"unknown aggregate function(s) {bad!r}; known: {', '.join(FUNCTIONS)}")
        if not max_hold_s >= 0:
            raise ValueError("max_hold_s must be >= 0")
        self.window_s = float(window_s)
        self.functions = functions
        self.signals = frozenset(signals) if signals is not None else None
        self.max_hold_s = float(max_hold_s)
        self._accs: dict[str, _Acc] = {}
        self._names: dict[str, tuple[str, ...]] = {}  # record names per signal, built once
        self._ws: float | None = None
        self._we = _INF

    def _open(self, t: float) -> None:
        w = self.window_s
        ws = math.floor(t / w) * w
        self._ws, self._we = ws, ws + w

    def feed(self, t: float, name: str, value: Any):
        """Add a sample; returns the records of a window that closed (usually ())."""
        if type(value) not in _NUMBER:
            return _EMPTY  # text (an IEEE float signal's NaN and infinity are kept out by its Feed: finite_only)
        if self.signals is not None and name not in self.signals:
            return _EMPTY
        out = _EMPTY
        if self._ws is None:
            self._open(t)
        elif t >= self._we:
            out = self._close(self._we)
            self._open(t)
        acc = self._accs.get(name)
        if acc is None:
            acc = self._accs[name] = _Acc()
            self._names[name] = tuple(f"{name}.{f}" for f in self.functions)
        last_t = acc.t
        if last_t is not None and t >= last_t:
            ws = self._ws
            a = last_t if last_t > ws else ws
            b = t
            hold_end = last_t + self.max_hold_s
            if hold_end < b:
                b = hold_end
            if b > a:
                v = acc.v
                acc.wsum += v * (b - a)
                acc.wdur += b - a
                if acc.n == 0 and last_t < ws:  # the held value carried into this window
                    if v < acc.mn:
                        acc.mn = v
                    if v > acc.mx:
                        acc.mx = v
        if value < acc.mn:
            acc.mn = value
        if value > acc.mx:
            acc.mx = value
        acc.ssum += value
        acc.n += 1
        acc.v = value
        acc.t = t
        return out

    def poll(self, t: float) -> list:
        """Close the current window once t has passed its end (a timer, for quiet periods)."""
        if self._ws is None or t < self._we:
            return []
        out = self._close(self._we)
        self._ws, self._we = None, _INF
        return out

    def flush(self, t: float) -> list:
        """End of data: the window in progress ends at t (or at its end, if earlier); forget everything."""
        out = self._close(min(t, self._we)) if self._ws is not None else []
        self._ws, self._we = None, _INF
        self._accs.clear()
        return out

    def _close(self, t_end: float) -> list:
        out: list = []
        ws = self._ws
        hold = self.max_hold_s
        for name, acc in self._accs.items():
            if acc.n == 0:
                continue
            last_t = acc.t
            a = last_t if last_t > ws else ws
            b = min(t_end, last_t + hold)
            if b > a:
                acc.wsum += acc.v * (b - a)
                acc.wdur += b - a
            names = self._names[name]
            for fname, rname in zip(self.functions, names):
                if fname == "mean":
                    val = acc.wsum / acc.wdur if acc.wdur > 0.0 else acc.ssum / acc.n
                elif fname == "min":
                    val = acc.mn
                elif fname == "max":
                    val = acc.mx
                elif fname == "count":
                    val = acc.n
                else:
                    val = acc.v
                if type(val) is bool:
                    val = int(val)
                out.append((t_end, rname, val))
            acc.mn = _INF
            acc.mx = -_INF
            acc.wsum = acc.wdur = acc.ssum = 0.0
            acc.n = 0
        return out
