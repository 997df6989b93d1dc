"""OBD-II answers decoded from frames seen on a bus, without sending anything.

For logs of someone else's polling (a CANedge, a scan tool) and for buses
where another tester polls: the ECUs' answers carry their service and PID, so
the requests are not needed. `PassiveDecoder.feed(t, key, data)` takes every
frame of the bus and returns the samples an answer completes, reassembling
multi-frame answers (VIN, long DTC lists) as far as that needs.

Answers come from 0x7E8-0x7EF (11-bit) and 0x18DAF1xx (29-bit); requests
(0x7DF, 0x7E0-0x7E7, 0x18DB33F1, 0x18DAxxF1) and every other identifier are
ignored. Malformed frames and answers are counted and the first few reported
through `on_event("obd-malformed", ...)`; they never raise.
"""

from __future__ import annotations

import logging
from typing import Callable

from carledger.obd.messages import READ_ONLY_SERVICES, ResponseError, parse_response
from carledger.obd.pids import BITMAP_PIDS, PIDS
from carledger.obd.reassembly import FrameError, Reassembler
from carledger.sources.frame import EFF_FLAG, FrameFilter

__all__ = ["PassiveDecoder", "RESPONSE_FILTER", "is_response", "ecu_name"]

log = logging.getLogger(__name__)

Sample = tuple[float, str, "int | float | str", str]
EventSink = Callable[[str, dict], None]

_ANSWER_KEYS = frozenset(range(0x7E8, 0x7F0))
# PID -> (data length, [(sample name, source, decode)]) for the answers decoded without parse_response
_SINGLE_PID = {
    p.pid: (p.length, [(s.sample_name, p.source, s.decode) for s in p.signals])
    for p in PIDS.values() if p.pid not in BITMAP_PIDS
}

RESPONSE_FILTER = FrameFilter.of([(0x7E8, 0x7F8, False), (0x18DAF100, 0x1FFFFF00, True)])
_MAX_REPORTS = 10


def _is_obd_answer(payload: bytes) -> bool:
    """Is this payload an answer to one of the OBD-II services (positive, or 7F with an OBD service)?"""
    if payload[:1] == b"\x7f":
        return len(payload) < 2 or payload[1] in READ_ONLY_SERVICES
    return bool(payload) and payload[0] - 0x40 in READ_ONLY_SERVICES


def is_response(key: int) -> bool:
    """Is `key` an ECU's OBD-II answer identifier?"""
    if key & EFF_FLAG:
        return (key & 0x1FFFFF00) == 0x18DAF100
    return 0x7E8 <= key <= 0x7EF


def ecu_name(key: int) -> str:
    """An ECU as events name it: its answer identifier in hex (``7E8``, ``18DAF110``)."""
    return f"{key & 0x1FFFFFFF:08X}" if key & EFF_FLAG else f"{key:03X}"


class PassiveDecoder:
    """Samples ``(t, name, value, source)`` from the OBD-II answers among a bus's frames."""

    def __init__(self, on_event: EventSink | None = None):
        self.on_event = on_event
        self._reassembler = Reassembler()
        self.answers = 0
        self.negative = 0
        self.malformed = 0

    @staticmethod
    def frame_filter() -> FrameFilter:
        """The identifiers worth reading for this decoder (for kernel filters)."""
        return RESPONSE_FILTER

    def feed(self, t: float, key: int, data: bytes) -> list[Sample]:
        if key not in _ANSWER_KEYS and not (key & EFF_FLAG and (key & 0x1FFFFF00) == 0x18DAF100):
            return []
        pci = data[0] if data else 0
        if 0 < pci < 8 and len(data) > pci and pci >= 3 and data[1] == 0x41 and not self._reassembler.pending(key):
            fast = _SINGLE_PID.get(data[2])  # the common case: one PID in a single frame
            if fast is not None and fast[0] == pci - 2:
                self.answers += 1
                record = data[3:1 + pci]
                return [(t, name, decode(record), source) for name, source, decode in fast[1]]
        try:
            payload = self._reassembler.feed(t, key, data)
            if payload is None or not _is_obd_answer(payload):
                return []  # UDS and other diagnostics on the same identifiers: the DBC decoder's (carledger.transport)
            answer = parse_response(payload)
        except (FrameError, ResponseError) as exc:
            self._malformed(t, key, data, str(exc))
            return []
        self.answers += 1
        if answer.negative is not None:
            self.negative += 1
            return []
        return [(t, name, value, source) for name, value, source in answer.samples]

    def _malformed(self, t: float, key: int, data: bytes, reason: str) -> None:
        self.malformed += 1
        if self.malformed <= _MAX_REPORTS:
            log.warning("OBD answer from %s rejected: %s (%s)", ecu_name(key), reason, data.hex())
            if self.on_event:
                self.on_event("obd-malformed", {"ecu": ecu_name(key), "reason": reason, "data": data.hex(), "t": t})
        elif self.malformed == _MAX_REPORTS + 1:
            log.warning("more malformed OBD answers; counting them without reporting each")
