"""SAE J1939-21 transport protocol: BAM broadcasts and RTS/CTS transfers, reassembled by a listener.

A parameter group of 9 to 1785 bytes is announced on TP.CM (PGN 0xEC00:
BAM 0x20 to everyone, RTS 0x10 to one node, which paces it with CTS 0x11 and
confirms with EndOfMsgAck 0x13, or gives up with Abort 0xFF) and carried in
TP.DT frames (PGN 0xEB00: a sequence number 1..255 and 7 bytes). A session
is one sender and one destination (255 for BAM); at most one per pair is
open, as J1939-21 allows.

We only listen, so nothing here ever answers a CTS. Everything that breaks
a session is an event with a kind, never part of a message: ``malformed``,
``without-announce`` (data with no session open), ``missing-packet`` (a
sequence number ahead of the next), ``out-of-order`` (behind it, outside a
CTS retransmission), ``aborted``, ``interrupted`` (a new announcement
before the last finished), ``incomplete`` (T1/T2 passed without the next
packet: `expire`).
"""

from __future__ import annotations

from dataclasses import dataclass

from carledger.decode.table import EFF_FLAG

__all__ = ["J1939Message", "J1939Reassembler", "TransportError", "pgn_key", "TP_CM", "TP_DT"]

TP_CM = 0xEC  # PDU format of TP.CM
TP_DT = 0xEB  # PDU format of TP.DT
_BAM, _RTS, _CTS, _EOMA, _ABORT = 0x20, 0x10, 0x11, 0x13, 0xFF
_MAX_SIZE = 1785  # 255 packets of 7 bytes
_GLOBAL = 0xFF


class TransportError(ValueError):
    """A TP frame that breaks or cannot start a session; `kind` names the case."""

    def __init__(self, reason: str, kind: str = "malformed"):
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True)
class J1939Message:
    """A reassembled parameter group: its PGN, sender and destination (255: global) and data."""

    pgn: int
    source: int
    destination: int
    data: bytes

    @property
    def key(self) -> int:
        """The frame key a single frame of this PGN would have (priority 6), for decoding by PGN."""
        return pgn_key(self.pgn, self.source, self.destination)


def pgn_key(pgn: int, source: int, destination: int = _GLOBAL) -> int:
    """A 29-bit frame key (bit 31 set) for `pgn` from `source`: PDU1 PGNs carry the destination."""
    pf = (pgn >> 8) & 0xFF
    can_id = (6 << 26) | (pgn << 8) | source
    if pf < 240:
        can_id = (6 << 26) | ((pgn & 0x3FF00) << 8) | (destination << 8) | source
    return can_id | EFF_FLAG


class _Session:
    __slots__ = ("pgn", "size", "packets", "buffer", "next_seq", "last_t", "bam")

    def __init__(self, pgn: int, size: int, packets: int, t: float, bam: bool):
        self.pgn, self.size, self.packets, self.bam = pgn, size, packets, bam
        self.buffer = bytearray()
        self.next_seq = 1
        self.last_t = t


class J1939Reassembler:
    """Messages from the TP.CM and TP.DT frames of any number of senders.

    `timeout`: seconds a session may wait for its next frame (J1939-21 T1 is
    0.75 s between packets, T2 1.25 s after a CTS; the larger is the default).
    """

    def __init__(self, timeout: float = 1.25):
        self.timeout = timeout
        self._open: dict[tuple[int, int], _Session] = {}

    def feed(self, t: float, can_id: int, data: bytes) -> J1939Message | None:
        """The message this frame completes, or None; raises TransportError for a frame that breaks a session."""
        pf = (can_id >> 16) & 0xFF
        destination, source = (can_id >> 8) & 0xFF, can_id & 0xFF
        if pf == TP_CM:
            return self._control(t, source, destination, data)
        if pf == TP_DT:
            return self._data(t, source, destination, data)
        raise TransportError(f"PDU format {pf:02X} is not J1939 TP.CM or TP.DT")

    def _control(self, t: float, source: int, destination: int, data: bytes) -> None:
        if len(data) < 8:
            raise TransportError(f"TP.CM of {len(data)} bytes (needs 8)")
        control = data[0]
        pgn = int.from_bytes(data[5:8], "little")
        if control in (_BAM, _RTS):
            size = int.from_bytes(data[1:3], "little")
            packets = data[3]
            if not 9 <= size <= _MAX_SIZE or packets != -(-size // 7):
                raise TransportError(f"TP.CM announces {size} bytes in {packets} packets")
            if control == _BAM and destination != _GLOBAL:
                raise TransportError(f"BAM to address {destination} (a BAM goes to 255)")
            interrupted = self._open.pop((source, destination), None) is not None
            self._open[(source, destination)] = _Session(pgn, size, packets, t, control == _BAM)
            if interrupted:
                raise TransportError(f"a new TP.CM from {source} to {destination} before the last transfer ended",
                                     "interrupted")
            return None
        if control == _CTS:  # from the receiver: the session is the other way round
            session = self._open.get((destination, source))
            if session is not None and not session.bam and data[1]:
                next_seq = data[2]
                if not 1 <= next_seq <= session.packets or next_seq > session.next_seq:
                    del self._open[(destination, source)]
                    raise TransportError(f"CTS asks for packet {next_seq} of {session.packets}", "malformed")
                session.next_seq = next_seq  # a retransmission request rewinds
                del session.buffer[7 * (next_seq - 1):]
                session.last_t = t
            return None
        if control == _ABORT:
            for key in ((source, destination), (destination, source)):
                session = self._open.get(key)
                if session is not None and session.pgn == pgn:
                    del self._open[key]
                    raise TransportError(f"transfer of PGN {pgn} aborted (reason {data[1]})", "aborted")
            return None
        if control == _EOMA:
            return None  # the receiver's receipt: the message was complete at its last packet
        raise TransportError(f"unknown TP.CM control byte {control:02X}")

    def _data(self, t: float, source: int, destination: int, data: bytes) -> J1939Message | None:
        key = (source, destination)
        session = self._open.get(key)
        if len(data) < 2:
            raise TransportError(f"TP.DT of {len(data)} bytes")
        seq = data[0]
        if session is None:
            raise TransportError(f"TP.DT packet {seq} from {source} without a TP.CM", "without-announce")
        if t - session.last_t > self.timeout:
            del self._open[key]
            raise TransportError(f"TP.DT packet {seq} came {t - session.last_t:.3f} s after the previous frame",
                                 "incomplete")
        if seq != session.next_seq:
            del self._open[key]
            kind = "missing-packet" if seq > session.next_seq else "out-of-order"
            raise TransportError(f"TP.DT packet {seq} out of sequence (expected {session.next_seq})", kind)
        session.buffer += data[1:8]
        session.next_seq += 1
        session.last_t = t
        if session.next_seq > session.packets:
            del self._open[key]
            if len(session.buffer) < session.size:
                raise TransportError(f"TP.DT packets carried {len(session.buffer)} of {session.size} bytes")
            return J1939Message(session.pgn, source, destination, bytes(session.buffer[:session.size]))
        return None

    def expire(self, t: float) -> list[tuple[int, int]]:
        """Drop the sessions whose next frame is overdue at `t`; their (source, destination) pairs."""
        late = [key for key, s in self._open.items() if t - s.last_t > self.timeout]
        for key in late:
            del self._open[key]
        return late

    def open_count(self) -> int:
        return len(self._open)
