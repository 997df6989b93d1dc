"""Send timestamped frames onto a python-can bus at their recorded pace."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable

import can

# sleeping for less than this is not worth a system call; frames are sent in small bursts
_MIN_SLEEP = 0.001


def send_paced(
    messages: Iterable[can.Message],
    bus: can.BusABC,
    realtime_factor: float = 1.0,
    stop_event: threading.Event | None = None,
    t0: float | None = None,
    max_pause: float | None = None,
    on_pause: Callable[[float, float], None] | None = None,
) -> int:
    """Send `messages` onto `bus`, frame i at wall time (ts_i - t0) / realtime_factor
    after the call (time.monotonic). t0 defaults to the first frame's timestamp.

    realtime_factor 0 or inf sends as fast as the bus accepts. Frames whose
    timestamps go backwards are sent at once. A pause between two frames
    longer than `max_pause` seconds of wall time (two drives in one log, a
    damaged time far ahead) takes `max_pause`, and every frame after it
    moves up as much, as the agent's own replay does; `on_pause(seconds,
    timestamp)` hears of each. The frames' `channel` is cleared so that the
    bus, not the recording, decides where they go. Returns the number of
    frames sent; stops early when `stop_event` is set.
    """
    factor = float(realtime_factor)
    if factor < 0 or math.isnan(factor):
        raise ValueError("realtime_factor must be >= 0 (0 or inf: as fast as possible)")
    paced = 0 < factor < math.inf
    sent = 0
    mono0 = time.monotonic()
    last_due: float | None = None
    for msg in messages:
        if stop_event is not None and stop_event.is_set():
            break
        if paced:
            if t0 is None:
                t0 = msg.timestamp
            due = (msg.timestamp - t0) / factor
            if max_pause is not None and last_due is not None and due - last_due > max_pause:
                mono0 -= due - last_due - max_pause  # the rest of the pause, and every frame after it
                if on_pause is not None:
                    on_pause(due - last_due, msg.timestamp)
            last_due = due
            delay = mono0 + due - time.monotonic()
            if delay > _MIN_SLEEP:
                if stop_event is not None:
                    if stop_event.wait(delay):
                        break
                else:
                    time.sleep(delay)
        msg.channel = None
        bus.send(msg)
        sent += 1
    return sent
