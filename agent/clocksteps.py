"""Where the frames' clock steps back, per bus.

Frames carry the kernel's wall clock. When it steps back (an NTP correction
of a clock that ran ahead; a Pi has no RTC), what the data's clock drives
has to hear of it: the pipeline ends the windows in progress where the
clock left, lets the streams follow the owner's state at the new time, and
says so in the signed health stream (`clock-stepped-back`).

Each bus's frames come in its own order; buses read in turn interleave, so
only a bus's own clock counts. Two comparisons a batch: a step inside a long
batch whose end is past the old time again is not seen here. The pipeline
looks again where it matters, at no cost per frame: when the clock ran ahead
inside a batch far enough to cross one of its checks (a consent's end, a
seal), the rest of the batch after that check is looked at with `step_in`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

#: Seconds the frames' clock may go back (buses interleave, jitter) before it is a step.
CLOCK_STEP = 1.0


@dataclass(frozen=True)
class ClockStep:
    position: int  # the first frame after the step, in its batch
    left: float  # the newest time before the step: where the clock left
    to: float  # the time of the first frame after it

    @property
    def seconds(self) -> float:
        return self.left - self.to


class ClockSteps:
    """The last time of each bus's frames, and the step back in a batch, if there is one."""

    def __init__(self) -> None:
        self._last: dict[int, float] = {}  # bus index -> the time of its last frame

    def find(self, index: int, batch: list) -> ClockStep | None:
        """The step back of more than `CLOCK_STEP` in this batch of bus `index`, or None."""
        first, end = batch[0][0], batch[-1][0]
        last = self._last.get(index)
        self._last[index] = end
        if not ((last is not None and min(first, end) < last - CLOCK_STEP) or end < first - CLOCK_STEP):
            return None
        return step_in(batch, first if last is None else last)


def step_in(batch: list, top: float) -> ClockStep | None:
    """The first step back of more than `CLOCK_STEP` in `batch`, after a clock at `top`; None if none.

    Where the step is, exactly: asked only when the batch's ends show there is one (rare), so a loop is fine.
    """
    for position, (t, _, _) in enumerate(batch):
        if t > top:
            top = t
        elif t < top - CLOCK_STEP:
            return ClockStep(position, top, t)
    return None


#: Seconds the data's clock may move apart from the monotonic clock between two looks before it has jumped.
JUMP_S = 60.0
#: Seconds of the monotonic clock the data's clock must keep pace with it after a jump before it is steady again.
STEADY_S = 3600.0


class SteadyClock:
    """Whether the data's clock on a live bus is one to delete by: it has not jumped within `STEADY_S`.

    Retention deletes records by their age on the data's clock, for good. On a
    live bus that clock is the kernel's wall clock, which no signature covers: a
    wrong time source that sets it a year ahead would have every record younger
    than a year deleted at the next check, and the step back that follows
    brings none of them back. So once the data's clock has moved more than
    `JUMP_S` apart from the monotonic clock, deleting by age waits until it has
    kept pace again for `STEADY_S`: a wrong time put right within the hour
    deletes nothing, and a right one (NTP setting a Pi's clock forward after
    boot) deletes an hour late. The clock at the start of a run is taken as it
    is, or a car computer that runs only while the car is driven would never
    delete; and a replay's clock is the log's own (not asked).
    """

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._last: tuple[float, float] | None = None  # (data time, monotonic time) at the last look
        self.held_until = -math.inf  # monotonic time before which the clock is not steady
        self.jumped = 0.0  # seconds of the last jump
        self.newly_held = False  # the last look found a jump while the clock was steady: the caller says so once

    def steady(self, t: float) -> bool:
        """Look at the data's time `t` now: True when it has kept pace with the monotonic clock long enough."""
        now = self._monotonic()
        last, self._last = self._last, (t, now)
        self.newly_held = False
        if last is not None:
            apart = (t - last[0]) - (now - last[1])
            if abs(apart) > JUMP_S:
                self.newly_held = now >= self.held_until
                self.jumped = apart
                self.held_until = now + STEADY_S
        return now >= self.held_until
