"""The composition root: wires sources, decoding, sampling and the ledger from a Config.

Each bus runs in its own thread, reading only the frames its filter lets
through and handing them over in batches. One pipeline thread decodes,
samples and appends records, and seals blocks when they are due (by age or
record count), one SQLite transaction for all streams due at once. Bus
problems arrive here as health events and go into the `health` stream.
"""

from __future__ import annotations

import collections
import fnmatch
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from carledger import __version__
from carledger.config import BusConfig, Config, StreamConfig
from carledger.decode import DecodeTable, VssMapping, load_dbc
from carledger.ledger import Ledger
from carledger.notify import Notifier
from carledger.sampling import MessageHandler, Tap
from carledger.sources import BusSource, FrameFilter, FrameSource, LogSource

log = logging.getLogger(__name__)

HEALTH_STREAM = "health"
_TICK = 0.25  # seconds the pipeline waits for frames before checking seals, stop and watchdog
_QUEUE_BATCHES = 8  # bounds memory (a batch is up to 2048 frames) when a replay reads faster than the pipeline keeps up


class PipelineError(Exception):
    """A problem that stops the agent before it starts (bad DBC, bad mapping)."""


@dataclass
class BusStats:
    frames: int = 0
    malformed: int = 0
    errors: int = 0


@dataclass
class RunSummary:
    frames: int = 0
    records: int = 0
    blocks: int = 0
    seconds: float = 0.0
    buses: dict[str, BusStats] = field(default_factory=dict)
    streams: dict[str, int] = field(default_factory=dict)  # records sealed per data stream


class StreamSelector:
    """Does a stream want a signal? Glob patterns over the VSS name or Message.Signal."""

    def __init__(self, stream: StreamConfig):
        self.stream = stream
        self._regex = re.compile("|".join(fnmatch.translate(p) for p in stream.signals))

    def wants(self, name: str, source: str) -> bool:
        return bool(self._regex.match(name) or self._regex.match(source))


class _Bus:
    """One bus's decode state: which frames to read, and a handler per wanted message."""

    def __init__(
        self, config: BusConfig, table: DecodeTable, mapping: VssMapping,
        make_handler: Callable[[Any], MessageHandler],
    ):
        self.config = config
        self.table = table
        self.mapping = mapping
        self.frame_filter = FrameFilter.of(table.filters())
        self._make_handler = make_handler
        self._by_extractor: dict[int, MessageHandler] = {}
        self.handlers: dict[int, MessageHandler | None] = {}
        self.stats = BusStats()

    def resolve(self, key: int) -> MessageHandler | None:
        extractor = self.table.lookup(key)
        handler = None
        if extractor is not None:
            handler = self._by_extractor.get(id(extractor))
            if handler is None:
                handler = self._by_extractor[id(extractor)] = self._make_handler(extractor)
        self.handlers[key] = handler
        return handler

    def process(self, batch: list) -> None:
        get = self.handlers.get
        resolve = self.resolve
        for t, key, data in batch:
            handler = get(key, False)
            if handler is False:
                handler = resolve(key)
            if handler is not None:
                handler.handle(t, data)
        self.stats.frames += len(batch)


class Pipeline:
    """Sources -> decode -> sampling -> ledger, for one configuration."""

    def __init__(self, config: Config, *, notifier: Notifier | None = None):
        self.config = config
        self.notifier = notifier or Notifier({})
        self.stop_event = threading.Event()
        self.summary = RunSummary()
        self._queue: queue.Queue = queue.Queue(maxsize=_QUEUE_BATCHES)
        self._events: collections.deque = collections.deque()  # (bus index, kind, detail) from any thread
        self._selectors = [StreamSelector(s) for s in config.streams]
        self.ledger = Ledger.open(config.store, vehicle_id=config.vehicle)
        try:
            self.ledger.policy_digest = config.policy_digest()
            self._writers = {s.name: self.ledger.writer(s.name) for s in config.streams}
            self._health = self.ledger.writer(HEALTH_STREAM)
            self._record_counts = {s.name: 0 for s in config.streams}  # records sealed per data stream
            self.buses = [self._build_bus(bus) for bus in config.buses]
            self._warn_unmatched_streams()
        except BaseException:
            self.ledger.close()
            raise
        self.sources = [self._make_source(i, bus) for i, bus in enumerate(self.buses)]
        self._last_t: float | None = None
        self._last_wall = time.monotonic()
        self._check_at = float("-inf")  # pipeline-clock time of the next seal check inside a batch

    # -- building -----------------------------------------------------------------

    def _build_bus(self, bus: BusConfig) -> _Bus:
        databases = []
        for path in bus.dbc:
            loaded = load_dbc(path)
            for warning in loaded.warnings:
                log.warning("%s", warning)
            databases.append(loaded.database)
        mapping = VssMapping.load(bus.vss or VssMapping.beside(bus.dbc))
        selectors = self._selectors

        def wanted(source: str) -> bool:
            name = mapping.name(source)
            return any(s.wants(name, source) for s in selectors)

        table = DecodeTable(databases, wanted, j1939=bus.j1939)

        def make_handler(extractor: Any) -> MessageHandler:
            handler = MessageHandler(extractor.extract, [])
            for signal in extractor.names:
                source = f"{extractor.message.name}.{signal}"
                name = mapping.name(source)
                taps = []
                for selector in selectors:
                    if selector.wants(name, source):
                        stream = selector.stream
                        taps.append(
                            Tap(
                                self._writers[stream.name].add_sample,
                                name,
                                source if name != source else None,
                                self._min_interval(stream, name, source),
                                owner=handler,
                            )
                        )
                handler.taps.append(taps)
            return handler

        built = _Bus(bus, table, mapping, make_handler)
        log.info(
            "bus %s: %d messages, %d signals needed from %s",
            bus.name, len(table.keys()), len(table.signals()), ", ".join(bus.dbc),
        )
        return built

    def _min_interval(self, stream: StreamConfig, name: str, source: str) -> float:
        if stream.min_interval is not None:
            return stream.min_interval
        for pattern, interval in self.config.sampling.overrides:
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(source, pattern):
                return interval
        return self.config.sampling.min_interval

    def _warn_unmatched_streams(self) -> None:
        signals = [(bus.mapping.name(s), s) for bus in self.buses for s in bus.table.signals()]
        for selector in self._selectors:
            if not any(selector.wants(n, s) for n, s in signals):
                log.warning("stream %s: its patterns match no signal of the configured DBCs", selector.stream.name)

    def _make_source(self, index: int, bus: _Bus) -> FrameSource:
        cfg = bus.config

        def on_event(kind: str, detail: dict, index: int = index) -> None:
            self._events.append((index, kind, detail))

        if cfg.is_replay:
            return LogSource(
                cfg.name, cfg.replay or "", bus.frame_filter,
                speed=cfg.speed, channels=cfg.replay_channels, on_event=on_event,
            )
        return BusSource(
            cfg.name, bus.frame_filter,
            interface=cfg.interface or "", channel=cfg.channel, bitrate=cfg.bitrate,
            fd=cfg.fd, data_bitrate=cfg.data_bitrate, options=cfg.options, on_event=on_event,
        )

    # -- running ------------------------------------------------------------------

    def now(self) -> float:
        """The pipeline's clock: the newest frame time, advanced by wall time since it arrived."""
        if self._last_t is None:
            return time.time()
        return self._last_t + (time.monotonic() - self._last_wall)

    def stop(self) -> None:
        self.stop_event.set()

    def run(self, duration: float | None = None) -> RunSummary:
        """Run until every source is exhausted, `stop()` is called, or `duration` seconds pass."""
        started = time.monotonic()
        deadline = started + duration if duration else None
        self._health_event("agent-start", {
            "version": __version__, "config": self.config.path,
            "policy": self.ledger.policy_digest.hex(), "buses": [b.config.name for b in self.buses],
        })
        # A single fast replay runs in this thread: handing batches across threads
        # would only add GIL hand-offs. Everything else gets a reader thread per source.
        inline = len(self.sources) == 1 and isinstance(self.sources[0], LogSource) and self.sources[0].speed <= 0
        threads = [] if inline else [
            threading.Thread(target=self._feed, args=(i, s), name=f"source-{s.name}", daemon=True)
            for i, s in enumerate(self.sources)
        ]
        for thread in threads:
            thread.start()
        self.notifier.ready(f"recording {len(self.sources)} bus(es)")
        active = len(self.sources)
        next_health = time.monotonic() + self.config.health_interval
        items = self._inline_items() if inline else self._queued_items()
        try:
            for index, item in items:
                if item is None and index is not None:
                    active -= 1
                elif item is not None:
                    self._process(index, item)
                while self._events:
                    self._bus_event(*self._events.popleft())
                self._seal_due()
                wall = time.monotonic()
                self.notifier.alive()
                if wall >= next_health:
                    next_health = wall + self.config.health_interval
                    self._health_event("counters", self._counters())
                if not active or self.stop_event.is_set() or (deadline is not None and wall >= deadline):
                    break
        finally:
            self.stop_event.set()
            self.notifier.stopping()
            self._drain(threads)
            self._health_event("agent-stop", self._counters())
            self._seal(None)
            self.ledger.close()
            for source in self.sources:
                source.close()
        self.summary.seconds = time.monotonic() - started
        for bus in self.buses:
            self.summary.buses[bus.config.name] = bus.stats
        self.summary.frames = sum(b.stats.frames for b in self.buses)
        self.summary.streams = dict(self._record_counts)
        self.summary.records = sum(self._record_counts.values())
        return self.summary

    def _queued_items(self) -> Iterator[tuple[int | None, list | None]]:
        """Batches from the reader threads; (None, None) every tick without one."""
        get = self._queue.get
        while True:
            try:
                yield get(timeout=_TICK)
            except queue.Empty:
                yield None, None

    def _inline_items(self) -> Iterator[tuple[int | None, list | None]]:
        yield from self._batches_of(0, self.sources[0])

    def _batches_of(self, index: int, source: FrameSource) -> Iterator[tuple[int, list | None]]:
        """(index, batch) for every batch of a source, then (index, None); never raises."""
        try:
            for batch in source.batches(self.stop_event):
                yield index, batch
        except Exception as exc:  # a source must never take the agent down
            log.exception("source %s failed", source.name)
            self._events.append((index, "source-failed", {"bus": source.name, "error": str(exc)}))
        yield index, None

    def _process(self, index: int, batch: list) -> None:
        """Hand a batch to its bus, sealing at the right points inside it.

        A fast replay delivers seconds of log time in one batch; checking the
        seals only between batches would make blocks span several seconds.
        So a batch that crosses the next check time is split there.
        """
        bus = self.buses[index]
        check_at = self._check_at
        if batch[-1][0] >= check_at:
            step = self.config.seal_max_age / 4
            start = 0
            for i, frame in enumerate(batch):
                t = frame[0]
                if t >= check_at:
                    if i > start:
                        bus.process(batch[start:i])
                        self._last_t = batch[i - 1][0]
                    start = i
                    self._last_wall = time.monotonic()
                    self._seal_due()
                    check_at = t + step
            batch = batch[start:]
            self._check_at = check_at
        bus.process(batch)
        self._last_t = batch[-1][0]
        self._last_wall = time.monotonic()

    def _feed(self, index: int, source: FrameSource) -> None:
        """A reader thread: hands the source's batches to the pipeline thread."""
        put = self._queue.put
        stop = self.stop_event
        for item in self._batches_of(index, source):
            while True:
                try:
                    put(item, timeout=_TICK)
                    break
                except queue.Full:
                    if stop.is_set() and item[1] is not None:
                        break

    def _drain(self, threads: list[threading.Thread]) -> None:
        """Let source threads finish, recording what they already read."""
        deadline = time.monotonic() + 2.0
        while True:
            try:
                index, item = self._queue.get(timeout=0.05)
            except queue.Empty:
                if not any(t.is_alive() for t in threads) or time.monotonic() >= deadline:
                    break
                continue
            if item is not None:
                self._process(index, item)
        while self._events:
            self._bus_event(*self._events.popleft())

    def _bus_event(self, index: int, kind: str, detail: dict) -> None:
        stats = self.buses[index].stats
        if kind == "malformed-input":
            stats.malformed += 1
        elif kind in ("bus-error", "source-failed"):
            stats.errors += 1
        self._health_event(kind, detail)

    def _health_event(self, kind: str, detail: dict) -> None:
        # The agent's own health is about the process, so it runs on wall-clock time,
        # even while the data streams run on a replayed log's clock.
        self._health.add_event(time.time(), kind, detail)

    def _counters(self) -> dict:
        return {
            "frames": {b.config.name: b.stats.frames for b in self.buses},
            "records": sum(self._record_counts.values()),
            "blocks": self.summary.blocks,
        }

    def _seal_due(self) -> None:
        max_age, max_records = self.config.seal_max_age, self.config.seal_max_records
        health = self._health
        due = [w for w in self.ledger.due(self.now(), max_age, max_records) if w is not health]
        first = health.first_time
        if first is not None and (time.time() - first >= max_age or health.pending >= max_records):
            due.append(health)
        if due:
            self._seal(due)

    def _seal(self, writers: list | None) -> None:
        blocks = self.ledger.seal(writers)
        self.summary.blocks += len(blocks)
        counts = self._record_counts
        for block in blocks:
            if block.header.stream in counts:
                counts[block.header.stream] += block.header.count
