"""UDS ReadDataByIdentifier (ISO 14229 service 0x22): which DIDs a vehicle has, and polling them read-only.

The DID table comes from the bus's DBC files, written in the CSS Electronics
convention (docs/uds.md): a message whose ID is the ECU's response ID,
multiplexed on the service (0x62, byte 1) and the DID (bytes 2-3). Every
signal under a DID of such a message is a signal that reading that DID
yields; the request goes to the ECU's request ID (the response ID - 8 for
0x7E8-0x7EF, 0x18DAxxF1 for 0x18DAF1xx, else a configured pair).

`UdsPoller` sends only ``22 hi lo`` requests (and the flow control of their
answers: can-isotp), for the DIDs the owner's policy takes, at the interval
it asks for, never faster than `max_rate`. It decodes nothing itself: the
answers are on the bus, and the agent's passive reassembly
(carledger.transport) decodes them like a logger's polling, so a polled
value and a recorded one go the same way. Negative answers (7F 22 code),
response pending (7F 22 78) and silence are counted and reported once per
DID; "not supported" codes drop the DID.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import can

from carledger.obd.isotp_link import IsoTpLink
from carledger.obd.messages import NRC_NAMES, RESPONSE_PENDING
from carledger.obd.passive import ecu_name
from carledger.obd.poller import BusOrFactory, BusPoller
from carledger.obd.schedule import Backoff, PollSchedule, RateLimit
from carledger.obd.session import ClosedLink, Link, PollStats
from carledger.obd.uds_config import UdsConfig
from carledger.sources.frame import EFF_FLAG

__all__ = ["DidTable", "UdsPoller", "UdsStats", "read_request", "did_table"]

log = logging.getLogger(__name__)

READ_DATA_BY_IDENTIFIER = 0x22
_POSITIVE = 0x62
_DROP_CODES = frozenset({0x11, 0x12, 0x13, 0x31, 0x33})  # not supported, bad length, out of range, secured
Item = tuple[int, int]  # (response key, DID)
EventSink = Callable[[str, dict], None]
AnswerSink = Callable[[float, int, bytes], None]
DidTable = dict[Item, list[str]]  # (response key, DID) -> "Message.Signal" it yields


def read_request(did: int) -> bytes:
    """The only request this module builds: ReadDataByIdentifier of one DID."""
    if not 0 <= did <= 0xFFFF:
        raise ValueError(f"a DID is two bytes, not {did!r}")
    return bytes((READ_DATA_BY_IDENTIFIER, did >> 8, did & 0xFF))


def _root(message: Any, signal: Any) -> tuple[Any, list[int]]:
    """The chain of multiplexer values above `signal`: (top multiplexer signal, [its value, ...])."""
    values: list[int] = []
    while signal.multiplexer_signal is not None:
        values.insert(0, signal.multiplexer_ids)
        signal = message.get_signal_by_name(signal.multiplexer_signal)
    return signal, values


def did_table(databases: Iterable[Any]) -> DidTable:
    """(response key, DID) -> signals, from every DBC message multiplexed on service 0x62 then a DID."""
    out: DidTable = {}
    for db in databases:
        for message in getattr(db, "database", db).messages:
            key = message.frame_id | EFF_FLAG if message.is_extended_frame else message.frame_id
            for signal in message.signals:
                top, chain = _root(message, signal)
                if len(chain) != 2 or _POSITIVE not in chain[0] or top.length != 8:
                    continue
                for did in chain[1]:
                    out.setdefault((key, did), []).append(f"{message.name}.{signal.name}")
    return out


def dids_to_poll(table: DidTable, interval: Callable[[str], float | None]) -> dict[Item, float]:
    """The DIDs whose signals some stream takes: `interval("Message.Signal")` is its interval, None if
    nobody takes it; a DID is read at the shortest interval of its signals."""
    out: dict[Item, float] = {}
    for item, signals in table.items():
        for source in signals:
            seconds = interval(source)
            if seconds is not None:
                out[item] = min(seconds, out.get(item, seconds))
    return out


@dataclass
class UdsStats(PollStats):
    dropped: int = 0  # DIDs no longer asked for after a "not supported" answer


class UdsSession:
    """Scheduled ReadDataByIdentifier over one `Link`; `run(stop)` until stopped (raises LinkError)."""

    def __init__(self, link: Link, config: UdsConfig, on_event: EventSink | None = None,
                 on_answer: AnswerSink | None = None, *, clock: Callable[[], float] = time.monotonic):
        self.link, self.config, self.clock = link, config, clock
        self.on_event = on_event or (lambda kind, detail: None)
        self.on_answer = on_answer
        self.stats = UdsStats()
        self._schedule = PollSchedule()
        self._limit = RateLimit(config.max_rate)
        self._backoff = Backoff(*config.backoff)
        self._silent_run = 0
        self._reported: set[tuple] = set()
        self._lock = threading.Lock()
        self._new: dict[Item, float] | None = None
        self._dropped: set[Item] = set()

    def set_dids(self, items: Mapping[Item, float]) -> None:
        """Read these (response key, DID) every so many seconds from now on; safe from any thread."""
        with self._lock:
            self._new = dict(items)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self._lock:
                new, self._new = self._new, None
            if new is not None:
                self._schedule.replace([(i, s) for i, s in new.items() if self._addressable(i)], self.clock())
            entry = self._schedule.next()
            if entry is None:
                self.link.idle(0.2, stop)
                continue
            item, due = entry
            wait = due - self.clock()
            if wait > 0:
                self.link.idle(min(wait, 0.2), stop)
                continue
            self._read(item, stop)
            self._schedule.done(item, self.clock())
            if self._silent_run >= self.config.silent_after:
                self._silent_run = 0
                self.on_event("ecu-silent", {"unanswered": self.config.silent_after, "retry": "with back-off"})
                if self.link.idle(self._backoff.delay(), stop):
                    return

    def _addressable(self, item: Item) -> bool:
        """Not dropped, and its ECU's request identifier known (a standard one, or a configured pair)."""
        if item in self._dropped:
            return False
        if self.config.request_for(item[0]) is None:
            self._report(("unaddressable", item[0]), "uds-unaddressable", {
                "ecu": ecu_name(item[0]), "did": f"{item[1]:04X}",
                "reason": "no request identifier: add [request, response] to [bus.uds] pairs"})
            return False
        return True

    def _read(self, item: Item, stop: threading.Event) -> None:
        key, did = item
        while (wait := self._limit.wait(self.clock())) > 0:
            if self.link.idle(wait, stop):
                return
        self._limit.sent(self.clock())
        self.stats.requests += 1
        request = read_request(did)
        raw = self.link.exchange(request, key, {key}, self.config.timeout, self.config.pending_timeout, stop)
        if stop.is_set():
            return
        final = False
        for t, sender, data in raw:
            if data[:1] == b"\x7f" and len(data) >= 3 and data[1] == READ_DATA_BY_IDENTIFIER:
                if data[2] == RESPONSE_PENDING:
                    self.stats.pending += 1
                    continue
                final = True
                self._negative(item, data[2])
            elif data[:3] == bytes((_POSITIVE,)) + request[1:]:
                final = True
                self.stats.answers += 1
                if self.on_answer is not None:
                    self.on_answer(t, sender, data)
            else:
                self.stats.malformed += 1  # another service's answer, or an answer to another DID
                self._report(("malformed", item), "malformed-response",
                             {"ecu": ecu_name(key), "did": f"{did:04X}", "data": data[:16].hex()})
        if final:
            self._silent_run = 0
            self._backoff.reset()
            self._reported.discard(("timeout", item))
        else:
            self.stats.timeouts += 1
            self._silent_run += 1
            self._report(("timeout", item), "timeout", {"ecu": ecu_name(key), "did": f"{did:04X}"})

    def _negative(self, item: Item, code: int) -> None:
        self.stats.negative += 1
        drop = code in _DROP_CODES
        self._report(("negative", item, code), "negative-response", {
            "ecu": ecu_name(item[0]), "did": f"{item[1]:04X}", "code": code,
            "name": NRC_NAMES.get(code, "unknown"), "action": "dropped" if drop else "kept",
        })
        if drop:
            self.stats.dropped += 1
            self._dropped.add(item)
            self._schedule.remove(item)

    def _report(self, key: tuple, kind: str, detail: dict) -> None:
        if key not in self._reported:
            self._reported.add(key)
            log.info("UDS %s: %s", kind, detail)
            self.on_event(kind, detail)


class UdsPoller(BusPoller):
    """ReadDataByIdentifier polling on one bus, in its own thread with its own bus handle (`run(stop)`).

    Transmits only 0x22 requests and ISO-TP flow control (counted: `stats["frames_sent"]`).
    """

    what = "UDS polling"

    def __init__(self, bus: BusOrFactory, config: UdsConfig, on_event: EventSink | None = None,
                 on_answer: AnswerSink | None = None):
        super().__init__(bus, config.backoff, on_event)
        self.config = config
        self.session = UdsSession(ClosedLink("the bus is not open"), config, self.on_event, on_answer)

    def set_dids(self, items: Mapping[Item, float]) -> None:
        """Read these (response key, DID) every so many seconds from now on; safe from any thread."""
        self.session.set_dids(items)

    @property
    def stats(self) -> dict[str, int]:
        out = self.session.stats.as_dict()
        out["frames_sent"] = self.frames_sent
        return out

    def _link(self, bus: can.BusABC) -> IsoTpLink:
        return IsoTpLink(bus, self.config.id_bits, self.config.pairs)
