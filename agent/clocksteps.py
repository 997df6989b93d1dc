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

from dataclasses import dataclass

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
