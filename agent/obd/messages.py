"""OBD-II service messages: the requests the agent may send, and what an answer means.

The agent is read-only towards the car (DESIGN.md, contract 7): `request()`
builds only services 01 (current data), 02 (freeze frame data), 03 (stored
DTCs), 07 (pending DTCs), 09 (vehicle information) and 0A (permanent DTCs). Service 04, which clears
DTCs, and everything else cannot be built here.

An answer is the ISO-TP payload an ECU sends back: ``0x40 + service`` and the
data for a positive answer, ``7F service code`` for a negative one
(ISO 14229 response codes: 0x12 not supported or bad format, 0x31 out of
range, 0x78 response pending ...). `parse_response` turns a payload into an
`Answer` with its samples ``(name, value, source)``, or raises
`ResponseError` with the reason it cannot be one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from carledger.obd.dtc import decode_dtc_list
from carledger.obd.pids import BITMAP_PIDS, PIDS, PidError, decode_pid, supported_from_bitmap

__all__ = [
    "Answer", "FREEZE_DTC_PID", "FREEZE_PREFIX", "NRC_NAMES", "READ_ONLY_SERVICES", "RESPONSE_PENDING", "ResponseError",
    "DTC_SERVICES", "VIN", "parse_response", "request",
]

READ_ONLY_SERVICES = frozenset({0x01, 0x02, 0x03, 0x07, 0x09, 0x0A})
FREEZE_DTC_PID = 0x02  # service 02 PID 02: the DTC that stored the freeze frame
FREEZE_PREFIX = "OBD.FREEZE."  # sample names of freeze frame values: OBD.FREEZE.SPEED, OBD.FREEZE.DTC
RESPONSE_PENDING = 0x78
NEGATIVE = 0x7F

NRC_NAMES = {
    0x10: "generalReject",
    0x11: "serviceNotSupported",
    0x12: "subFunctionNotSupported-invalidFormat",
    0x21: "busyRepeatRequest",
    0x22: "conditionsNotCorrect",
    0x31: "requestOutOfRange",
    0x78: "responsePending",
}

# service -> (sample name, source) of its DTC list
DTC_SERVICES = {
    0x03: ("Vehicle.OBD.DTCList", "OBD.03"),
    0x07: ("OBD.PENDING_DTCS", "OBD.07"),
    0x0A: ("OBD.PERMANENT_DTCS", "OBD.0A"),
}
VIN = ("Vehicle.VehicleIdentification.VIN", "OBD.09.02")
_VIN_CHARS = frozenset("0123456789ABCDEFGHJKLMNPRSTUVWXYZ")

Sample = tuple[str, "int | float | str", str]  # (name, value, source); the caller adds the time


class ResponseError(ValueError):
    """A payload that is not a valid OBD answer; str() is the reason."""


@dataclass
class Answer:
    """One decoded answer. `service` is the requested service, `pid` the first PID or info type."""

    service: int
    pid: int | None = None
    negative: int | None = None  # the response code of a negative answer
    samples: list[Sample] = field(default_factory=list)
    supported: set[int] | None = None  # a supported-PID (or info type) bitmap's content
    dtcs: list[str] | None = None

    @property
    def pending(self) -> bool:
        return self.negative == RESPONSE_PENDING


def request(service: int, *pids: int) -> bytes:
    """The payload of a request; only read-only services can be built."""
    if service not in READ_ONLY_SERVICES:
        raise ValueError(f"service {service:02X} is not a read-only OBD service; the agent never sends it")
    if service == 0x01 and not 1 <= len(pids) <= 6:
        raise ValueError("service 01 takes 1 to 6 PIDs")
    if service == 0x02 and len(pids) != 2:
        raise ValueError("service 02 takes a PID and a frame number")
    if service == 0x09 and len(pids) != 1:
        raise ValueError("service 09 takes one info type")
    if service in DTC_SERVICES and pids:
        raise ValueError(f"service {service:02X} takes no PID")
    if any(not 0 <= p <= 0xFF for p in pids):
        raise ValueError("a PID is one byte")
    return bytes((service, *pids))


def parse_response(payload: bytes) -> Answer:
    """What an ECU's answer says; raises ResponseError with the reason when it says nothing valid."""
    if not payload:
        raise ResponseError("empty answer")
    sid = payload[0]
    if sid == NEGATIVE:
        if len(payload) < 3:
            raise ResponseError(f"negative answer of {len(payload)} bytes (needs 3: 7F service code)")
        return Answer(payload[1], negative=payload[2])
    service = sid - 0x40
    if service == 0x01:
        return _current_data(payload[1:])
    if service == 0x02:
        return _freeze_frame(payload[1:])
    if service in DTC_SERVICES:
        return _dtcs(service, payload[1:])
    if service == 0x09:
        return _vehicle_info(payload[1:])
    raise ResponseError(f"service byte {sid:02X} is not an answer to a read-only OBD request")


def _current_data(data: bytes) -> Answer:
    if not data:
        raise ResponseError("service 01 answer without a PID")
    answer = Answer(0x01, pid=data[0])
    i = 0
    while i < len(data):
        pid = data[i]
        entry = PIDS.get(pid)
        if entry is None:
            raise ResponseError(f"PID {pid:02X} at byte {i + 1} is not a standard PID this decoder knows")
        record = data[i + 1:i + 1 + entry.length]
        try:
            if pid in BITMAP_PIDS:
                answer.supported = (answer.supported or set()) | supported_from_bitmap(pid, record)
            else:
                answer.samples.extend((s.sample_name, v, entry.source) for s, v in decode_pid(pid, record))
        except PidError as exc:
            raise ResponseError(str(exc)) from None
        i += 1 + entry.length
    return answer


def _freeze_frame(data: bytes) -> Answer:
    """``42 PID frame record``: one PID of the freeze frame, as service 01 would give it, under OBD.FREEZE.<NAME>."""
    if len(data) < 2:
        raise ResponseError("service 02 answer without a PID and a frame number")
    pid, record = data[0], data[2:]
    answer = Answer(0x02, pid=pid)
    source = f"OBD.02.{pid:02X}"
    if pid == FREEZE_DTC_PID:
        if len(record) < 2:
            raise ResponseError("service 02 PID 02 answer without its DTC")
        codes = decode_dtc_list(record[:2])
        answer.dtcs = codes
        answer.samples.append((FREEZE_PREFIX + "DTC", codes[0] if codes else "", source))
        return answer
    entry = PIDS.get(pid)
    if entry is None:
        raise ResponseError(f"service 02 PID {pid:02X} is not a standard PID this decoder knows")
    try:
        if pid in BITMAP_PIDS:
            answer.supported = supported_from_bitmap(pid, record)
        else:
            answer.samples.extend((FREEZE_PREFIX + s.name, v, source) for s, v in decode_pid(pid, record[:entry.length]))
    except PidError as exc:
        raise ResponseError(str(exc)) from None
    return answer


def _dtcs(service: int, data: bytes) -> Answer:
    if not data:
        raise ResponseError(f"service {service:02X} answer without a DTC count")
    count = data[0]
    if len(data) - 1 < 2 * count:
        raise ResponseError(f"service {service:02X} answer says {count} DTCs but carries {len(data) - 1} bytes")
    codes = decode_dtc_list(data[1:1 + 2 * count])
    name, source = DTC_SERVICES[service]
    return Answer(service, dtcs=codes, samples=[(name, ",".join(codes), source)])


def _vehicle_info(data: bytes) -> Answer:
    if not data:
        raise ResponseError("service 09 answer without an info type")
    info = data[0]
    answer = Answer(0x09, pid=info)
    if info in BITMAP_PIDS:
        try:
            answer.supported = supported_from_bitmap(info, data[1:])
        except PidError as exc:
            raise ResponseError(str(exc)) from None
    elif info == 0x02:
        text = data[2:].replace(b"\x00", b"").decode("ascii", "replace").strip().upper()
        if len(text) != 17 or not set(text) <= _VIN_CHARS:
            raise ResponseError(f"VIN {text!r} is not 17 VIN characters")
        answer.samples.append((VIN[0], text, VIN[1]))
    return answer
