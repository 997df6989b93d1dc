"""Reading a SocketCAN raw socket directly: frames as tuples, error frames, timestamps, drops.

python-can opens and binds the socket and installs the kernel filters
(CAN_RAW_FILTER); after that the agent reads the socket itself, because
python-can builds a Message object per frame, which a Raspberry Pi cannot
afford at full bus load. On the way it also gets what python-can does not
offer:

- a receive buffer sized for bursts (SO_RCVBUF, or SO_RCVBUFFORCE where
  allowed), since the kernel drops frames once a socket's buffer is full;
- the kernel's count of frames dropped that way (SO_RXQ_OVFL);
- hardware timestamps where the interface gives them (SO_TIMESTAMPING: the
  raw hardware time when it is set, the kernel's receive time otherwise);
- many frames per system call (`recvmmsg`, `receive.QueuedReceiver`): the
  agent wakes once an interval and takes every frame queued since.
"""

from __future__ import annotations

import math
import socket
import struct
import time
from typing import Callable

from carledger.sources.canerror import CAN_ERR_FLAG
from carledger.sources.frame import EFF_FLAG, EFF_MASK, SFF_MASK, Frame
from carledger.sources.receive import SO_RXQ_OVFL, SO_TIMESTAMPING, SO_TIMESTAMPNS, TIMESPEC, TIMESPECS, QueuedReceiver

CAN_RTR_FLAG = 0x40000000
CANFD_MTU = 72
RECEIVE_BUFFER = 1 << 20  # bytes asked for at least; the kernel accounts about 1 KiB per frame, so ~1000 frames of burst
FRAME_ACCOUNTING = 1024  # bytes of receive buffer the kernel charges per classic CAN frame (766 measured, rounded up)
SIZING_FRAMES_PER_SECOND = 4 * 4500  # four full 500 kbit/s buses: what one socket (channel "any") may see
SIZING_ROOM = 2  # the reader may be held up as long again (the pipeline sealing, an fsync)


def receive_buffer_for(wakeup_interval: float) -> int:
    """Bytes of receive buffer for a reader that wakes every `wakeup_interval` seconds.

    Between two wake-ups the kernel keeps the frames: four full buses for the
    interval, twice over, and never less than `RECEIVE_BUFFER`.
    """
    frames = math.ceil(SIZING_FRAMES_PER_SECOND * wakeup_interval * SIZING_ROOM)
    return max(RECEIVE_BUFFER, frames * FRAME_ACCOUNTING)

SO_RCVBUFFORCE = 33
# SOF_TIMESTAMPING_RX_HARDWARE | RX_SOFTWARE | SOFTWARE | RAW_HARDWARE
_TIMESTAMPING_FLAGS = (1 << 2) | (1 << 3) | (1 << 4) | (1 << 6)

_HEADER = struct.Struct("=IB")

ErrorFrameSink = Callable[[float, int, bytes], None]  # (time, can_id with CAN_ERR_FLAG, payload)


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for `size` bytes of receive buffer; returns what the kernel granted.

    SO_RCVBUF is capped by net.core.rmem_max; SO_RCVBUFFORCE (with
    CAP_NET_ADMIN) is not, so it is tried when the cap cut the request.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if granted < size:  # the kernel reports twice what it was asked for, when it grants it
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
            granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        except OSError:
            pass  # no CAP_NET_ADMIN: raise net.core.rmem_max instead (docs/socketcan.md)
    return granted


class SocketReader:
    """Frames from a bound CAN_RAW socket, in batches; error frames go to `on_error_frame`."""

    def __init__(self, sock: socket.socket, receive_buffer: int = RECEIVE_BUFFER):
        self.receive_buffer = set_receive_buffer(sock, receive_buffer) if receive_buffer else 0
        self.hardware_timestamps = 0  # frames whose time came from the interface's clock
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, _TIMESTAMPING_FLAGS)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 0)  # one timestamp message per frame is enough
            self._receiver = QueuedReceiver(sock, CANFD_MTU, SO_TIMESTAMPING, TIMESPECS)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self._receiver = QueuedReceiver(sock, CANFD_MTU, SO_TIMESTAMPNS, TIMESPEC)

    @property
    def dropped(self) -> int:
        """Frames the kernel dropped for a full receive buffer (since the socket opened)."""
        return self._receiver.dropped

    def read(self, timeout: float, max_frames: int, on_error_frame: ErrorFrameSink) -> list[Frame]:
        """Waits up to `timeout` for a frame, then takes what is queued (at most `max_frames`).

        Raises OSError when the interface fails (ENETDOWN when it is set down,
        ENODEV when it disappears); frames read before that are returned first.
        """
        batch: list[Frame] = []
        receiver = self._receiver
        append = batch.append
        unpack = _HEADER.unpack_from
        hardware = receiver.stamp == SO_TIMESTAMPING
        for raw, stamp in receiver.collect(timeout, max_frames):
            can_id, length = unpack(raw)
            if stamp is None:
                # no time from the kernel: it stamps frames only once the first timestamping socket
                # has switched stamping on (deferred), so the first frames after start can lack one
                t = time.time()
            elif hardware:  # software, (legacy), raw hardware: the interface's clock where it has one
                if stamp[4]:
                    self.hardware_timestamps += 1
                    t = stamp[4] + stamp[5] * 1e-9
                else:
                    t = stamp[0] + stamp[1] * 1e-9 if stamp[0] else time.time()
            else:
                t = stamp[0] + stamp[1] * 1e-9
            if can_id & CAN_ERR_FLAG:
                on_error_frame(t, can_id, raw[8 : 8 + length])
            elif not can_id & CAN_RTR_FLAG:
                key = (can_id & EFF_MASK) | EFF_FLAG if can_id & EFF_FLAG else can_id & SFF_MASK
                append((t, key, raw[8 : 8 + length]))
        return batch
