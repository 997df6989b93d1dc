"""A live CAN bus through any python-can interface, reopened with backoff when it fails.

A bus that errors or disappears (USB adapter unplugged, interface set down) is
reported as a health event and reopened with exponential backoff and jitter,
in its own thread, so the agent and its other buses carry on.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Any, Iterator

from carledger.sources.base import EventSink, FrameSource
from carledger.sources.frame import Frame, FrameFilter, frame_key

log = logging.getLogger(__name__)

_RECV_TIMEOUT = 0.2
_MAX_BATCH = 512


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
    ):
        super().__init__(name, frame_filter, on_event)
        self.interface, self.channel = interface, channel
        self.bitrate, self.fd, self.data_bitrate = bitrate, fd, data_bitrate
        self.options = dict(options or {})
        self.backoff = backoff
        self.error_frames = 0
        self.reopens = 0
        self.opened = threading.Event()  # set while the bus is open: tests and health checks wait on it
        self._random = random.Random()

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

    def batches(self, stop: threading.Event) -> Iterator[list[Frame]]:
        if self.frame_filter is not None and not self.frame_filter.rules:
            log.info("bus %s: no signal of it is needed; not opening it", self.name)
            stop.wait()
            return
        delay = self.backoff[0]
        opened_before = False
        while not stop.is_set():
            try:
                bus = self._open()
            except Exception as exc:  # any driver error: report, back off, retry
                self._report("bus-error", f"cannot open: {exc}", delay)
                if stop.wait(self._jitter(delay)):
                    return
                delay = min(delay * 2, self.backoff[1])
                continue
            if opened_before:
                self.reopens += 1
                self.on_event("bus-reopened", {"bus": self.name})
                log.info("bus %s: reopened", self.name)
            opened_before = True
            self.opened.set()
            try:
                yield from self._receive(bus, stop)
                delay = self.backoff[0]
            except Exception as exc:  # the interface failed under us
                self._report("bus-error", f"receive failed: {exc}", delay)
                if stop.wait(self._jitter(delay)):
                    return
                delay = min(delay * 2, self.backoff[1])
            finally:
                self.opened.clear()
                try:
                    bus.shutdown()
                except Exception:  # already broken; nothing more to release
                    pass

    def _receive(self, bus, stop: threading.Event) -> Iterator[list[Frame]]:
        recv = bus.recv
        while not stop.is_set():
            batch: list[Frame] = []
            failure: Exception | None = None
            try:
                msg = recv(_RECV_TIMEOUT)
                while msg is not None:
                    if msg.is_error_frame:
                        self.error_frames += 1
                    elif not msg.is_remote_frame:
                        batch.append((msg.timestamp, frame_key(msg.arbitration_id, msg.is_extended_id), bytes(msg.data)))
                    if len(batch) >= _MAX_BATCH:
                        break
                    msg = recv(0)
            except Exception as exc:  # hand on what was read before the failure, then report it
                failure = exc
            if batch:
                self.frames_read += len(batch)
                yield batch
            if failure is not None:
                raise failure

    def _report(self, kind: str, message: str, delay: float) -> None:
        log.warning("bus %s (%s %s): %s; retrying in %.1f s", self.name, self.interface, self.channel, message, delay)
        self.on_event(kind, {"bus": self.name, "error": message})

    def _jitter(self, delay: float) -> float:
        return delay * (0.5 + self._random.random() / 2)
