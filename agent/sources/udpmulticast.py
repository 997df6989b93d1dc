"""Reading python-can's `udp_multicast` bus socket directly, in batches.

python-can reads this bus a datagram at a time: a `select`, a `recvmsg`, a
msgpack map unpacked into a `Message` (checked), its software filter, and
for the agent a tuple made of the `Message` again. Measured at the RAV4
log's rate, that is about 12 µs of CPU per frame, three times what the agent
spends decoding and recording it (docs/performance.md, "Real time").

`DatagramReader` reads the same socket the bus opened, after one `select`,
taking everything queued (`receive.QueuedReceiver`: many datagrams per
system call), and gives what python-can would have given, field for field:

- the time is the kernel's receive time (SO_TIMESTAMPNS), as python-can's;
- the bus's filters (`bus.filters`, changed by `set_filters`) are applied as
  `BusABC._matches_filters` applies them, error and remote frames included;
- a datagram that is not a plain classic data frame (error, remote, CAN FD,
  odd fields) goes through python-can's own `Message(check=True, ...)`, so
  what it accepts, rejects (`CanOperationError`) or drops (CAN FD on a bus
  opened with `fd=False`) is python-can's decision;
- it also counts what the kernel dropped for a full receive buffer
  (SO_RXQ_OVFL), which python-can does not offer.

A bus this does not recognise (another python-can version's internals, no
kernel timestamps) is read through python-can as before (`reader_for`
returns None).
"""

from __future__ import annotations

import socket
from typing import Any

from carledger.sources.canerror import CAN_ERR_FLAG
from carledger.sources.frame import EFF_FLAG, Frame
from carledger.sources.receive import SO_RXQ_OVFL, SO_TIMESTAMPNS, TIMESPEC, QueuedReceiver, Received
from carledger.sources.socketcan import ErrorFrameSink, set_receive_buffer

# the fields python-can's udp_multicast `pack_message` writes; anything else takes python-can's own path
_PLAIN = (False, False, False, False, False)  # remote, error, FD, bitrate switch, error state indicator
# How pack_message lays out a classic data frame: the map and its first key, the time as a float64, the
# identifier's fields (`arbitration_id` to `dlc`: the header), the payload, the three flags all False.
_HEAD = b"\x8b\xa9timestamp\xcb"
_HEADER_AT = len(_HEAD) + 8
_DATA = b"\xa4data\xc4"  # the key `data` and a bin 8 of the payload's length
_TAIL = b"\xa5is_fd\xc2\xaebitrate_switch\xc2\xb5error_state_indicator\xc2"
_HEADERS = 4096  # headers remembered at most: one per identifier (and channel) a bus carries


def reader_for(bus: Any, receive_buffer: int) -> "DatagramReader | None":
    """A direct reader of a python-can `UdpMulticastBus`, or None when this bus is not one it can read."""
    multicast = getattr(bus, "_multicast", None)
    sock = getattr(multicast, "_socket", None)
    if type(bus).__name__ != "UdpMulticastBus" or not isinstance(sock, socket.socket):
        return None
    if not getattr(multicast, "timestamp_nanosecond", False):  # python-can falls back to SIOCGSTAMP: leave it to it
        return None
    try:
        from can.interfaces.udp_multicast.utils import msgpack
    except ImportError:
        return None
    if msgpack is None or not hasattr(bus, "_matches_filters"):
        return None
    return DatagramReader(bus, sock, msgpack.unpackb, getattr(multicast, "max_buffer", 4096), receive_buffer)


class DatagramReader:
    """Frames from a `udp_multicast` bus's socket, in batches; error frames go to `on_error_frame`."""

    def __init__(self, bus: Any, sock: socket.socket, unpackb: Any, max_buffer: int, receive_buffer: int):
        from can import CanProtocol

        self.bus = bus
        self._unpackb = unpackb
        self._fd = getattr(bus, "_can_protocol", CanProtocol.CAN_FD) is CanProtocol.CAN_FD
        self.receive_buffer = set_receive_buffer(sock, receive_buffer) if receive_buffer else 0
        self.hardware_timestamps = 0  # never: the kernel stamps datagrams as they arrive
        self._failure: Exception | None = None  # raised by the next read, after the frames read before it
        self._pending: list[Received] = []  # received after a failing datagram: the read after
        self._filters: Any = object()  # the bus's filters the compiled ones below were made of
        self._exact: frozenset[int] | None = None  # keys the filters take, when every mask is a full one
        # header bytes -> (key, length) of datagrams that unpacked as plain classic frames (`_remember`)
        self._headers: dict[bytes, tuple[int, int]] = {}
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        except OSError:
            pass
        self._receiver = QueuedReceiver(sock, max_buffer, SO_TIMESTAMPNS, TIMESPEC)

    @property
    def dropped(self) -> int:
        """Datagrams the kernel dropped for a full receive buffer (since the socket opened)."""
        return self._receiver.dropped

    def _compile(self, filters: Any) -> None:
        """The bus's filters as a set of keys when each names one identifier; else python-can decides per frame."""
        self._filters = filters
        self._exact = None
        if filters is None:
            return
        keys = set()
        for rule in filters:
            extended = rule.get("extended")
            mask = rule["can_mask"]
            if extended is None or mask != (0x1FFFFFFF if extended else 0x7FF):
                return
            keys.add((rule["can_id"] & mask) | (EFF_FLAG if extended else 0))
        self._exact = frozenset(keys)

    def read(self, timeout: float, max_frames: int, on_error_frame: ErrorFrameSink) -> list[Frame]:
        """Waits up to `timeout` for a datagram, then takes what is queued (at most `max_frames` frames).

        Raises what python-can's `recv` would (`CanOperationError` for a datagram
        it cannot unpack, OSError from the socket); frames read before are returned first.
        """
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        batch: list[Frame] = []
        datagrams, self._pending = self._pending, []  # read with a failing one before it, not yet handed on
        if not datagrams:
            datagrams = self._receiver.collect(timeout, max_frames)
            if not datagrams:
                return batch
        filters = self.bus._filters
        if filters is not self._filters:
            self._compile(filters)
        exact, everything = self._exact, filters is None
        unpackb = self._unpackb
        append = batch.append
        headers, tail_length = self._headers, len(_TAIL)
        for index, (raw, stamp) in enumerate(datagrams):
            t = stamp[0] + stamp[1] * 1.0e-9 if stamp is not None else None
            # The datagram's bytes say what a full unpack said of the same header before: msgpack is
            # read from the start, so equal bytes up to the payload are equal fields (`_remember`).
            cut = raw.rfind(_DATA, _HEADER_AT)
            known = headers.get(raw[_HEADER_AT:cut]) if cut > 0 else None
            if known is not None and t is not None:
                key, length = known
                end = cut + 7 + length
                if raw[cut + 6] == length and end + tail_length == len(raw) and raw.endswith(_TAIL) \
                        and raw.startswith(_HEAD):
                    if everything or (key in exact if exact is not None else self._matches(key & 0x1FFFFFFF, key > 0x7FFFFFFF)):
                        append((t, key, raw[cut + 7 : end]))
                    continue
            try:
                if t is None:
                    raise _can_error("received control message type that was not requested")
                try:
                    fields = unpackb(raw, raw=False)
                    plain = (fields["is_remote_frame"], fields["is_error_frame"], fields["is_fd"],
                             fields["bitrate_switch"], fields["error_state_indicator"]) == _PLAIN
                    data = fields["data"]
                    can_id = fields["arbitration_id"]
                    extended = fields["is_extended_id"]
                    plain = (plain and len(fields) == 11 and type(data) is bytes and fields["dlc"] == len(data) <= 8
                             and type(extended) is bool and type(can_id) is int and 0 <= can_id < (0x20000000 if extended else 0x800))
                except Exception:  # not what pack_message writes: python-can's own path says what it is
                    fields, plain = None, False
                if plain:
                    key = can_id | EFF_FLAG if extended else can_id
                    if len(headers) < _HEADERS:
                        self._remember(raw, key, data)
                    if everything or (key in exact if exact is not None else self._matches(can_id, extended)):
                        append((t, key, data))
                    continue
                self._unusual(raw, fields, t, batch, on_error_frame)
            except Exception as exc:
                self._pending = datagrams[index + 1 :]  # python-can would read them after the failure
                if not batch:
                    raise
                self._failure = exc
                break
        return batch

    def _remember(self, raw: bytes, key: int, data: bytes) -> None:
        """Keeps the header of a datagram that unpacked as a plain classic frame, if laid out as pack_message does.

        Only a header whose payload was found right after it is kept: the `data` key
        found in the bytes is the one the full unpack read, the payload ends where the
        three flags begin, and nothing follows them.
        """
        cut = raw.rfind(_DATA, _HEADER_AT)
        end = cut + 7 + len(data)
        if (cut > 0 and raw.startswith(_HEAD) and raw.endswith(_TAIL) and raw[cut + 6] == len(data)
                and raw[cut + 7 : end] == data and end + len(_TAIL) == len(raw)):
            self._headers[raw[_HEADER_AT:cut]] = (key, len(data))

    def _matches(self, can_id: int, extended: bool) -> bool:
        """`BusABC._matches_filters` for a frame of this identifier."""
        for rule in self.bus._filters:
            if "extended" in rule and rule["extended"] != extended:
                continue
            if (rule["can_id"] ^ can_id) & rule["can_mask"] == 0:
                return True
        return False

    def _unusual(self, raw: bytes, fields: dict | None, t: float, batch: list, on_error_frame: ErrorFrameSink) -> None:
        """A datagram as python-can's udp_multicast reads it: unpacked, checked, FD-gated, filtered."""
        import can
        from can.interfaces.udp_multicast.utils import unpack_message

        try:
            msg = unpack_message(raw, replace={"timestamp": t}, check=True)
        except Exception as exc:
            raise can.CanOperationError("could not unpack received message") from exc
        if not self._fd and msg.is_fd:
            return
        if not self.bus._matches_filters(msg):
            return
        if msg.is_error_frame:
            on_error_frame(msg.timestamp, msg.arbitration_id | CAN_ERR_FLAG, bytes(msg.data))
        elif not msg.is_remote_frame:
            key = msg.arbitration_id | EFF_FLAG if msg.is_extended_id else msg.arbitration_id
            batch.append((msg.timestamp, key, bytes(msg.data)))


def _can_error(text: str) -> Exception:
    import can

    return can.CanOperationError(text)
