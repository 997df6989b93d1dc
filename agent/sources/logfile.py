"""A recorded log on disk: which format it is, and python-can's messages of it with absolute times.

A candump log is recognised by its content whatever its name (``.log``,
``.candump``, ``.txt``, none); ``.asc``, ``.blf``, ``.trc`` and ``.mf4`` (with
asammdf, the ``carledger[mf4]`` extra) by their extension, optionally ``.gz``.
Whatever cannot be read raises `ReplayError`: one line naming the file and the
reason (and the line, for text formats), never a traceback.

Times are absolute wherever the file states its start: an ASC file's ``date``
header (the recording machine's local time, read in this process's time zone),
a BLF header's start time, a TRC file's ``$STARTTIME`` (or, in TRC 1.0, its
``Start time:`` comment, read as UTC like ``$STARTTIME``), an MF4 header.
Where a file states no start (an ASC without ``date``, a TRC without either),
times stay as the file gives them. Nothing signs these times: they come from
the owner's own log and only say when the replayed samples happened, as a
live bus's clock would; a wrong date cannot release a sample to a recipient
outside a window the owner's policy already grants.
"""

from __future__ import annotations

import datetime
import gc
import gzip
import re
import struct
import sys
import zlib
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

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


class LogFile:
    """One log file: `format()` says what it is (or raises), `messages(fmt)` reads it through python-can."""

    def __init__(self, path: str):
        self.path = path
        self.messages_read = 0  # messages python-can's reader handed out, frames or not

    def open(self, binary: bool = False) -> IO:
        opener = gzip.open if self.path.lower().endswith(".gz") else open
        if binary:
            return opener(self.path, "rb")
        return opener(self.path, "rt", encoding="utf-8", errors="replace", newline=None)

    def format(self) -> str:
        """'candump', 'asc', 'blf', 'trc' or 'mf4', after checking the file looks like one."""
        try:
            with self.open(binary=True) as file:
                head = file.read(4096)
        except OSError as exc:
            raise ReplayError(self.path, f"cannot open it: {exc.strerror or exc}") from None
        except (EOFError, zlib.error, gzip.BadGzipFile):
            raise ReplayError(self.path, "not a gzip file, or a truncated one") from None
        fmt = self._by_name()
        magic = _MAGIC.get(fmt)
        if magic is not None and not head.startswith(magic):
            article = "an" if fmt == "mf4" else "a"
            raise ReplayError(self.path, f"not {article} {fmt.upper()} file (it does not start with {magic.decode()})")
        if fmt in _TEXT_FORMATS and b"\0" in head:
            raise ReplayError(self.path, f"not a text file, so not {fmt.upper()} (it holds binary data)")
        if fmt == "candump":
            self._check_candump()
        return fmt

    def _by_name(self) -> str:
        """The format the extension names, or candump when the content says so."""
        suffixes = [s.lower() for s in Path(self.path).suffixes[-2:]]
        suffix = suffixes[-2] if suffixes[-1:] == [".gz"] and len(suffixes) == 2 else (suffixes or [""])[-1]
        fmt = _BY_SUFFIX.get(suffix)
        if fmt is not None:
            if fmt == "mf4" and suffixes[-1] == ".gz":
                raise ReplayError(self.path, "a compressed .mf4 cannot be read; unpack it first")
            return fmt
        if suffix in (".candump", ".txt"):
            return "candump"
        with self.open() as lines:
            first = next(_meaningful(lines), None)
        if first is not None and _CANDUMP_LINE.match(first[1]):
            return "candump"
        named = f"'{suffix}'" if suffix else "(no extension)"
        raise ReplayError(self.path, f"unknown log format {named}: expected {KNOWN_FORMATS}")

    def _check_candump(self) -> None:
        """A candump log's first frame line must be one; later malformed lines are skipped and reported."""
        with self.open() as lines:
            first = next(_meaningful(lines), None)
        if first is None:
            raise ReplayError(self.path, "no frames in it (empty, or only comments)")
        number, text = first
        if not _CANDUMP_LINE.match(text):
            raise ReplayError(self.path, f"not a candump log: line {number}: {text[:40]!r} is not '(TIME) CHANNEL ID#DATA'")

    def messages(self, fmt: str) -> Iterator[Any]:
        """python-can's messages of an asc/blf/trc/mf4 file, times absolute where the file says when it starts."""
        lines = _CountedLines(self.open()) if fmt in _TEXT_FORMATS else None
        reader = None
        self.messages_read = 0
        try:
            start = self._trc_start() if fmt == "trc" else 0.0
            reader = self._reader(fmt, lines)
            for msg in reader:
                self.messages_read += 1
                if start:
                    msg.timestamp += start
                yield msg
        except ReplayError:
            raise
        except Exception as exc:  # whatever a reader raises on a damaged file: one line, no traceback
            where = f"line {lines.number}: " if lines is not None and lines.number else ""
            after = f" after {self.messages_read} frames" if self.messages_read else ""
            raise ReplayError(self.path, f"{where}cannot read it as {fmt.upper()}{after}: {_why(exc)}") from None
        finally:
            if reader is not None:
                reader.stop()
            elif lines is not None:
                lines.close()

    def _reader(self, fmt: str, lines: _CountedLines | None) -> Any:
        """python-can's reader for the format, asked for absolute times where it has a choice."""
        import can

        if fmt == "asc":
            return can.ASCReader(lines, relative_timestamp=False)
        if fmt == "trc":
            return can.TRCReader(lines)
        if fmt == "blf":
            return can.BLFReader(self.open(binary=True))
        return self._mf4_reader()

    def _mf4_reader(self) -> Any:
        """Our streaming reader (carledger.sources.mf4) where it reads the file, else python-can's through asammdf."""
        from carledger.sources.mf4 import Mf4Error, Mf4Reader, Unsupported

        try:
            return Mf4Reader(self.path)
        except Unsupported as exc:
            unsupported = str(exc)
        except (Mf4Error, struct.error, OSError) as exc:
            raise ReplayError(self.path, f"cannot read it as MF4: {_why(exc)}") from None
        from carledger._imports import enable_mf4

        try:
            enable_mf4()
        except ImportError as exc:
            raise ReplayError(self.path, f"{exc} (this file has {unsupported})") from None
        import can.io.mf4

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
        with self.open() as file:
            for line in file:
                if line.startswith(";$STARTTIME"):
                    return 0.0  # python-can applies it
                if not line.startswith(";"):
                    break
                found = _TRC_START_COMMENT.match(line)
                if found and not start:
                    day, month, year, hour, minute, second, _ = (int(g or 0) for g in found.groups())
                    millis = int((found.group(7) or "0").ljust(3, "0"))
                    stamp = datetime.datetime(year, month, day, hour, minute, second, millis * 1000, tzinfo=datetime.timezone.utc)
                    start = stamp.timestamp()
        return start
