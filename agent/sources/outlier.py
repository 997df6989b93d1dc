"""One damaged time in a log: a frame far ahead of the frames on both sides of it.

A log's frames come in time order, with pauses: a logger stopped for the
night, two drives in one file. A line whose time is more than `OUTLIER_S`
ahead of the frame before it *and* of the frame after it is no pause but one
damaged timestamp (flipped bits, a clock read wrong once). Recorded, it would
move the data's clock there and back: every consent that expires before that
time ends there (and does not start again when the clock comes back), the
aggregate windows after it fold into the one it opens, and a paced replay
sleeps through the gap. So it is skipped and reported, as a line that is no
frame is (`malformed-input`).

A reader keeps the window `[low, high]` in its own locals and asks
`OutlierGuard.outside` only about a time outside it: about once per
`OUTLIER_S` of log time, at each jump and step back, and for what is no time
at all. The per-frame cost is the two comparisons the reader made anyway
(is it a time from 0 to year 9999).
"""

from __future__ import annotations

from typing import Any

from carledger.sources.frame import Frame
from carledger.times import LAST_TIME, is_time

#: Seconds ahead of both neighbours that make a frame's time damaged rather than a pause. Frames of one bus come
#: milliseconds apart; an hour out and back is no recording's.
OUTLIER_S = 3600.0


class OutlierGuard:
    """Judges the frames a reader's fast check lets through to it; see the module's docstring.

    `low` and `high` are the window a reader's fast path keeps: a frame whose time is
    within it is appended there without asking. `high` starts below every time, so the
    first frame comes here and sets it.
    """

    __slots__ = ("low", "high", "_suspect", "_last")

    def __init__(self) -> None:
        self.low = 0.0
        self.high = -1.0
        # The frame appended last jumped far ahead of the one before it; the next frame decides:
        # (its batch, its index there, where it came from (the reader's), the time of the frame before it).
        self._suspect: tuple[list, int, Any, float] | None = None
        self._last: float | None = None  # the last frame kept in a batch handed on already

    def outside(self, batch: list[Frame], frame: Frame, where: Any) -> tuple[bool, tuple[Any, str] | None]:
        """A frame whose time is outside `[low, high]`: appends it to `batch` unless it is no time.

        Returns (appended, outlier), where `outlier` is (where, reason) of the frame before
        it, taken back out of `batch` because this frame's time came back from it.
        """
        t = frame[0]
        if not is_time(t):
            return False, None
        outlier = None
        suspect = self._suspect
        before = batch[-1][0] if batch else self._last
        if suspect is not None and suspect[0] is batch and suspect[1] == len(batch) - 1:
            ahead = batch[-1][0]
            if t < ahead - OUTLIER_S:  # back where the frame before it was: that one was no pause
                batch.pop()
                before = suspect[3]
                reason = f"its time is {ahead - max(t, before):.0f} s ahead of the frames before and after it"
                outlier = (suspect[2], reason)
        self._suspect = None
        batch.append(frame)
        if before is not None and t - before > OUTLIER_S:
            self._suspect = (batch, len(batch) - 1, where, before)
            self.low = t - OUTLIER_S  # the next frame comes here if it goes back
        else:
            self.low = 0.0
        self.high = min(t + OUTLIER_S, LAST_TIME)
        return True, outlier

    def next_batch(self, batch: list[Frame]) -> list[Frame]:
        """Called before `batch` is handed on: the list to fill next.

        A frame still to be judged (the last one, ahead of the one before it) moves into
        the next batch, where the frame after it decides.
        """
        suspect = self._suspect
        if suspect is not None and suspect[0] is batch and suspect[1] == len(batch) - 1 and len(batch) > 1:
            carried = [batch.pop()]
            self._suspect = (carried, 0, suspect[2], suspect[3])
            self._last = suspect[3]
            return carried
        if batch:
            self._last = batch[-1][0]
        return []
