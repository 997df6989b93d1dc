"""Recorded logs replayed as a frame source, at recorded speed or as fast as possible.

candump logs go through our fast reader; ``.asc``, ``.blf``, ``.trc`` and
``.mf4`` through python-can's readers, with the same filter applied before the
frame is handed on. Which format a file is, and its absolute times, is
`carledger.sources.logfile`'s business. A log that cannot be read raises
`ReplayError` (one line naming the file and the reason); frames read before
damage further in have been handed on already and are kept.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Iterable, Iterator

from carledger.sources.base import WAKEUP_INTERVAL, EventSink, FrameSource, Pacer
from carledger.sources.candump import read_candump
from carledger.sources.frame import Frame, FrameFilter, frame_key
from carledger.sources.logfile import LogFile, ReplayError
from carledger.sources.outlier import OutlierGuard
from carledger.sources.tally import FrameTally
from carledger.times import is_time

__all__ = ["LogSource", "ReplayError", "check_log"]

log = logging.getLogger(__name__)
_MAX_REPORTED_LINES = 10
#: A pause in a paced replay longer than this (seconds of wall time) is cut to it, as python-can's player cuts one
#: (MessageSync's `skip`, 60 s): a log of a day with the car parked for hours replays its drives, not its hours
#: of silence, and one damaged time far ahead cannot hold a replay asleep. Recorded times are untouched.
MAX_PAUSE = 60.0


def check_log(path: str) -> None:
    """Read the first batch of a log, so a command refuses an unreadable one before it creates anything.

    Damaged lines in that batch are the replay's to report: said here too, each would be said twice.
    """
    batches = LogSource("check", path, None, report=False)._read()
    try:
        next(batches, None)
    finally:
        batches.close()


class LogSource(FrameSource):
    """A recorded log as a source. `speed` 1.0 is recorded speed, 0 as fast as possible."""

    def __init__(
        self,
        name: str,
        path: str,
        frame_filter: FrameFilter | None,
        *,
        speed: float = 0.0,
        channels: Iterable[str] = (),
        on_event: EventSink | None = None,
        wakeup_interval: float = WAKEUP_INTERVAL,
        report: bool = True,
    ):
        super().__init__(name, frame_filter, on_event)
        self.report = report  # False: damaged lines are counted, not logged nor made events
        self.wakeup_interval = wakeup_interval  # at recorded speed: hands frames on at most once per interval
        self.path = path
        self.speed = speed
        self.channels = tuple(str(c) for c in channels)
        self.malformed = 0
        self.tally = FrameTally()  # what the log held, for the run summary

    def batches(self, stop: threading.Event) -> Iterator[list[Frame]]:
        raw = self._read()
        paced = self._paced(raw, stop) if self.speed > 0 else raw
        for batch in paced:
            if stop.is_set():
                return
            self.frames_read += len(batch)
            yield batch

    def _read(self) -> Iterator[list[Frame]]:
        logfile = LogFile(self.path)
        fmt = logfile.format()
        if fmt == "candump":
            with logfile.open() as lines:
                yield from read_candump(lines, self.frame_filter, self.channels, self._malformed, tally=self.tally)
        else:
            yield from self._python_can_batches(logfile.messages(fmt))

    def _malformed(self, number: int, line: str, reason: str) -> None:
        self._skipped(f"{self.path}:{number}: skipped malformed line ({reason}): {line.strip()[:80]}",
                      {"file": self.path, "line": number, "reason": reason})

    def _skipped(self, text: str, detail: dict) -> None:
        """A damaged line or frame: counted, logged and made an event (the first few)."""
        self.malformed += 1
        if not self.report:
            return
        if self.malformed <= _MAX_REPORTED_LINES:
            log.warning("%s", text)
            self.on_event("malformed-input", detail)
        elif self.malformed == _MAX_REPORTED_LINES + 1:
            log.warning("%s: more malformed lines; not reporting each", self.path)

    def _skipped_frame(self, number: int, t: object, reason: str) -> None:
        self._skipped(f"{self.path}: skipped frame {number} ({reason}): {t!r}",
                      {"file": self.path, "frame": number, "reason": reason})

    def _python_can_batches(self, messages: Iterable) -> Iterator[list[Frame]]:
        wanted: dict[int, bool] = {}
        flt = self.frame_filter
        batch: list[Frame] = []
        tally = self.tally
        by_key = tally.by_key
        guard = OutlierGuard()
        for msg in messages:
            tally.in_log += 1
            if self.channels and str(msg.channel) not in self.channels:
                continue
            tally.on_channels += 1
            if msg.is_error_frame or msg.is_remote_frame:
                continue
            key = frame_key(msg.arbitration_id, msg.is_extended_id)
            by_key[key] = by_key.get(key, 0) + 1
            ok = wanted.get(key)
            if ok is None:
                ok = wanted[key] = flt is None or flt.matches(key)
            if ok:
                t = msg.timestamp
                if not is_time(t):
                    self._skipped_frame(tally.in_log, t, "its timestamp is not a time from 0 to year 9999")
                    continue
                frame = (t, key, bytes(msg.data))
                if guard.low <= t <= guard.high:
                    batch.append(frame)
                else:  # the first frame, a jump, or an hour of log: carledger.sources.outlier
                    _, outliers = guard.outside(batch, frame, (tally.in_log, t))
                    for (number, ahead), reason in outliers:
                        self._skipped_frame(number, ahead, reason)
                if len(batch) >= 2048:
                    after = guard.next_batch(batch)
                    yield batch
                    batch = after
        if batch:
            yield batch

    def _paced(self, raw: Iterator[list[Frame]], stop: threading.Event) -> Iterator[list[Frame]]:
        """Re-cut batches the way a bus reader takes frames: on each wake-up, every frame due by then.

        Wake-ups fall on the readers' grid (`Pacer`), at most one per
        `wakeup_interval`, so a frame is handed on at most one interval after
        its recorded time has come, and never before. A pipeline that fell
        behind takes everything due at once instead of catching up in small
        batches. A pause longer than MAX_PAUSE takes MAX_PAUSE. Recorded
        times are untouched.
        """
        pacer = Pacer(self.wakeup_interval, self.wakeup_phase)
        start_wall: float | None = None
        start_t = 0.0
        last_due = float("inf")
        wake = float("-inf")  # monotonic time of the current wake-up: frames due by then go in this batch
        out: list[Frame] = []
        for batch in raw:
            for frame in batch:
                if start_wall is None:
                    start_wall, start_t = time.monotonic(), frame[0]
                due = start_wall + (frame[0] - start_t) / self.speed
                if due - last_due > MAX_PAUSE:
                    start_wall -= due - last_due - MAX_PAUSE  # the rest of the pause, and every frame after it
                    log.info("%s: a pause of %.0f s in the log, before the frame at %.6f, replayed as %.0f s",
                             self.path, (due - last_due) * self.speed, frame[0], MAX_PAUSE)
                    due = last_due + MAX_PAUSE
                last_due = due
                if due > wake:
                    if out:
                        yield out
                        out = []
                    now = time.monotonic()
                    wake = max(pacer.at_or_after(due), now)
                    if wake > now and pacer.sleep_until(wake, stop):
                        return
                out.append(frame)
        if out:
            yield out
