"""One bus's transport-protocol frames in, whole messages out, every failure counted and reported.

`TransportDecoder.claims(key)` says which frame keys belong to a transport
protocol; the pipeline hands those frames here and never to the DBC decoder
directly. `feed(t, key, data)` returns the messages a frame completes as
``(t, key, data)``, the shape of a frame, for the DBC message of that key:

- ISO-TP (ISO 15765-2), on 0x7DF and 0x7E0-0x7EF, every 29-bit 0x18DAxxyy
  and 0x18DBxxyy, and the configured (request, response) pairs: one
  reception per identifier; a message's data is its length's low byte
  followed by the payload (``3E 62 01 01 ...``), the CSS Electronics
  convention, so the byte positions of a DBC written for the reassembled
  answer are those of one long single frame;
- J1939 TP (PGN 0xEC00 and 0xEB00, any 29-bit identifier): the reassembled
  parameter group, keyed as a priority-6 frame of its PGN from its sender,
  which the decode table matches by PGN.

Flow control frames carry nothing and are dropped. Why trusting these frames
cannot forge data: a message is only ever the exact bytes its frames carried,
in the order ISO 15765-2 or J1939-21 fixes; a frame that does not fit (a gap,
a repeat, a stall, a length it cannot hold) drops the whole reception and is
an event, so what reaches the decoder is what the ECU sent or nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from carledger.decode.table import EFF_FLAG
from carledger.obd.reassembly import FrameError, Reassembler
from carledger.transport.j1939 import TP_CM, TP_DT, J1939Reassembler, TransportError

__all__ = ["TransportDecoder", "TransportStats", "is_isotp_key", "ISOTP_RULES", "J1939_TP_RULES"]

log = logging.getLogger(__name__)

EventSink = Callable[[str, dict], None]
Message = tuple[float, int, bytes]

ISOTP_RULES = ((0x7DF, 0x7FF, False), (0x7E0, 0x7F0, False), (0x18DA0000, 0x1FFF0000, True), (0x18DB0000, 0x1FFF0000, True))
J1939_TP_RULES = ((TP_CM << 16, 0xFF0000, True), (TP_DT << 16, 0xFF0000, True))
_MAX_REPORTS = 10  # per kind; later ones are counted only
_EXPIRE_EVERY = 0.5  # seconds of frame time between sweeps for receptions that never completed


def is_isotp_key(key: int) -> bool:
    """Is `key` one of the standard diagnostic identifiers (ISO 15765-4, 11-bit or 29-bit)?"""
    if key & EFF_FLAG:
        return (key & 0x1FFF0000) in (0x18DA0000, 0x18DB0000)
    return key == 0x7DF or 0x7E0 <= key <= 0x7EF


def _name(key: int) -> str:
    return f"{key & 0x1FFFFFFF:08X}" if key & EFF_FLAG else f"{key:03X}"


@dataclass
class TransportStats:
    """Messages reassembled, and every event by kind (missing-consecutive, incomplete ...)."""

    messages: int = 0
    events: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"messages": self.messages, **{k: v for k, v in sorted(self.events.items())}}


class TransportDecoder:
    """Reassembly for one bus. `pairs`: extra (request, response) ISO-TP identifiers (bit 31 for 29-bit)."""

    def __init__(self, pairs: Iterable[tuple[int, int]] = (), on_event: EventSink | None = None,
                 *, isotp_timeout: float = 1.0, j1939_timeout: float = 1.25):
        self.pairs = tuple(pairs)
        self._extra = frozenset(k for pair in self.pairs for k in pair)
        self.on_event = on_event
        self.stats = TransportStats()
        self._isotp = Reassembler(timeout=isotp_timeout)
        self._j1939 = J1939Reassembler(timeout=j1939_timeout)
        self._last_key: int | None = None
        self._next_expire = float("-inf")

    def claims(self, key: int) -> bool:
        """Do frames of `key` belong to a transport protocol (and so never to per-frame decoding)?"""
        return key in self._extra or is_isotp_key(key) or self._is_j1939_tp(key)

    @staticmethod
    def _is_j1939_tp(key: int) -> bool:
        return bool(key & EFF_FLAG) and ((key >> 16) & 0xFF) in (TP_CM, TP_DT)

    def rules(self) -> list[tuple[int, int, bool]]:
        """Frame filter rules for the configured pairs' identifiers (the standard ones come with the DBC's keys)."""
        return [(k & 0x1FFFFFFF, 0x1FFFFFFF if k & EFF_FLAG else 0x7FF, bool(k & EFF_FLAG)) for k in sorted(self._extra)]

    def feed(self, t: float, key: int, data: bytes) -> list[Message]:
        """The messages this frame completes (usually none or one); failures become events, never values."""
        out: list[Message] = []
        if t >= self._next_expire:
            self._next_expire = t + _EXPIRE_EVERY
            self.expire(t)
        if self._is_j1939_tp(key) and key not in self._extra:
            try:
                message = self._j1939.feed(t, key & 0x1FFFFFFF, data)
            except TransportError as exc:
                self._event(exc.kind, t, key, data, str(exc))
                return out
            if message is not None:
                self.stats.messages += 1
                out.append((t, message.key, message.data))
            return out
        if data[:1] and data[0] >> 4 == 3:
            return out  # flow control: nothing of the message
        if self._last_key is not None and self._last_key != key and self._isotp.pending(self._last_key):
            # another sender while one is mid-message: each is its own reception, so both still complete
            self._event("interleaved", t, key, data, f"a frame of {_name(key)} while a message of {_name(self._last_key)} is open")
        self._last_key = key
        before = self._isotp.interrupted
        try:
            payload = self._isotp.feed(t, key, data)
        except FrameError as exc:
            self._event(exc.kind, t, key, data, str(exc))
            return out
        finally:
            if self._isotp.interrupted != before:
                self._event("interrupted", t, key, data, "a new message began before the last one completed")
        if payload is not None:
            self.stats.messages += 1
            out.append((t, key, bytes((len(payload) & 0xFF,)) + payload))
        return out

    def expire(self, t: float) -> None:
        """Receptions that stopped mid-message (their ECU never sent the rest): an event each."""
        if not self.open_receptions():  # the usual case, at every checkpoint
            return
        for key in self._isotp.expire(t):
            self._event("incomplete", t, key, b"", "the message never completed")
        for source, destination in self._j1939.expire(t):
            self._event("incomplete", t, None, b"", f"J1939 transfer from {source} to {destination} never completed")

    def open_receptions(self) -> int:
        return self._isotp.open_count() + self._j1939.open_count()

    def _count(self, kind: str) -> int:
        events = self.stats.events
        events[kind] = count = events.get(kind, 0) + 1
        return count

    def _event(self, kind: str, t: float, key: int | None, data: bytes, reason: str) -> None:
        count = self._count(kind)
        if count > _MAX_REPORTS:
            return
        ident = "" if key is None else _name(key)
        detail = {"kind": kind, "id": ident, "reason": reason, "data": data.hex(), "t": t}
        if count == _MAX_REPORTS:
            detail["more"] = "counted from here on, not reported one by one"
        log.warning("transport frame on %s: %s (%s)", ident or "J1939", reason, kind)
        if self.on_event is not None:
            self.on_event("transport-error", detail)
