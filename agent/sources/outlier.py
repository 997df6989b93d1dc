"""Damaged times in a log: a few frames far ahead of the frames on both sides of them.

A log's frames come in time order, with pauses: a logger stopped for the
night, two drives in one file. A line whose time is more than `OUTLIER_S`
ahead of the frame before it *and* of the frame after it is no pause but a
damaged timestamp (flipped bits, a clock read wrong once); so are up to
`OUTLIER_RUN` such lines in a row, all that far ahead of the frame before
them, followed by a frame back near it. Recorded, they would move the data's
clock there and back: every consent that expires before that time ends
there, the aggregate windows after them fold into the one they open, and a
paced replay sleeps through the gap. So they are skipped and reported, as a
line that is no frame is (`malformed-input`). More lines ahead than that are
the clock: a clock that ran ahead and stepped back (carledger.clocksteps).

A reader keeps the window `[low, high]` in its own locals and asks
`OutlierGuard.outside` only about a time outside it: about once per
`OUTLIER_S` of log time, at each jump and step back, for the frames after a
jump until it is judged (at most `OUTLIER_RUN` + 1), and for what is no time
at all. The per-frame cost is the two comparisons the reader made anyway
(is it a time from 0 to year 9999).
"""

from __future__ import annotations

import math
from typing import Any

from carledger.sources.frame import Frame
from carledger.times import LAST_TIME, is_time

#: Seconds ahead of both neighbours that make a frame's time damaged rather than a pause. Frames of one bus come
#: milliseconds apart; an hour out and back is no recording's.
OUTLIER_S = 3600.0
#: Lines in a row that far ahead, and then back, that are damage; more are a clock that ran ahead. At a bus's pace
#: 16 frames are a few milliseconds: no clock is set an hour ahead for so short a time and set back.
OUTLIER_RUN = 16

Outlier = tuple[Any, str]  # where the frame came from (the reader's), why it was skipped


class _Run:
    """Frames in a row far ahead of the one before them, not yet judged: the tail of `batch` from `start`."""

    __slots__ = ("batch", "start", "where", "before")

    def __init__(self, batch: list[Frame], start: int, where: Any, before: float):
        self.batch, self.start, self.before = batch, start, before
        self.where = [where]

    def open_in(self, batch: list[Frame]) -> bool:
        """Still the tail of the batch being filled (not handed on, nothing appended after it)?"""
        return self.batch is batch and self.start + len(self.where) == len(batch)


class OutlierGuard:
    """Judges the frames a reader's fast check lets through to it; see the module's docstring.

    `low` and `high` are the window a reader's fast path keeps: a frame whose time is
    within it is appended there without asking. `high` starts below every time, so the
    first frame comes here and sets it; while frames ahead are being judged the window
    is empty, so that each next frame comes here.
    """

    __slots__ = ("low", "high", "_run", "_last")

    def __init__(self) -> None:
        self.low = 0.0
        self.high = -1.0
        self._run: _Run | None = None
        self._last: float | None = None  # the last frame kept in a batch handed on already

    def outside(self, batch: list[Frame], frame: Frame, where: Any) -> tuple[bool, list[Outlier]]:
        """A frame whose time is outside `[low, high]`: appends it to `batch` unless it is no time.

        Returns (appended, outliers): the frames before it that its time shows to be
        damaged, taken back out of `batch`, each as (where, reason).
        """
        t = frame[0]
        if not is_time(t):
            return False, []
        outliers: list[Outlier] = []
        before = batch[-1][0] if batch else self._last
        run, self._run = self._run, None
        if run is not None and run.open_in(batch):
            if t - run.before > OUTLIER_S:  # ahead too
                if len(run.where) < OUTLIER_RUN:
                    batch.append(frame)
                    run.where.append(where)
                    self._run = run
                    self.low, self.high = math.inf, -math.inf  # the next frame comes here as well
                    return True, outliers
                # more than a damaged line or two: the clock is there (and the frames before it were on it)
            else:  # back near the frame before the run: every frame of it was damaged
                back = max(t, run.before)
                outliers = [(w, f"its time is {ahead - back:.0f} s ahead of the frames before and after it")
                            for w, (ahead, _, _) in zip(run.where, batch[run.start:])]
                del batch[run.start:]
                before = run.before
        batch.append(frame)
        if before is not None and t - before > OUTLIER_S:
            self._run = _Run(batch, len(batch) - 1, where, before)
            self.low, self.high = math.inf, -math.inf
        else:
            self.low, self.high = 0.0, min(t + OUTLIER_S, LAST_TIME)
        return True, outliers

    def next_batch(self, batch: list[Frame]) -> list[Frame]:
        """Called before `batch` is handed on: the list to fill next.

        Frames still to be judged (the batch's last, ahead of the one before them) move
        into the next batch, where the frames after them decide. A batch of nothing else
        is handed on as it is: they are kept, as a clock that ran ahead.
        """
        run = self._run
        if run is not None and run.open_in(batch) and run.start > 0:
            carried = batch[run.start:]
            del batch[run.start:]
            run.batch, run.start = carried, 0
            self._last = run.before
            return carried
        if run is not None:
            self._run = None
            self.low, self.high = 0.0, min(batch[-1][0] + OUTLIER_S, LAST_TIME)
        if batch:
            self._last = batch[-1][0]
        return []
