"""A live CAN bus through any python-can interface, reopened with backoff when it fails.

A bus that errors or disappears (USB adapter unplugged, interface set down) is
reported as a health event and reopened with exponential backoff and jitter,
in its own thread, so the agent and its other buses carry on.

On SocketCAN the kernel filters (CAN_RAW_FILTER) keep unneeded identifiers out
of the socket, and the socket is read directly (`carledger.sources.socketcan`):
large receive buffer, kernel drop counts, hardware timestamps. python-can's
`udp_multicast` bus (the benches' stand-in for a car's bus) is read directly
too (`carledger.sources.udpmulticast`), with python-can's semantics. Error frames
from any interface become rate-limited "bus-error" events
(`carledger.sources.canerror`). The filter can be swapped while the bus runs
(`set_filter`), e.g. when the owner's policy changes which signals are needed.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import socket
import threading
import time
from typing import Any, Callable, Generator, Iterator

from carledger.sources.base import WAKEUP_INTERVAL, EventSink, FrameSource, Pacer
from carledger.sources.canerror import CAN_ERR_FLAG, ErrorFrameLog
from carledger.sources.frame import Frame, FrameFilter, frame_key
from carledger.sources.socketcan import SocketReader, receive_buffer_for, set_receive_buffer
from carledger.sources.udpmulticast import DatagramReader, reader_for as datagram_reader_for

log = logging.getLogger(__name__)

_RECV_TIMEOUT = 0.2
_MAX_BATCH = 512
_DROP_REPORT_INTERVAL = 1.0
_OPEN_ALLOWANCE = 10.0  # seconds a driver may take to open a bus before the watchdog calls it stalled


def unknown_interface(interface: str) -> str | None:
    """Why python-can has no interface of this name, or None when it has one (its own or a plug-in's).

    A misspelt name fails every time the bus is opened, so the agent refuses it at start rather
    than retrying for ever. Listing the known names reads the installed plug-ins; a known name
    does not (carledger._imports).
    """
    from can import util  # the table can.Bus checks a name against (can.interfaces.VALID_INTERFACES)

    if interface in util.VALID_INTERFACES:
        return None
    known = ", ".join(sorted(util.VALID_INTERFACES))
    return f"python-can has no interface {interface[:80]!r} (it knows {known}; a plug-in's package adds its own)"


class BusSource(FrameSource):
    """Frames from `can.Bus(interface=..., channel=..., can_filters=...)`.

    The agent only listens here: it never calls `send` on this bus (the
    read-only contract); OBD polling uses its own, separately enabled path.
    """

    def __init__(
        self,
        name: str,
        frame_filter: FrameFilter | None,
        *,
        interface: str,
        channel: Any,
        bitrate: int | None = None,
        fd: bool = False,
        data_bitrate: int | None = None,
        options: dict[str, Any] | None = None,
        on_event: EventSink | None = None,
        backoff: tuple[float, float] = (0.5, 30.0),
        receive_buffer: int | None = None,
        error_interval: float = 1.0,
        wakeup_interval: float = WAKEUP_INTERVAL,
    ):
        super().__init__(name, frame_filter, on_event)
        self.wakeup_interval = wakeup_interval  # a busy bus is read at most once per interval
        self.interface, self.channel = interface, channel
        self.bitrate, self.fd, self.data_bitrate = bitrate, fd, data_bitrate
        self.options = dict(options or {})
        self.backoff = backoff
        # SocketCAN: bytes asked for (SO_RCVBUF), enough for the frames that arrive between two wake-ups
        self.receive_buffer = receive_buffer_for(wakeup_interval) if receive_buffer is None else receive_buffer
        self.receive_buffer_granted = 0  # SocketCAN: what the kernel granted (it reports twice the request)
        self.error_frames = 0
        self.dropped = 0  # SocketCAN, udp_multicast: frames the kernel dropped for a full receive buffer
        self.hardware_timestamps = 0  # SocketCAN: frames timed by the interface's clock
        self.reopens = 0
        self.opened = threading.Event()  # set while the bus is open: tests and health checks wait on it
        # monotonic time by which the reader thread promises its next sign of life (None: not running);
        # carledger.notify.Watchdog withholds systemd's watchdog once it is long past (a hung driver call)
        self.alive_until: float | None = None
        self._errors = ErrorFrameLog(error_interval)
        # Set by a caller that runs its own per-round work between batches (the pipeline reading this bus in its
        # own thread): an empty batch at least every receive timeout while nothing arrives, a failed bus reopens
        # or a filter leaves it closed, so that work goes on.
        self.idle_ticks = False
        self._filter_changed = threading.Event()
        self._random = random.Random()

    @property
    def error_state(self) -> str | None:
        """The controller state the last error frames told of (error-active/-warning/-passive, bus-off), if any."""
        return self._errors.state

    @property
    def reads_sockets(self) -> bool:
        """True when the bus is read from a socket (SocketCAN, udp_multicast): no driver call that can wedge.

        Such a bus, alone in the agent, is read by the pipeline thread itself (`Pipeline.run`).
        """
        return self.interface in ("socketcan", "udp_multicast")

    def set_filter(self, frame_filter: FrameFilter | None) -> None:
        """Read only what `frame_filter` lets through from now on: on the open bus and after reopens.

        Safe from any thread: the reader thread applies it within a receive
        timeout and a wake-up interval (0.2 s + 50 ms by default). An empty filter closes the bus until a filter needs
        it again; `None` reads everything.
        """
        self.frame_filter = frame_filter
        self._filter_changed.set()

    def bus_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(self.options)
        kwargs.update(interface=self.interface, channel=self.channel, receive_own_messages=False)
        if self.bitrate:
            kwargs["bitrate"] = self.bitrate
        if self.fd:
            kwargs["fd"] = True
            if self.data_bitrate:
                kwargs["data_bitrate"] = self.data_bitrate
        if self.frame_filter is not None:
            kwargs["can_filters"] = self.frame_filter.to_can_filters()
        return kwargs

    def _open(self):
        import can

        return can.Bus(**self.bus_kwargs())

    def _needed(self) -> bool:
        return self.frame_filter is None or bool(self.frame_filter.rules)

    def batches(self, stop: threading.Event) -> Iterator[list[Frame]]:
        try:
            yield from self._batches(stop)
        finally:
            self.alive_until = None

    def _expect(self, seconds: float) -> None:
        self.alive_until = time.monotonic() + seconds

    def _batches(self, stop: threading.Event) -> Iterator[list[Frame]]:
        delay = self.backoff[0]
        opened_before = False
        while not stop.is_set():
            self._filter_changed.clear()
            if not self._needed():
                log.info("bus %s: no signal of it is needed; not opening it", self.name)
                while not self._filter_changed.is_set():
                    if (yield from self._idle(stop, _RECV_TIMEOUT)):
                        return
                continue
            self._expect(_OPEN_ALLOWANCE)
            try:
                bus, reader = self._connect()
            except Exception as exc:  # any driver error: report, back off, retry
                delay = yield from self._back_off(stop, f"cannot open: {exc}", delay)
                if delay is None:
                    return
                continue
            if opened_before:
                self.reopens += 1
                self.on_event("bus-reopened", {"bus": self.name})
                log.info("bus %s: reopened", self.name)
            opened_before = True
            self.opened.set()
            log.info("bus %s: %s %s open%s", self.name, self.interface, self.channel,
                     f", receive buffer {self.receive_buffer_granted} bytes" if reader else "")
            try:
                yield from self._receive(bus, stop) if reader is None else self._receive_socket(bus, reader, stop)
                delay = self.backoff[0]
            except Exception as exc:  # the interface failed under us
                delay = yield from self._back_off(stop, f"receive failed: {exc}", delay)
                if delay is None:
                    return
            finally:
                self.opened.clear()
                try:
                    bus.shutdown()
                except Exception:  # already broken; nothing more to release
                    pass

    def _connect(self):
        """The open bus, and on SocketCAN its direct reader; raises when the interface is absent or down."""
        bus = self._open()
        sock = getattr(bus, "socket", None)
        if self.interface == "udp_multicast":
            try:
                reader = datagram_reader_for(bus, self.receive_buffer)
            except BaseException:
                bus.shutdown()
                raise
            if reader is not None:  # python-can's bus, read a batch at a time as SocketCAN is
                self.receive_buffer_granted = reader.receive_buffer
                return bus, reader
        if self.interface != "socketcan" or sock is None:
            self.receive_buffer_granted = _size_socket_of(bus, self.receive_buffer)
            return bus, None
        try:
            pending = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if pending:  # bound to an interface that is down: the kernel says ENETDOWN at once
                raise OSError(pending, f"{self.channel}: {os.strerror(pending)}")
            reader = SocketReader(sock, self.receive_buffer)
        except BaseException:
            bus.shutdown()
            raise
        self.receive_buffer_granted = reader.receive_buffer
        return bus, reader

    def _back_off(self, stop: threading.Event, message: str, delay: float) -> Generator[list[Frame], None, float | None]:
        """Reports a failure and waits before the next try; returns the delay after that, or None once stopped."""
        self._report("bus-error", message, delay)
        if (yield from self._idle(stop, self._jitter(delay))):
            return None
        return min(delay * 2, self.backoff[1])

    def _idle(self, stop: threading.Event, seconds: float) -> Generator[list[Frame], None, bool]:
        """Waits `seconds` with no bus to read; returns True once stopped.

        With `idle_ticks`, an empty batch after every receive timeout of it, so that the
        per-round work of the caller reading this bus in its own thread goes on.
        """
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            step = min(left, _RECV_TIMEOUT) if self.idle_ticks else left
            self._expect(step)
            if stop.wait(step):
                return True
            if self.idle_ticks:
                yield []
        return False

    def _filter_applied(self, bus) -> bool:
        """Applies a filter set by `set_filter` to the open bus; False when the bus is no longer needed."""
        if not self._filter_changed.is_set():
            return True
        self._filter_changed.clear()
        if not self._needed():
            return False
        frame_filter = self.frame_filter
        bus.set_filters(frame_filter.to_can_filters() if frame_filter is not None else None)
        return True

    def _turns(self, bus, stop: threading.Event) -> Iterator[Pacer]:
        """One turn per read, for as long as the bus is needed; the caller paces busy turns with the pacer."""
        pacer = Pacer(self.wakeup_interval, self.wakeup_phase)
        while not stop.is_set() and self._filter_applied(bus):
            self._expect(_RECV_TIMEOUT + self.wakeup_interval)
            yield pacer

    def _rest(self, pacer: Pacer, batch: list, stop: threading.Event) -> bool:
        """After a read: wait for the next wake-up when the bus is busy; False once stopped.

        At most one read a `wakeup_interval` while frames flow. A full batch
        does not wait (more is queued), nor does an empty one (the read
        already waited for the bus to speak), so the first frame after
        silence is taken at once.
        """
        if batch and len(batch) < _MAX_BATCH:
            return not pacer.wait(stop)
        return True

    def _receive(self, bus, stop: threading.Event) -> Iterator[list[Frame]]:
        recv, queued = bus.recv, _queued_reader(bus)
        paced = queued is not None
        if queued is None:
            queued = functools.partial(recv, 0)
        for pacer in self._turns(bus, stop):
            batch: list[Frame] = []
            failure: Exception | None = None
            try:
                msg = recv(_RECV_TIMEOUT)  # blocks only on an idle bus
                while msg is not None:
                    if msg.is_error_frame:
                        self._error_frame(msg.timestamp, msg.arbitration_id | CAN_ERR_FLAG, bytes(msg.data))
                    elif not msg.is_remote_frame:
                        batch.append((msg.timestamp, frame_key(msg.arbitration_id, msg.is_extended_id), bytes(msg.data)))
                    if len(batch) >= _MAX_BATCH:
                        break
                    msg = queued()
            except Exception as exc:  # hand on what was read before the failure, then report it
                failure = exc
            self._flush_errors()
            if batch:
                self.frames_read += len(batch)
                self.alive_until = math.inf  # time the consumer takes is not the reader's
                yield batch
            elif self.idle_ticks:
                yield batch
            if failure is not None:
                raise failure
            if paced and not self._rest(pacer, batch, stop):
                return

    def _receive_socket(self, bus, reader: "SocketReader | DatagramReader", stop: threading.Event) -> Iterator[list[Frame]]:
        read, on_error = reader.read, self._error_frame
        reported, next_report = 0, 0.0  # drops already reported for this socket
        stamped_before = self.hardware_timestamps
        for pacer in self._turns(bus, stop):
            batch = read(_RECV_TIMEOUT, _MAX_BATCH, on_error)  # blocks only on an idle bus
            self._flush_errors()
            if reader.dropped > reported and time.monotonic() >= next_report:
                next_report = time.monotonic() + _DROP_REPORT_INTERVAL
                newly, reported = reader.dropped - reported, reader.dropped
                self.dropped += newly
                log.warning("bus %s: the kernel dropped %d frames (receive buffer full)", self.name, newly)
                self.on_event("frames-dropped", {"bus": self.name, "dropped": newly, "total": self.dropped})
            if batch:
                self.hardware_timestamps = stamped_before + reader.hardware_timestamps
                self.frames_read += len(batch)
                self.alive_until = math.inf  # time the consumer takes is not the reader's
                yield batch
            elif self.idle_ticks:
                yield batch
            if not self._rest(pacer, batch, stop):
                return

    def _error_frame(self, t: float, can_id: int, data: bytes) -> None:
        self.error_frames += 1
        for detail in self._errors.add(time.monotonic(), can_id, data):
            self._report_error_frame(detail)

    def _flush_errors(self) -> None:
        self._report_error_frame(self._errors.flush(time.monotonic()))

    def _report_error_frame(self, detail: dict | None) -> None:
        if detail is None:
            return
        summary = ", ".join(detail["classes"]) + (f" ({detail['state']})" if "state" in detail else "")
        log.warning("bus %s: %d error frame(s): %s", self.name, detail["count"], summary)
        self.on_event("bus-error", {"bus": self.name, "error": f"error frame: {summary}", "error_frame": detail})

    def _report(self, kind: str, message: str, delay: float) -> None:
        log.warning("bus %s (%s %s): %s; retrying in %.1f s", self.name, self.interface, self.channel, message, delay)
        self.on_event(kind, {"bus": self.name, "error": message})

    def _jitter(self, delay: float) -> float:
        return delay * (0.5 + self._random.random() / 2)


def _size_socket_of(bus, size: int) -> int:
    """Sizes the receive buffer of a python-can bus that reads a socket (`fileno()`, e.g. udp_multicast).

    Frames wait there between two wake-ups as they do in a SocketCAN socket.
    Returns what the kernel granted; 0 for a bus without a socket (virtual,
    serial adapters, drivers that queue in their own library).
    """
    try:
        fd = bus.fileno()
    except Exception:  # NotImplementedError for most interfaces
        return 0
    if not isinstance(fd, int) or fd < 0 or not size:
        return 0
    duplicate = os.dup(fd)  # the same socket; closing the duplicate leaves the bus's open
    try:
        sock = socket.socket(fileno=duplicate)
    except OSError:  # not a socket (a serial port's fd)
        os.close(duplicate)
        return 0
    with sock:
        try:
            return set_receive_buffer(sock, size)
        except OSError:
            return 0


def _queued_reader(bus) -> Callable[[], Any] | None:
    """The next frame already queued on a python-can bus, or None only when none is.

    `bus.recv(0)` also returns None when the next queued frame is one its
    software filter drops (python-can filters in `recv`, and a zero timeout
    leaves no time for another try), so None would not mean "drained" and a
    paced reader would fall behind. This reads the way `BusABC.recv` does,
    without the clock. A bus class that replaces `recv` keeps `recv(0)`, and
    is read at once whenever it says nothing is queued (no pacing).
    """
    import can

    if type(bus).recv is not can.BusABC.recv:
        return None
    internal, matches = bus._recv_internal, bus._matches_filters

    def queued() -> Any:
        while True:
            msg, already_filtered = internal(timeout=0)
            if msg is None or already_filtered or matches(msg):
                return msg

    return queued
