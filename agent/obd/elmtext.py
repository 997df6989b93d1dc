"""The text an ELM327 adapter prints with headers on (ATH1), as CAN frames.

Each answer line is one CAN frame: the identifier (3 hex digits for 11-bit,
8 for 29-bit) and the data bytes, protocol control byte included, with or
without spaces (ATS1/ATS0): ``7E8 03 41 0D 32`` or ``7E803410D32``. Lines
that are not frames (``NO DATA``, ``SEARCHING...``, prompts, voltages) and
lines that cannot be frames (odd digit counts, more than 8 data bytes) are
handed back with the reason they were left out.
"""

from __future__ import annotations

import string

from carledger.sources.frame import EFF_FLAG

__all__ = ["parse_lines"]

_HEX = frozenset(string.hexdigits)


def parse_lines(lines, id_bits: int | None = None) -> tuple[list[tuple[int, bytes]], list[tuple[str, str]]]:
    """(frames as (key, data), rejected lines as (line, reason)) of an adapter's answer.

    `id_bits` 11 or 29 fixes the header length; None tells them apart by the
    digit count (3 + 2n is odd, 8 + 2n even).
    """
    frames: list[tuple[int, bytes]] = []
    rejected: list[tuple[str, str]] = []
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        text = line.replace(" ", "")
        if not set(text) <= _HEX:
            rejected.append((line, "not a frame"))
            continue
        header = 8 if (id_bits == 29 or (id_bits is None and len(text) % 2 == 0)) else 3
        body = text[header:]
        if len(text) <= header:
            rejected.append((line, "a header without data"))
        elif len(body) % 2:
            rejected.append((line, f"odd number of data digits ({len(body)})"))
        elif len(body) > 16:
            rejected.append((line, f"{len(body) // 2} data bytes (a CAN frame has at most 8)"))
        elif header == 8 and int(text[:8], 16) > 0x1FFFFFFF:
            rejected.append((line, f"identifier {text[:8]} is longer than 29 bits"))
        else:
            can_id = int(text[:header], 16)
            frames.append((can_id | EFF_FLAG if header == 8 else can_id, bytes.fromhex(body)))
    return frames, rejected
