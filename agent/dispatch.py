"""Frame dispatch for one configured bus: from a frame's key to what handles it.

A `BusDispatch` holds a bus's DBCs and VSS mapping, which frames its reader
should take (`frame_filter`, from the signals some stream could need), and a
handler per frame key, made on the key's first frame: the message's
`MessageHandler` (decode, then sample), an OBD-II answer's passive decoder,
or the transport reassembler whose whole messages go on to their DBC
message's handler. Its `process` is the agent's per-frame loop.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from carledger.config import BusConfig
from carledger.decode import DecodeTable, VssMapping, load_dbc
from carledger.edr import CrashRecorder
from carledger.run_summary import BusStats
from carledger.sampling import MessageHandler
from carledger.sources import FrameFilter
from carledger.sources.frame import EFF_FLAG
from carledger.transport import TransportDecoder
from carledger.transport.decoder import J1939_TP_RULES

log = logging.getLogger(__name__)


class BusDispatch:
    """One bus's decode state: its DBCs, which frames to read, and a handler per wanted message."""

    def __init__(self, config: BusConfig):
        self.config = config
        self.loaded = [load_dbc(path) for path in config.dbc]
        for loaded in self.loaded:
            for warning in loaded.warnings:
                log.warning("%s", warning)
        self.databases = [loaded.database for loaded in self.loaded]
        self.mapping = VssMapping.load(config.vss or VssMapping.beside(config.dbc))
        self.table = DecodeTable(self.databases, lambda source: False)
        self.frame_filter = FrameFilter.of(())
        self.transport = TransportDecoder(config.uds.pairs if config.uds is not None else ())
        self._messages: dict[int, MessageHandler | None] = {}  # handlers of reassembled messages, by message key
        self.dids: dict = {}  # (response key, DID) -> signals, when the bus polls UDS (carledger.obd.uds.did_table)
        self.obd: Any = None  # a PassiveDecoder when the bus's OBD-II answers are decoded (obd_listen)
        self._obd_filter: FrameFilter | None = None
        self._obd_sink: Callable[..., None] = lambda *sample: None
        self._make_handler: Callable[[Any], MessageHandler | None] = lambda extractor: None
        self._by_extractor: dict[int, MessageHandler | None] = {}
        self.handlers: dict[int, MessageHandler | None] = {}
        self.recorder: CrashRecorder | None = None  # crash capture, when some of this bus's messages feed its ring
        self.stats = BusStats(log=config.replay, channels=tuple(config.replay_channels), dbc=tuple(config.dbc))

    def signals(self) -> list[tuple[str, str]]:
        """(name, Message.Signal) of every signal the DBCs define: what a policy may name."""
        out = []
        for database in self.databases:
            for message in database.messages:
                for signal in message.signals:
                    source = f"{message.name}.{signal.name}"
                    out.append((self.mapping.name(source), source))
        return out

    def plan(self, wanted: Callable[[str], bool], make_handler: Callable[[Any], MessageHandler | None]) -> None:
        """Decode what `wanted` (by Message.Signal) says some stream could need; handlers made on demand."""
        self.table = DecodeTable(self.databases, wanted, j1939=self.config.j1939)
        rules = list(self.table.filters())
        if self.table.matches_by_pgn():
            rules += J1939_TP_RULES  # long parameter groups arrive by BAM or RTS/CTS
        if self.obd is not None:
            self._obd_filter = self.obd.frame_filter()
            rules += self._obd_filter.rules
        self.frame_filter = FrameFilter.of(rules)
        self._make_handler = make_handler
        self.reset_handlers()

    def listen_obd(self, decoder: Any, sink: Callable[..., None]) -> None:
        """Decode the OBD-II requests and answers seen on this bus; samples go to `sink(t, name, value, source)`."""
        self.obd = decoder
        self._obd_sink = sink

    def reset_handlers(self) -> None:
        """Streams started or stopped: build every message's handler afresh on its next frame."""
        self._by_extractor = {}
        self.handlers = {}
        self._messages = {}

    def resolve(self, key: int) -> Any:
        obd = None
        if self._obd_filter is not None and self._obd_filter.matches(key):
            obd = self.handlers[key] = ObdFrames(self.obd, key, self._obd_sink)
        if self.transport.claims(key) and (self.table.lookup(key) is not None or key & EFF_FLAG):
            # a transport frame is never a whole message: reassemble, then decode (issue 17)
            frames = self.handlers[key] = TransportFrames(self, key, obd)
            return frames
        if obd is not None:
            return obd
        handler = self.handlers[key] = self.message_handler(key)
        return handler

    def message_handler(self, key: int) -> MessageHandler | None:
        """The handler of the DBC message with this key (a frame's, or a reassembled message's)."""
        if key in self._messages:
            return self._messages[key]
        extractor = self.table.lookup(key)
        handler = None
        if extractor is not None:
            if id(extractor) in self._by_extractor:
                handler = self._by_extractor[id(extractor)]
            else:
                handler = self._by_extractor[id(extractor)] = self._make_handler(extractor)
        self._messages[key] = handler
        return handler

    def process(self, batch: list) -> None:
        """Hand each frame to its message's handler (made on the first frame of the message)."""
        recorder = self.recorder
        if recorder is not None and recorder.enabled:
            self._process_ready(batch, recorder)
            return
        get = self.handlers.get
        resolve = self.resolve
        decoded = 0
        for t, key, data in batch:
            handler = get(key, False)
            if handler is False:
                handler = resolve(key)
            if handler is not None:
                handler.handle(t, data)
                decoded += 1
        self.stats.frames += len(batch)
        self.stats.decoded += decoded

    def _process_ready(self, batch: list, recorder: CrashRecorder) -> None:
        """`process` while crash capture is on: a watched message's frame at or past the ring's `due`
        (its next tick; any time while a capture runs) goes through `CrashRecorder.frame`.

        One comparison per frame here rather than a call per frame in the handlers (issue 16:
        readiness must cost little).
        """
        get = self.handlers.get
        resolve = self.resolve
        ring = recorder.ring
        frame = recorder.frame
        decoded = 0
        for t, key, data in batch:
            handler = get(key, False)
            if handler is False:
                handler = resolve(key)
            if handler is not None:
                if t >= ring.due and handler.watched:
                    frame(handler, t, data)
                else:
                    handler.handle(t, data)
                decoded += 1
        self.stats.frames += len(batch)
        self.stats.decoded += decoded


class ObdFrames:
    """The handler of one OBD-II identifier on a listened-to bus: frames to the passive decoder."""

    __slots__ = ("decoder", "key", "sink")
    watched = False  # never read by the crash ring at its ticks

    def __init__(self, decoder: Any, key: int, sink: Callable[..., None]):
        self.decoder, self.key, self.sink = decoder, key, sink

    def handle(self, t: float, data: bytes) -> None:
        for sample in self.decoder.feed(t, self.key, data):
            self.sink(*sample)


class TransportFrames:
    """The handler of a transport-protocol identifier: frames to the reassembler, whole messages to the DBC's."""

    __slots__ = ("bus", "key", "obd")
    watched = False  # never read by the crash ring at its ticks

    def __init__(self, bus: BusDispatch, key: int, obd: ObdFrames | None):
        self.bus, self.key, self.obd = bus, key, obd

    def handle(self, t: float, data: bytes) -> None:
        if self.obd is not None:
            self.obd.handle(t, data)
        for when, key, message in self.bus.transport.feed(t, self.key, data):
            handler = self.bus.message_handler(key)
            if handler is None:
                continue
            recorder = self.bus.recorder
            if recorder is not None and recorder.enabled:
                recorder.frame(handler, when, message)
            else:
                handler.handle(when, message)
