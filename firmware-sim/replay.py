"""Replay a recorded CAN log onto a python-can bus.

Any format python-can's LogReader reads (.log candump, .asc, .blf, .trc,
.csv, .db, .mf4 with asammdf), at the recorded pace (times a factor) or as
fast as possible. Error frames are skipped (most buses cannot send them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import can

from .pacing import send_paced


def read_log(path) -> Iterator[can.Message]:
    """The frames of a log file, in file order (error frames skipped)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such log file: {p}")
    if p.suffix.lower() == ".mf4":
        from carledger._imports import enable_mf4

        enable_mf4()
    try:
        reader = can.LogReader(str(p))
    except ValueError as exc:  # unknown suffix
        raise ValueError(f"cannot read {p.name}: {exc}") from None
    with reader:
        for msg in reader:
            if msg.is_error_frame:
                continue
            yield msg


def replay(
    path,
    bus: can.BusABC,
    realtime_factor: float = 1.0,
    stop_event: threading.Event | None = None,
    max_pause: float | None = None,
    on_pause: Callable[[float, float], None] | None = None,
) -> int:
    """Send a log's frames onto `bus`; realtime_factor 0 (or inf) = as fast as possible.

    A pause longer than `max_pause` seconds takes `max_pause` (`send_paced`). Returns the number of frames sent.
    """
    return send_paced(read_log(path), bus, realtime_factor, stop_event, max_pause=max_pause, on_pause=on_pause)
