"""Durations in the owner's policy: "30d", "12h", "90m", "1h30m", "500ms", or a number of seconds.

Units: ms, s, m (minutes), h, d, w, y (365 days). There are no months: "m" is
minutes, and a month is not a fixed length; write "30d" or "90d".
"""

from __future__ import annotations

import math
import re

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0, "y": 365 * 86400.0}

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w|y))+$")

HINT = 'use a number and a unit: ms, s, m (minutes), h, d, w, y (e.g. "30d", "12h", "90m", "1h30m")'


class DurationError(ValueError):
    """A duration that cannot be read; the message says why and how to write one."""


def parse_duration(value: object) -> float:
    """Seconds in `value`: a number of seconds (>= 0) or a string such as "30d"."""
    if isinstance(value, bool):
        raise DurationError(f"expected a duration, got a boolean; {HINT}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise DurationError(f"must be a duration of at least 0 seconds, got {value}")
        return float(value)
    if not isinstance(value, str):
        raise DurationError(f"expected a duration, got {type(value).__name__}; {HINT}")
    text = value.strip().replace(" ", "")
    if not _WHOLE.match(text):
        if text.startswith("-"):
            raise DurationError(f"{value!r} is negative; a duration is at least 0")
        raise DurationError(f"{value!r} is not a duration; {HINT}")
    return sum(float(number) * UNITS[unit] for number, unit in _PART.findall(text))


def format_duration(seconds: float) -> str:
    """Plain-language form of a duration: "30 days", "12 hours", "1.5 s"."""
    if seconds == 0:
        return "0 s"
    for unit, size in (("year", UNITS["y"]), ("week", UNITS["w"]), ("day", UNITS["d"]), ("hour", UNITS["h"]), ("minute", UNITS["m"])):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    if seconds < 1:
        return f"{seconds * 1000:g} ms"
    return f"{seconds:g} s"


__all__ = ["DurationError", "HINT", "UNITS", "format_duration", "parse_duration"]
