"""Rounds: how the sources' batches reach the pipeline thread, once per wake-up.

A single fast replay is read in the pipeline thread itself: handing batches
across threads would only add GIL hand-offs. So is a single bus read from a
socket (SocketCAN, udp_multicast), once per wake-up interval: one thread
wakes, not two, and no batch crosses threads. Every other source gets a
reader thread that queues its batches, and the pipeline thread takes all
that is queued once per wake-up, a slot after the readers on their grid.

A round is a list of (source index, batch) items; a batch of None says that
source ended, and an empty round lets the pipeline's per-round work (owner
requests, seals, the watchdog) go on while the buses are silent. A source
never takes the agent down: what it read is kept, its failure goes to the
bus events as `source-failed`, and a damaged log is kept to be raised once
everything is sealed (`unreadable`).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from typing import Callable, Iterator, Sequence

from carledger.sources import FrameSource, LogSource
from carledger.sources.base import Pacer, pipeline_phase
from carledger.sources.replay import ReplayError

log = logging.getLogger(__name__)

Item = tuple[int, "list | None"]  # (source index, a batch; None: the source ended)

_TICK = 0.25  # seconds the pipeline waits for frames before checking seals, stop and watchdog
_QUEUE_BATCHES = 8  # bounds memory (a batch is up to 2048 frames) when a replay reads faster than the pipeline keeps up


class Rounds:
    """The sources' batches for the pipeline thread, a round per wake-up (inline, or from reader threads)."""

    def __init__(self, sources: Sequence[FrameSource], stop: threading.Event, events: collections.deque,
                 wakeup_interval: float):
        self.sources, self.stop, self.events, self.wakeup_interval = sources, stop, events, wakeup_interval
        self.unreadable: ReplayError | None = None  # a log that broke off: raised by the caller once all is sealed
        self._queue: queue.Queue = queue.Queue(maxsize=_QUEUE_BATCHES)
        one = sources[0] if len(sources) == 1 else None
        self.fast = isinstance(one, LogSource) and one.speed <= 0  # a single replay as fast as the file reads
        self.inline = self.fast or (one is not None and getattr(one, "reads_sockets", False))
        if self.inline and not self.fast:
            one.idle_ticks = True  # type: ignore[union-attr]  # an empty batch when idle: the round's work goes on

    def readers(self) -> list[threading.Thread]:
        """The reader threads to start (none when the pipeline thread reads the one source itself)."""
        if self.inline:
            return []
        return [threading.Thread(target=self._feed, args=(i, s), name=f"source-{s.name}", daemon=True)
                for i, s in enumerate(self.sources)]

    def __iter__(self) -> Iterator[list[Item]]:
        return self._inline() if self.inline else self._queued()

    def _queued(self) -> Iterator[list[Item]]:
        """The batches the reader threads queued, taken once per wake-up; [] every tick without any.

        The pipeline wakes on the readers' grid, a slot after the last of
        them (`pipeline_phase`), and takes every batch waiting. Only when nothing was
        waiting does it block on the queue (an idle car), and only when the
        queue is full or a log is replayed as fast as it reads (readers faster
        than real time) does it skip the wait.
        """
        interval = self.wakeup_interval
        pacer = Pacer(interval, pipeline_phase(len(self.sources), interval))
        get, get_nowait, waiting = self._queue.get, self._queue.get_nowait, self._queue.qsize
        stop = self.stop
        # a fast replay among the sources: the pipeline keeps up with the fastest reader, it is not the car's pace
        paced = not any(isinstance(s, LogSource) and s.speed <= 0 for s in self.sources)
        while True:
            items = [get_nowait() for _ in range(waiting())]  # only this thread takes: all are there
            if not items:
                try:
                    items = [get(timeout=_TICK)]
                except queue.Empty:
                    pass
            yield items
            if paced and items and not self._queue.full():
                pacer.wait(stop)

    def _inline(self) -> Iterator[list[Item]]:
        for item in self._batches_of(0, self.sources[0]):
            yield [item] if item[1] is None or item[1] else []  # [] : a tick of a bus read in this thread

    def _batches_of(self, index: int, source: FrameSource) -> Iterator[Item]:
        """(index, batch) for every batch of a source, then (index, None); never raises."""
        try:
            for batch in source.batches(self.stop):
                yield index, batch
        except ReplayError as exc:  # a damaged log: what was read before is kept; the command says it in one line
            self.events.append((index, "source-failed", {"bus": source.name, "error": str(exc)}))
            self.unreadable = self.unreadable or exc
        except Exception as exc:  # a source must never take the agent down
            log.exception("source %s failed", source.name)
            self.events.append((index, "source-failed", {"bus": source.name, "error": str(exc)}))
        yield index, None

    def _feed(self, index: int, source: FrameSource) -> None:
        """A reader thread: hands the source's batches to the pipeline thread."""
        put = self._queue.put
        stop = self.stop
        for item in self._batches_of(index, source):
            while True:
                try:
                    put(item, timeout=_TICK)
                    break
                except queue.Full:
                    if stop.is_set() and item[1] is not None:
                        break

    def drain(self, threads: list[threading.Thread], process: Callable[[int, list], None]) -> None:
        """Once stopped: let the reader threads finish (2 s at most), processing what they already read."""
        deadline = time.monotonic() + 2.0
        while True:
            try:
                index, item = self._queue.get(timeout=0.05)
            except queue.Empty:
                if not any(t.is_alive() for t in threads) or time.monotonic() >= deadline:
                    break
                continue
            if item is not None:
                process(index, item)
