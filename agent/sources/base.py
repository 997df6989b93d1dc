"""The abstract frame source: a live bus or a recorded log, read the same way."""

from __future__ import annotations

import abc
import math
import threading
import time
from typing import Callable, Iterator

from carledger.sources.frame import Frame, FrameFilter

# Called with (kind, detail) for things worth recording as bus health: errors,
# reopen attempts, malformed input. Never called per frame.
EventSink = Callable[[str, dict], None]

# Seconds between a busy reader's wake-ups ([agent] wakeup_interval). A wake-up costs
# hundreds of microseconds (thread hand-off, per-batch work, a CPU leaving idle), a
# frame a few: taking frames a few at a time as they arrive costs several times the
# decoding itself. Frames keep their kernel or recorded timestamps, so handling them
# up to this much later changes nothing that is recorded.
WAKEUP_INTERVAL = 0.05


READER_SLOT = 0.1  # of an interval: reader i wakes i slots after the grid point, the pipeline after the last
MAX_SLOTS = 8


def reader_phase(index: int, interval: float) -> float:
    """Seconds after each grid point at which the reader of source `index` wakes.

    Readers wake one after the other, not together: two threads that read
    at once hand the GIL to each other at every system call (every frame),
    a context switch each (measured: 2,600 a second with four buses).
    """
    return (index % MAX_SLOTS) * READER_SLOT * interval


def pipeline_phase(sources: int, interval: float) -> float:
    """Seconds after each grid point at which the pipeline wakes: one slot after the last reader's."""
    return min(max(sources, 1), MAX_SLOTS) * READER_SLOT * interval


class Pacer:
    """Wake-up times on a grid of `interval` seconds of the monotonic clock, shared by every thread.

    Each reader wakes at its own `phase` after the grid points and the
    pipeline after all of them, so the pipeline finds every bus's batch
    waiting, no two threads read at once, and a busy agent wakes
    (number of threads) / interval times a second, whatever the load.
    """

    def __init__(self, interval: float, phase: float = 0.0):
        self.interval = interval
        self.phase = phase

    def at_or_after(self, t: float) -> float:
        """The first grid point at or after monotonic time `t`."""
        return math.ceil((t - self.phase) / self.interval) * self.interval + self.phase

    def wait(self, stop: threading.Event) -> bool:
        """Sleeps until the next grid point after now; True when `stop` is set."""
        now = time.monotonic()
        wake = self.at_or_after(now)
        return self.sleep_until(wake if wake > now else now + self.interval, stop)

    def sleep_until(self, wake: float, stop: threading.Event) -> bool:
        """Sleeps until monotonic time `wake`; True, without sleeping on, once `stop` is set.

        `time.sleep`, not `stop.wait(timeout)`: the timed wait on a lock cost ~40 µs
        more CPU per wake-up on the bench machine (docs/performance.md, "Real time"),
        paid at every wake-up of a busy agent. A sleep is one interval at most, so
        `stop` is seen within one interval (at most 1 s, `[agent] wakeup_interval`).
        """
        while not stop.is_set():
            left = wake - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, self.interval))
        return True


def _ignore(kind: str, detail: dict) -> None:
    pass


class FrameSource(abc.ABC):
    """Yields batches of frames until exhausted (a log) or stopped (a bus).

    Subclasses read only what `frame_filter` lets through, as early as their
    medium allows: kernel filters for SocketCAN, string matching for logs.
    """

    def __init__(self, name: str, frame_filter: FrameFilter | None, on_event: EventSink | None = None):
        self.name = name
        self.frame_filter = frame_filter
        self.on_event = on_event or _ignore
        self.frames_read = 0
        self.wakeup_interval = WAKEUP_INTERVAL  # the pipeline sets [agent] wakeup_interval
        self.wakeup_phase = 0.0  # seconds after the grid points this source's reader wakes (`reader_phase`)

    @abc.abstractmethod
    def batches(self, stop: threading.Event) -> Iterator[list[Frame]]:
        """Batches of frames in time order; returns when exhausted or `stop` is set."""

    def close(self) -> None:
        """Release the medium; safe to call twice."""
