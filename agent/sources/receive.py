"""Taking what a socket has queued: many datagrams per system call, each with its kernel stamp.

Both direct readers (SocketCAN's CAN_RAW socket, python-can's `udp_multicast`
socket) wake up once an interval and take every frame queued since. At the
car's pace a `recvmsg` per frame cost more CPU than all the rest of the
agent's work on it: a system call, and the Python call around it, paid again
per frame. `QueuedReceiver` takes up to 32 per `recvmmsg(2)` (through ctypes)
where the C library has it, else one `recvmsg` a datagram, and gives the same
either way:

- each datagram's bytes, cut at `size` as `recvmsg` cuts them;
- the values of the one control message the reader asked the kernel to stamp
  datagrams with (`stamp`: SO_TIMESTAMPNS's timespec, SO_TIMESTAMPING's three),
  or None when the kernel sent none;
- the kernel's count of datagrams dropped for a full receive buffer
  (SO_RXQ_OVFL, which comes beside the stamp once the kernel has dropped), in
  `dropped`.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from typing import Any

SO_TIMESTAMPNS = 35  # the "old" constants: the kernel's timespecs are two C longs on 32- and 64-bit alike
SO_TIMESTAMPING = 37
SO_RXQ_OVFL = 40
TIMESPEC = struct.Struct("@ll")  # struct __kernel_old_timespec: seconds, nanoseconds
TIMESPECS = struct.Struct("@llllll")  # struct scm_timestamping: software, (legacy), raw hardware
COUNTER = struct.Struct("=I")  # SO_RXQ_OVFL's count

_CMSG = struct.Struct("@Nii")  # struct cmsghdr: cmsg_len, cmsg_level, cmsg_type (its data follows, size_t-aligned)
_CMSG_HEADER = socket.CMSG_LEN(0)  # where a cmsghdr's data begins: 16 bytes on a 64-bit machine, 12 on a 32-bit one

Received = tuple[bytes, "tuple | None"]  # a datagram, and its stamp's values (None: the kernel sent no stamp)


class QueuedReceiver:
    """What one socket has queued, without waiting, in the order the kernel queued it."""

    def __init__(self, sock: socket.socket, size: int, stamp: int, layout: struct.Struct):
        self.sock = sock
        self.size = size
        self.stamp = stamp
        self.layout = layout
        self.dropped = 0
        # room for every control message a socket may be sent: the stamp, a timespec, the counter
        self.control = socket.CMSG_SPACE(layout.size) + socket.CMSG_SPACE(TIMESPEC.size) + socket.CMSG_SPACE(COUNTER.size)
        self._failure: OSError | None = None  # raised by the next take, after the datagrams read before it
        self._many = _Many.on(self)

    @property
    def batched(self) -> bool:
        """True when datagrams are taken many per system call."""
        return self._many is not None

    def wait(self, timeout: float) -> bool:
        """Waits up to `timeout` for a datagram; True when there is one (or a failure) to take."""
        return self._failure is not None or bool(select.select((self.sock,), (), (), timeout)[0])

    def collect(self, timeout: float, limit: int) -> list[Received]:
        """What is queued (at most `limit`); only when nothing is, waits up to `timeout` for it, then takes.

        A reader on the wake-up grid of a busy bus finds frames waiting: asking
        `select` first cost 10-26 µs more CPU a read on the bench machine (the
        first system call after a sleep runs cold; docs/performance.md), to learn
        what the first `recvmmsg` tells anyway. An idle bus pays one empty
        `recvmmsg` instead.
        """
        out = self.take(limit)
        if out or not self.wait(timeout):
            return out
        return self.take(limit)

    def take(self, limit: int) -> list[Received]:
        """Up to `limit` queued datagrams and their stamps.

        Raises OSError when the socket fails (ENETDOWN when a CAN interface is
        set down); one that comes after some datagrams were read is raised by
        the next take, so those are handed on first.
        """
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        out: list[Received] = []
        try:
            if self._many is not None:
                many = self._many
                while len(out) < limit:
                    if many.receive(min(limit - len(out), many.slots), out) < many.slots:
                        break
            else:
                self._one_at_a_time(limit, out)
        except OSError as exc:
            if not out:
                raise
            self._failure = exc
        return out

    def _one_at_a_time(self, limit: int, out: list[Received]) -> None:
        recvmsg, size, control, flags = self.sock.recvmsg, self.size, self.control, socket.MSG_DONTWAIT
        stamp, unpack = self.stamp, self.layout.unpack_from
        while len(out) < limit:
            try:
                raw, ancillary, _, _ = recvmsg(size, control, flags)
            except BlockingIOError:
                return
            values = None
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET:
                    if kind == stamp and len(data) >= self.layout.size:
                        values = unpack(data)
                    elif kind == SO_RXQ_OVFL and len(data) >= COUNTER.size:
                        self.dropped = COUNTER.unpack_from(data)[0]
            out.append((raw, values))

    def walk(self, control: memoryview, offset: int, length: int) -> "tuple | None":
        """The stamp's values among one datagram's control messages; the drop counter when it comes too."""
        values = None
        end = offset + length
        head = _CMSG_HEADER
        while offset + head <= end:
            cmsg_length, level, kind = _CMSG.unpack_from(control, offset)
            if level == socket.SOL_SOCKET:
                if kind == self.stamp and cmsg_length >= head + self.layout.size:
                    values = self.layout.unpack_from(control, offset + head)
                elif kind == SO_RXQ_OVFL and cmsg_length >= head + COUNTER.size:
                    self.dropped = COUNTER.unpack_from(control, offset + head)[0]
            if cmsg_length < head:
                break
            offset += socket.CMSG_SPACE(cmsg_length - head)
        return values


class _Many:
    """`recvmmsg(2)` through ctypes for one `QueuedReceiver`: up to `slots` datagrams per system call.

    The buffers are made once: `size` bytes of data and `control` bytes of
    control messages per datagram.
    """

    slots = 32

    def __init__(self, ctypes: Any, recvmmsg: Any, receiver: QueuedReceiver):
        c = ctypes

        class iovec(c.Structure):
            _fields_ = [("iov_base", c.c_void_p), ("iov_len", c.c_size_t)]

        class msghdr(c.Structure):
            _fields_ = [("msg_name", c.c_void_p), ("msg_namelen", c.c_uint32), ("msg_iov", c.c_void_p),
                        ("msg_iovlen", c.c_size_t), ("msg_control", c.c_void_p), ("msg_controllen", c.c_size_t),
                        ("msg_flags", c.c_int)]

        class mmsghdr(c.Structure):
            _fields_ = [("msg_hdr", msghdr), ("msg_len", c.c_uint)]

        self._ctypes = c
        self._recvmmsg = recvmmsg
        self._receiver = receiver
        self._fd = receiver.sock.fileno()
        self._size = size = receiver.size
        self._room = room = receiver.control
        slots = self.slots
        self._data = c.create_string_buffer(slots * size)
        self._control = c.create_string_buffer(slots * room)
        self._iov = (iovec * slots)()
        self._headers = (mmsghdr * slots)()
        self._template = (mmsghdr * slots)()
        data, control = c.addressof(self._data), c.addressof(self._control)
        for i in range(slots):
            self._iov[i].iov_base, self._iov[i].iov_len = data + i * size, size
            header = self._template[i].msg_hdr
            header.msg_iov, header.msg_iovlen = c.addressof(self._iov[i]), 1
            header.msg_control, header.msg_controllen = control + i * room, room
        self._header_size = c.sizeof(mmsghdr)
        # msg_controllen and msg_len, both written by the kernel, read in one unpack
        self._lengths_at = mmsghdr.msg_hdr.offset + msghdr.msg_controllen.offset
        gap = mmsghdr.msg_len.offset - self._lengths_at - c.sizeof(c.c_size_t)
        self._lengths = struct.Struct(f"@N{gap}xI")
        self._header_view = memoryview(self._headers).cast("B")
        self._template_view = memoryview(self._template).cast("B")
        self._control_view = memoryview(self._control).cast("B")
        # the usual control data: the stamp alone, read with its cmsghdr in one unpack
        self._stamp = struct.Struct(_CMSG.format + receiver.layout.format.lstrip("@"))
        self._stamped = socket.CMSG_LEN(receiver.layout.size)

    @classmethod
    def on(cls, receiver: QueuedReceiver) -> "_Many | None":
        """The batch receiver for this socket, or None where there is no `recvmmsg` (read one at a time)."""
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            recvmmsg = libc.recvmmsg
        except (ImportError, OSError, AttributeError):
            return None
        recvmmsg.restype = ctypes.c_int
        recvmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
        return cls(ctypes, recvmmsg, receiver)

    def receive(self, count: int, out: list[Received]) -> int:
        """Appends up to `count` queued datagrams and their stamps to `out`; how many it read."""
        # the fields the kernel wrote last time (msg_controllen, msg_len ...) set back; copied by the buffer
        # protocol, not `ctypes.memmove`: a ctypes call costs 4.5 µs warm and 39 µs after a sleep on the bench
        # machine, more than the copy (docs/performance.md)
        header_bytes = self._header_size * count
        self._header_view[:header_bytes] = self._template_view[:header_bytes]
        got = self._recvmmsg(self._fd, self._headers, count, socket.MSG_DONTWAIT, None)
        if got < 0:
            code = self._ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EINTR):  # nothing queued; a signal came first
                return 0
            raise OSError(code, os.strerror(code))
        headers, control, data, size = self._header_view, self._control_view, self._data, self._size
        step, lengths_at, room, stamped, stamp = self._header_size, self._lengths_at, self._room, self._stamped, self._receiver.stamp
        unpack_lengths, unpack_stamp = self._lengths.unpack_from, self._stamp.unpack_from
        append = out.append
        for i in range(got):
            controllen, length = unpack_lengths(headers, i * step + lengths_at)
            at = i * size
            raw = data[at : at + length]
            if controllen == stamped:  # the usual: the stamp alone
                values = unpack_stamp(control, i * room)
                if values[0] == stamped and values[2] == stamp and values[1] == socket.SOL_SOCKET:
                    append((raw, values[3:]))
                    continue
            append((raw, self._receiver.walk(control, i * room, controllen)))
        return got
