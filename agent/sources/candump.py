"""candump log files (``(1436509052.249713) can0 123#DEADBEEF``), read fast.

python-can's reader builds a Message object per line; on a Raspberry Pi that
alone costs more than the rest of the pipeline. Here a line is split once, its
identifier string is looked up in a cache that already knows whether the
filter wants it, and only wanted frames get their timestamp and payload
parsed. Malformed lines are reported with their line number and skipped: a
time that is none, and one far ahead of the lines on both sides of it
(`carledger.sources.outlier`).
"""

from __future__ import annotations

import collections
from itertools import islice
from typing import Callable, Iterable, Iterator, TextIO

from carledger.sources.frame import EFF_FLAG, Frame, FrameFilter
from carledger.sources.outlier import OutlierGuard
from carledger.sources.tally import FrameTally

CAN_ERR_FLAG = 0x20000000
CAN_RTR_FLAG = 0x40000000
_SKIP = -1  # cache marker: a valid identifier nobody wants (or an error/remote frame)
_BAD = -2  # cache marker: not a hexadecimal identifier
_CACHE_LIMIT = 1 << 16
_DIRECTIONS = ("R", "T")

MalformedSink = Callable[[int, str, str], None]  # (line number, line, reason)


def _resolve(id_text: str, frame_filter: FrameFilter | None) -> int:
    if not 1 <= len(id_text) <= 8:
        return _BAD
    try:
        can_id = int(id_text, 16)
    except ValueError:
        return _BAD
    extended = len(id_text) > 3
    if can_id & (CAN_ERR_FLAG | CAN_RTR_FLAG) and extended:
        return _SKIP
    key = can_id | EFF_FLAG if extended else can_id
    if frame_filter is not None and not frame_filter.matches(key):
        return _SKIP
    return key


_MALFORMED = b"malformed"  # _other_payload's answer for a payload that is no frame's (compared by identity)


def _other_payload(payload: str) -> bytes | None:
    """The data of a payload that is not plain hex: a CAN FD frame's, None for a remote frame, else _MALFORMED.

    Off the hot path: the frame loop tries plain hex first, as almost every frame is a classic data frame.
    """
    if payload[:1] == "#":  # CAN FD: '##' then one flags nibble
        try:
            return bytes.fromhex(payload[2:])
        except ValueError:
            return _MALFORMED
    if payload[:1] in ("R", "r"):
        return None
    return _MALFORMED


def read_candump(
    lines: Iterable[str],
    frame_filter: FrameFilter | None = None,
    channels: Iterable[str] = (),
    on_malformed: MalformedSink | None = None,
    batch_size: int = 2048,
    tally: FrameTally | None = None,
) -> Iterator[list[Frame]]:
    """Batches of (t, key, data) for the wanted frames of a candump log; `tally` counts what the log held."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    wanted_channels = frozenset(channels)
    tally = tally or FrameTally()
    # Counted cheaply on the hot path: per identifier text; lines that are no frame and frames
    # on other channels on their own (rarer) paths. `_tally` turns them into the log's counts.
    by_id: collections.defaultdict[str, int] = collections.defaultdict(int)
    counted = not_frames = off_channels = number = 0
    cache: dict[str, int] = {}
    batch: list[Frame] = []
    append = batch.append
    fromhex = bytes.fromhex
    guard = OutlierGuard()  # a time far ahead of both neighbours is one damaged line (carledger.sources.outlier)
    low, high = guard.low, guard.high
    lines = iter(lines)
    while True:
        # As many lines as the batch has room for frames (a line is at most one frame): the batch can only
        # fill at a chunk's last line, so that the loop below needs no test per line, and a batch still
        # ends at the line that fills it (the tally at each batch counts the lines up to it).
        chunk = list(islice(lines, batch_size - len(batch)))
        if not chunk:
            break
        for number, line in enumerate(chunk, start=number + 1):
            parts = line.split()
            n = len(parts)
            # python-can's writer appends the direction (R received, T transmitted)
            if n == 4 and parts[3] in _DIRECTIONS:
                stamp, channel, text, _ = parts
            elif n == 3:
                stamp, channel, text = parts
            else:
                if parts and not parts[0].startswith("#") and on_malformed:
                    on_malformed(number, line, "expected '(TIME) CHANNEL ID#DATA'")
                not_frames += 1
                continue
            if wanted_channels and channel not in wanted_channels:
                off_channels += 1
                continue
            id_text, hashed, payload = text.partition("#")
            if not hashed:  # no '#': no frame (and not counted as one)
                if on_malformed:
                    on_malformed(number, line, f"bad identifier {text!r}")
                not_frames += 1
                continue
            by_id[id_text] += 1
            key = cache.get(id_text)
            if key is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                key = cache[id_text] = _resolve(id_text, frame_filter)
            if key < 0:
                if key == _BAD and on_malformed:
                    on_malformed(number, line, f"bad identifier {id_text!r}")
                continue
            try:
                data = fromhex(payload)
            except ValueError:  # not a classic frame's hex payload: CAN FD, a remote frame, or malformed
                data = _other_payload(payload)
                if data is None:
                    continue  # a remote frame
            try:
                if data is _MALFORMED:
                    raise ValueError
                t = float(stamp[1:-1])
            except ValueError:
                if on_malformed:
                    on_malformed(number, line, "bad timestamp or payload")
                continue
            if low <= t <= high:  # a time, near the frames before it: two compares the interpreter specialises
                append((t, key, data))
                continue
            kept, outliers = guard.outside(batch, (t, key, data), (number, line))
            low, high = guard.low, guard.high
            if on_malformed:
                for (at, text), reason in outliers:
                    on_malformed(at, text, reason)
                if not kept:
                    on_malformed(number, line, f"timestamp {stamp[1:-1]!r} is not a time from 0 to year 9999")
        if len(batch) >= batch_size:
            _tally(tally, number - counted - not_frames, off_channels, by_id)
            counted, not_frames, off_channels = number, 0, 0
            after = guard.next_batch(batch)
            low, high = guard.low, guard.high
            yield batch
            batch = after
            append = batch.append
    _tally(tally, number - counted - not_frames, off_channels, by_id)
    if batch:
        yield batch


def _tally(tally: FrameTally, frames: int, off_channels: int, by_id: dict[str, int]) -> None:
    """Move the reader's counts since the last call into `tally` (at each batch, so a stopped replay's stay right)."""
    tally.in_log += frames
    tally.on_channels += frames - off_channels
    keys: dict[int, int] = {}
    for id_text, n in by_id.items():
        key = _resolve(id_text, None)
        if key >= 0:  # a data frame: not a bad identifier, an error or a remote frame
            keys[key] = keys.get(key, 0) + n
    by_id.clear()
    tally.add_keys(keys)


def format_candump(t: float, channel: str, key: int, data: bytes, fd: bool = False) -> str:
    """One candump line for a frame, the inverse of what `read_candump` parses."""
    if key & EFF_FLAG:
        ident = f"{key & 0x1FFFFFFF:08X}"
    else:
        ident = f"{key:03X}"
    sep = "##0" if fd else "#"
    return f"({t:.6f}) {channel} {ident}{sep}{data.hex().upper()}"


def open_text(path: str) -> TextIO:
    return open(path, "r", encoding="ascii", errors="replace", newline=None)


def read_candump_file(path: str, frame_filter: FrameFilter | None = None) -> Iterator[Frame]:
    """Every wanted frame of a candump file, one by one (for tools and tests; the agent uses batches)."""
    with open_text(path) as lines:
        for batch in read_candump(lines, frame_filter):
            yield from batch
