"""The abstract frame source: a live bus or a recorded log, read the same way."""

from __future__ import annotations

import abc
import threading
from typing import Callable, Iterator

from carledger.sources.frame import Frame, FrameFilter

# Called with (kind, detail) for things worth recording as bus health: errors,
# reopen attempts, malformed input. Never called per frame.
EventSink = Callable[[str, dict], None]


def _ignore(kind: str, detail: dict) -> None:
    pass


class FrameSource(abc.ABC):
    """Yields batches of frames until exhausted (a log) or stopped (a bus).

    Subclasses read only what `frame_filter` lets through, as early as their
    medium allows: kernel filters for SocketCAN, string matching for logs.
    """

    def __init__(self, name: str, frame_filter: FrameFilter | None, on_event: EventSink | None = None):
        self.name = name
        self.frame_filter = frame_filter
        self.on_event = on_event or _ignore
        self.frames_read = 0

    @abc.abstractmethod
    def batches(self, stop: threading.Event) -> Iterator[list[Frame]]:
        """Batches of frames in time order; returns when exhausted or `stop` is set."""

    def close(self) -> None:
        """Release the medium; safe to call twice."""
