"""Window aggregates: min, max, mean, count (and last) per signal over tumbling windows.

`WindowAggregator(window_s, functions)` is fed samples of any number of
signals and, when a window ends, returns one record per signal and function:
`(window_end, "<signal>.<function>", value)`, e.g. `Vehicle.Speed.mean`.
(A caller that feeds every sample takes each signal's `input(name)` instead and
gets the records through the aggregator's `sink`.)

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
from typing import Any, Callable, Iterable

__all__ = ["FUNCTIONS", "WindowAggregator"]

FUNCTIONS = ("min", "max", "mean", "count", "last")
_INF = math.inf
_EMPTY: tuple = ()
_NUMBER = (int, float, bool)


#: Samples of one signal kept before they are folded into its accumulators: a window of any length holds at most
#: this many (t, value) pairs per signal, about 30 kB, whatever the sampling rate.
FOLD_AT = 256


class _Acc:
    """One signal's accumulators (mutable, reused across windows), and its way in: `offer`.

    `offer(t, value)` is called for every sample of a signal in a policy replay (570,000 a
    half-hour drive in bench_policy), so it only keeps the sample: the samples are folded into
    the accumulators in one loop, when the window ends or `FOLD_AT` are kept. A Python call per
    sample doing the arithmetic cost about twice as much (issue 16). The fold does the same float
    operations in the same order as a per-sample update would: the results are identical.
    """

    __slots__ = ("mn", "mx", "wsum", "wdur", "ssum", "n", "v", "t", "samples", "due", "owner", "name", "records")

    def __init__(self, owner: "WindowAggregator", name: str) -> None:
        self.owner = owner
        self.name = name
        self.records = tuple(f"{name}.{f}" for f in owner.functions)  # its records' names, one per function
        self.samples: list[tuple[float, Any]] = []
        # A sample at or after this time goes to the aggregator first (`_turn`): the window's end, or -inf
        # while no window is open or this signal had no number since it started (its first one is placed).
        self.due = -_INF
        self.reset()

    def reset(self) -> None:
        self.mn = _INF
        self.mx = -_INF
        self.wsum = 0.0
        self.wdur = 0.0
        self.ssum = 0.0
        self.n = 0
        self.v = 0.0  # last value and its time (carried across windows)
        self.t: float | None = None
        self.samples.clear()

    def offer(self, t: float, value: Any) -> None:
        """Add a sample; the records of a window it ends go to the aggregator's sink first."""
        if t >= self.due:
            self.owner._turn(self, t, value)
        samples = self.samples
        samples.append((t, value))
        if len(samples) >= FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Add the kept samples to the accumulators, in the window they arrived in."""
        ws = self.owner._ws
        hold = self.owner.max_hold_s
        mn, mx, wsum, wdur, ssum, n, v, last_t = self.mn, self.mx, self.wsum, self.wdur, self.ssum, self.n, self.v, self.t
        for t, value in self.samples:
            if type(value) not in _NUMBER:
                continue  # text (an IEEE float signal's NaN and infinity are kept out by its Feed: finite_only)
            if last_t is not None and t >= last_t:
                a = last_t if last_t > ws else ws
                b = t
                hold_end = last_t + hold
                if hold_end < b:
                    b = hold_end
                if b > a:
                    wsum += v * (b - a)
                    wdur += b - a
                    if n == 0 and last_t < ws:  # the held value carried into this window
                        if v < mn:
                            mn = v
                        if v > mx:
                            mx = v
            if value < mn:
                mn = value
            if value > mx:
                mx = value
            ssum += value
            n += 1
            v = value
            last_t = t
        self.samples.clear()
        self.mn, self.mx, self.wsum, self.wdur, self.ssum, self.n, self.v, self.t = mn, mx, wsum, wdur, ssum, n, v, last_t


class WindowAggregator:
    """Tumbling-window aggregates of numeric signals.

    `sink`: where the records of a window that a sample ends go (the stream's records). Without
    one, `feed` returns them.
    """

    def __init__(self, window_s: float, functions: Iterable[str] = ("min", "max", "mean", "count"), *,
                 signals: Iterable[str] | None = None, max_hold_s: float = 5.0,
                 sink: Callable[[list], None] | None = None):
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
        self._ws: float | None = None
        self._we = _INF
        # The signals that had a number since the start or the last flush, in the order of their first:
        # the order of their records in a window. Their `due` is the window's end.
        self._live: dict[str, _Acc] = {}
        self._closed: list = []
        self._sink = sink if sink is not None else self._closed.extend

    def input(self, name: str) -> Callable[[float, Any], None]:
        """The signal's own `offer(t, value)`, for a caller that feeds it every sample (the policy engine)."""
        return self._acc(name).offer

    def _acc(self, name: str) -> _Acc:
        acc = self._accs.get(name)
        if acc is None:
            acc = self._accs[name] = _Acc(self, name)
        return acc

    def _set_due(self, due: float) -> None:
        for acc in self._live.values():
            acc.due = due

    def _open(self, t: float) -> None:
        w = self.window_s
        ws = math.floor(t / w) * w
        self._ws, self._we = ws, ws + w
        self._set_due(self._we)

    def _turn(self, acc: _Acc, t: float, value: Any) -> None:
        """A sample at or after its `due`: it may end the window, open one, or be its signal's first number."""
        if type(value) not in _NUMBER:
            return  # text neither opens nor ends a window
        if self._ws is None:
            self._open(t)
        elif t >= self._we:
            self._sink(self._close(self._we))
            self._open(t)
        if acc.name not in self._live:
            self._live[acc.name] = acc
            acc.due = self._we

    def feed(self, t: float, name: str, value: Any):
        """Add a sample; returns the records of a window that closed (usually ()), unless there is a sink."""
        if self.signals is not None and name not in self.signals:
            return _EMPTY
        self._acc(name).offer(t, value)
        if not self._closed:
            return _EMPTY
        out = self._closed[:]
        self._closed.clear()
        return out

    def poll(self, t: float) -> list:
        """Close the current window once t has passed its end (a timer, for quiet periods)."""
        if self._ws is None or t < self._we:
            return []
        out = self._close(self._we)
        self._ws, self._we = None, _INF
        self._set_due(-_INF)
        return out

    def flush(self, t: float) -> list:
        """End of data: the window in progress ends at t (or at its end, if earlier); forget everything."""
        out = self._close(min(t, self._we)) if self._ws is not None else []
        self._ws, self._we = None, _INF
        self._set_due(-_INF)
        self._live.clear()
        for acc in self._accs.values():
            acc.reset()
        return out

    def _close(self, t_end: float) -> list:
        out: list = []
        ws = self._ws
        hold = self.max_hold_s
        for acc in self._live.values():
            if acc.samples:
                acc.fold()
            if acc.n == 0:
                continue
            last_t = acc.t
            a = last_t if last_t > ws else ws
            b = min(t_end, last_t + hold)
            if b > a:
                acc.wsum += acc.v * (b - a)
                acc.wdur += b - a
            for fname, rname in zip(self.functions, acc.records):
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
