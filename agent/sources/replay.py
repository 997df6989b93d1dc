"""Recorded logs replayed as a frame source, at recorded speed or as fast as possible.

candump logs go through our fast reader; ``.asc``, ``.blf``, ``.trc`` and
``.mf4`` (with asammdf, the ``carledger[mf4]`` extra) go through python-can's
readers, with the same filter applied before the frame is handed on. A
candump log is recognised by its content whatever its name (``.log``,
``.candump``, ``.txt``); other formats by their extension, optionally ``.gz``.

A log that cannot be read raises `ReplayError`: one line naming the file and
the reason (and the line, for text formats). Frames read before the damage
have been handed on already and are kept.

Times are absolute wherever the format states the start: an ASC file's
``date`` header (the recording machine's local time, read in this process's
time zone), a BLF header's start time, a TRC file's ``$STARTTIME`` (or, in
TRC 1.0, its ``Start time:`` comment, read as UTC like ``$STARTTIME``), an MF4
header. Where a file states no start (an ASC without ``date``), times stay as
the file gives them. Nothing signs these times: they come from the owner's own log, and
they only decide when the replayed samples happened, as a live bus's clock
would; a wrong date cannot release a sample to a recipient outside a window
the owner's policy already grants.
"""

from __future__ import annotations

import datetime
import gc
import gzip
import logging
import re
import struct
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import IO, Iterable, Iterator

from carledger.sources.base import EventSink, FrameSource
from carledger.sources.candump import open_text, read_candump
from carledger.sources.frame import Frame, FrameFilter, frame_key

log = logging.getLogger(__name__)
_MAX_REPORTED_LINES = 10
_SNIFF_LINES = 20  # meaningful lines looked at to tell a candump log by its content
_CANDUMP_LINE = re.compile(r"\(\d+(?:\.\d*)?\)\s+\S+\s+[0-9A-Fa-f]{1,8}#")
_BY_SUFFIX = {".asc": "asc", ".blf": "blf", ".trc": "trc", ".mf4": "mf4", ".log": "candump"}
_MAGIC = {"blf": b"LOGG", "mf4": b"MDF"}
_TEXT_FORMATS = ("asc", "trc")
# TRC 1.0 states its start only in a comment; python-can reads $STARTTIME (1.1 and later) alone.
_TRC_START_COMMENT = re.compile(r";\s*Start time:\s*(\d{1,2})\.(\d{1,2})\.(\d{4})\s+(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,3}))?")
KNOWN_FORMATS = "a candump log (.log, .candump, .txt), .asc, .blf, .trc or .mf4"


class ReplayError(Exception):
    """A log the replay cannot read; str() is the one line the command prints (exit 2)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def check_log(path: str) -> None:
    """Read the first batch of a log, so a command refuses an unreadable one before it creates anything."""
    batches = LogSource("check", path, None)._read()
    try:
        next(batches, None)
    finally:
        batches.close()


class _CountedLines:
    """A text file that counts the lines handed out, so a reader's error can name its line."""

    def __init__(self, file: IO[str]):
        self.file = file
        self.number = 0

    def __iter__(self) -> "_CountedLines":
        return self

    def __next__(self) -> str:
        line = next(self.file)
        self.number += 1
        return line

    def close(self) -> None:
        self.file.close()


def _why(exc: BaseException) -> str:
    """The reason a reader gave, on one line."""
    if isinstance(exc, (struct.error, EOFError, zlib.error, gzip.BadGzipFile)):
        return "truncated or corrupt"
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


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
    ):
        super().__init__(name, frame_filter, on_event)
        self.path = path
        self.speed = speed
        self.channels = tuple(str(c) for c in channels)
        self.malformed = 0
        self.messages = 0  # messages python-can's reader handed out, frames or not

    def batches(self, stop: threading.Event) -> Iterator[list[Frame]]:
        raw = self._read()
        paced = self._paced(raw, stop) if self.speed > 0 else raw
        for batch in paced:
            if stop.is_set():
                return
            self.frames_read += len(batch)
            yield batch

    def _read(self) -> Iterator[list[Frame]]:
        try:
            with self._open(binary=True) as file:
                head = file.read(4096)
        except OSError as exc:
            raise ReplayError(self.path, f"cannot open it: {exc.strerror or exc}") from None
        except (EOFError, zlib.error, gzip.BadGzipFile):
            raise ReplayError(self.path, "not a gzip file, or a truncated one") from None
        fmt = self._format()
        magic = _MAGIC.get(fmt)
        if magic is not None and not head.startswith(magic):
            raise ReplayError(self.path, f"not {'an' if fmt == 'mf4' else 'a'} {fmt.upper()} file (it does not start with {magic.decode()})")
        if fmt in _TEXT_FORMATS and b"\0" in head:
            raise ReplayError(self.path, f"not a text file, so not {fmt.upper()} (it holds binary data)")
        if fmt == "candump":
            with self._open() as lines:
                self._check_candump(lines)
            with self._open() as lines:
                yield from read_candump(lines, self.frame_filter, self.channels, self._malformed)
        else:
            yield from self._read_with_python_can(fmt)

    def _format(self) -> str:
        """The log's format: by extension, or by content for a candump log under any other name."""
        suffixes = [s.lower() for s in Path(self.path).suffixes[-2:]]
        suffix = suffixes[-2] if suffixes[-1:] == [".gz"] and len(suffixes) == 2 else (suffixes or [""])[-1]
        fmt = _BY_SUFFIX.get(suffix)
        if fmt is not None:
            if fmt == "mf4" and suffixes[-1] == ".gz":
                raise ReplayError(self.path, "a compressed .mf4 cannot be read; unpack it first")
            return fmt
        if suffix in (".candump", ".txt"):
            return "candump"
        with self._open() as lines:
            if self._looks_like_candump(lines):
                return "candump"
        named = f"'{suffix}'" if suffix else "(no extension)"
        raise ReplayError(self.path, f"unknown log format {named}: expected {KNOWN_FORMATS}")

    def _open(self, binary: bool = False) -> IO:
        opener = gzip.open if self.path.lower().endswith(".gz") else open
        if binary:
            return opener(self.path, "rb")
        return opener(self.path, "rt", encoding="utf-8", errors="replace", newline=None)

    @staticmethod
    def _meaningful(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
        """(line number, line) of the first lines that are neither blank nor comments."""
        seen = 0
        for number, line in enumerate(lines, start=1):
            text = line.strip()
            if text and not text.startswith("#"):
                yield number, text
                seen += 1
                if seen >= _SNIFF_LINES:
                    return

    def _looks_like_candump(self, lines: Iterable[str]) -> bool:
        first = next(self._meaningful(lines), None)
        return first is not None and _CANDUMP_LINE.match(first[1]) is not None

    def _check_candump(self, lines: Iterable[str]) -> None:
        """A candump log's first frame line must be one; later malformed lines are skipped and reported."""
        first = next(self._meaningful(lines), None)
        if first is None:
            raise ReplayError(self.path, "no frames in it (empty, or only comments)")
        number, text = first
        if not _CANDUMP_LINE.match(text):
            raise ReplayError(self.path, f"not a candump log: line {number}: {text[:40]!r} is not '(TIME) CHANNEL ID#DATA'")

    def _malformed(self, number: int, line: str, reason: str) -> None:
        self.malformed += 1
        if self.malformed <= _MAX_REPORTED_LINES:
            log.warning("%s:%d: skipped malformed line (%s): %s", self.path, number, reason, line.strip()[:80])
            self.on_event("malformed-input", {"file": self.path, "line": number, "reason": reason})
        elif self.malformed == _MAX_REPORTED_LINES + 1:
            log.warning("%s: more malformed lines; not reporting each", self.path)

    def _reader(self, fmt: str, lines: _CountedLines | None) -> Iterable:
        """python-can's reader for the format, asked for absolute times where it has a choice."""
        import can

        if fmt == "asc":
            return can.ASCReader(lines, relative_timestamp=False)
        if fmt == "trc":
            return can.TRCReader(lines)
        if fmt == "blf":
            return can.BLFReader(self._open(binary=True))
        from carledger._imports import enable_mf4

        try:
            enable_mf4()
        except ImportError as exc:
            raise ReplayError(self.path, str(exc)) from None
        # asammdf's __del__ on a file it failed to open raises again and Python prints that
        # as a traceback; the reason is taken first, and the half-made reader dies quietly.
        why, hook = "", sys.unraisablehook
        sys.unraisablehook = lambda unraisable: None
        try:
            try:
                return can.io.mf4.MF4Reader(self.path)
            except Exception as exc:
                why = _why(exc)
            gc.collect()  # the half-made reader sits in a reference cycle
        finally:
            sys.unraisablehook = hook
        raise ReplayError(self.path, f"cannot read it as MF4: {why}")

    def _trc_start(self) -> float:
        """Seconds to add to a TRC file's times: its `Start time:` comment when it has no $STARTTIME.

        The comment is read as UTC, as python-can reads $STARTTIME: where a
        file has both, they agree that way.
        """
        start = 0.0
        with self._open() as file:
            for line in file:
                if not line.startswith(";") or line.startswith(";$STARTTIME"):
                    return 0.0 if line.startswith(";$STARTTIME") else start
                found = _TRC_START_COMMENT.match(line)
                if found and not start:
                    day, month, year, hour, minute, second, ms = found.groups()
                    stamp = datetime.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                                              int((ms or "0").ljust(3, "0")) * 1000, tzinfo=datetime.timezone.utc)
                    start = stamp.timestamp()
        return start

    def _read_with_python_can(self, fmt: str) -> Iterator[list[Frame]]:
        lines = _CountedLines(self._open()) if fmt in _TEXT_FORMATS else None
        reader = None
        self.messages = 0
        try:
            start = self._trc_start() if fmt == "trc" else 0.0
            reader = self._reader(fmt, lines)
            yield from self._python_can_batches(reader, start)
        except ReplayError:
            raise
        except Exception as exc:  # whatever a reader raises on a damaged file: one line, no traceback
            where = f"line {lines.number}: " if lines is not None and lines.number else ""
            after = f" after {self.messages} frames" if self.messages else ""
            raise ReplayError(self.path, f"{where}cannot read it as {fmt.upper()}{after}: {_why(exc)}") from None
        finally:
            if reader is not None:
                reader.stop()
            elif lines is not None:
                lines.close()

    def _python_can_batches(self, reader: Iterable, start: float) -> Iterator[list[Frame]]:
        wanted: dict[int, bool] = {}
        flt = self.frame_filter
        batch: list[Frame] = []
        for msg in reader:
            self.messages += 1
            if msg.is_error_frame or msg.is_remote_frame:
                continue
            if self.channels and str(msg.channel) not in self.channels:
                continue
            key = frame_key(msg.arbitration_id, msg.is_extended_id)
            ok = wanted.get(key)
            if ok is None:
                ok = wanted[key] = flt is None or flt.matches(key)
            if ok:
                batch.append((msg.timestamp + start, key, bytes(msg.data)))
                if len(batch) >= 2048:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def _paced(self, raw: Iterator[list[Frame]], stop: threading.Event) -> Iterator[list[Frame]]:
        """Re-cut batches so each frame is handed on when its recorded time has come."""
        start_wall: float | None = None
        start_t = 0.0
        for batch in raw:
            out: list[Frame] = []
            for frame in batch:
                if start_wall is None:
                    start_wall, start_t = time.monotonic(), frame[0]
                due = start_wall + (frame[0] - start_t) / self.speed
                delay = due - time.monotonic()
                if delay > 0.005:
                    if out:
                        yield out
                        out = []
                    if stop.wait(delay):
                        return
                out.append(frame)
            if out:
                yield out
