"""ISO-TP (ISO 15765-2) reassembly for a listener that only watches the bus.

The agent's own requests go through can-isotp (`carledger.obd.isotp_link`);
this is for frames someone else exchanged (a logger's polling, a replayed
log, an ELM327's printout), where nobody of ours takes part in the flow
control. It rebuilds a payload per sender from a single frame, or a first
frame and its consecutive frames in sequence, and rejects everything else
with a reason: unknown frame types, lengths a frame cannot hold, consecutive
frames out of sequence or without a first frame, receptions that stall.
"""

from __future__ import annotations

__all__ = ["FrameError", "Reassembler"]


class FrameError(ValueError):
    """A frame that cannot be part of a valid ISO-TP message; str() is the reason.

    `kind` names the case for counters: ``malformed`` (a frame ISO-TP does not
    allow), ``without-first`` (a consecutive frame with no reception open),
    ``missing-consecutive`` (a sequence number ahead of the expected one: a
    frame was lost), ``out-of-order`` (a sequence number behind it: repeated
    or swapped), ``stalled`` (the next consecutive frame came too late).
    """

    def __init__(self, reason: str, kind: str = "malformed"):
        super().__init__(reason)
        self.kind = kind


class _Reception:
    __slots__ = ("length", "buffer", "next_seq", "last_t")

    def __init__(self, length: int, first: bytes, t: float):
        self.length = length
        self.buffer = bytearray(first)
        self.next_seq = 1
        self.last_t = t


class Reassembler:
    """Payloads from the frames of any number of senders, each sender (key) reassembled on its own.

    `timeout`: seconds a reception may wait for its next consecutive frame
    (ISO 15765-2 N_Cr is 1 s). `max_length`: longest payload accepted.
    """

    def __init__(self, timeout: float = 1.0, max_length: int = 4095):
        self.timeout = timeout
        self.max_length = max_length
        self._open: dict[int, _Reception] = {}
        self.interrupted = 0  # receptions cut short by a new single or first frame

    def feed(self, t: float, key: int, data: bytes, offset: int = 0) -> bytes | None:
        """The complete payload this frame ends, or None; raises FrameError for a frame to reject.

        `offset`: bytes before the protocol control information (1 for
        extended or mixed addressing, whose first byte is an address).
        """
        if len(data) <= offset:
            raise FrameError(f"frame of {len(data)} bytes carries no ISO-TP header")
        pci = data[offset]
        kind = pci >> 4
        if kind == 0:
            return self._single(key, data, offset, pci & 0x0F)
        if kind == 1:
            return self._first(t, key, data, offset)
        if kind == 2:
            return self._consecutive(t, key, data, offset, pci & 0x0F)
        if kind == 3:
            return None  # flow control: the other direction's business
        raise FrameError(f"unknown ISO-TP frame type {kind:X} (PCI byte {pci:02X})")

    def _single(self, key: int, data: bytes, offset: int, length: int) -> bytes:
        start = offset + 1
        if length == 0:  # CAN FD escape: the length is in the next byte
            if len(data) <= start:
                raise FrameError("single frame with an escaped length but no length byte")
            length, start = data[start], start + 1
            if length == 0:
                raise FrameError("single frame of length 0")
        if length > len(data) - start:
            raise FrameError(f"single frame says {length} bytes but carries {len(data) - start}")
        if self._open.pop(key, None) is not None:
            self.interrupted += 1
        return bytes(data[start:start + length])

    def _first(self, t: float, key: int, data: bytes, offset: int) -> None:
        if len(data) < offset + 2:
            raise FrameError("first frame too short for its length")
        length = ((data[offset] & 0x0F) << 8) | data[offset + 1]
        start = offset + 2
        if length == 0:  # lengths above 4095: 32-bit escape
            if len(data) < offset + 6:
                raise FrameError("first frame with an escaped length but no 32-bit length")
            length, start = int.from_bytes(data[offset + 2:offset + 6], "big"), offset + 6
        if length > self.max_length:
            raise FrameError(f"first frame announces {length} bytes (at most {self.max_length} accepted)")
        if length <= len(data) - start:
            raise FrameError(f"first frame announces {length} bytes, which would fit a single frame")
        if self._open.pop(key, None) is not None:
            self.interrupted += 1
        self._open[key] = _Reception(length, data[start:], t)
        return None

    def _consecutive(self, t: float, key: int, data: bytes, offset: int, seq: int) -> bytes | None:
        rx = self._open.get(key)
        if rx is None:
            raise FrameError(f"consecutive frame {seq:X} without a first frame", "without-first")
        if t - rx.last_t > self.timeout:
            del self._open[key]
            raise FrameError(f"consecutive frame {seq:X} came {t - rx.last_t:.3f} s after the previous one", "stalled")
        if seq != rx.next_seq:
            del self._open[key]
            ahead = (seq - rx.next_seq) & 0x0F
            kind = "missing-consecutive" if ahead < 8 else "out-of-order"
            raise FrameError(f"consecutive frame {seq:X} out of sequence (expected {rx.next_seq:X})", kind)
        rx.buffer += data[offset + 1:]
        rx.next_seq = (rx.next_seq + 1) & 0x0F
        rx.last_t = t
        if len(rx.buffer) >= rx.length:
            del self._open[key]
            return bytes(rx.buffer[:rx.length])
        return None

    def expire(self, t: float) -> list[int]:
        """Drop the receptions whose next frame is overdue at `t`; their keys (each an incomplete message)."""
        late = [key for key, rx in self._open.items() if t - rx.last_t > self.timeout]
        for key in late:
            del self._open[key]
        return late

    def open_count(self) -> int:
        """Receptions under way: bounded by the number of senders fed."""
        return len(self._open)

    def pending(self, key: int) -> bool:
        """Is a multi-frame reception from `key` under way?"""
        return key in self._open
