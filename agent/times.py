"""What counts as a time: the range every recorded time, the owner's and the car's, must lie in.

Times are float seconds since 1970 (UTC). Python's float() takes nan, inf
and 1e300, and NaN passes every range check written as comparisons that
must be false; so a value that comes from outside (a log line, a request,
a form) is checked with `is_time` before anything keeps it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

#: 9999-12-31T23:59:59Z: the last time a date can show (every export, the audit, local time). A recorded log
#: whose times run from its start begins at 0, so 0 is the first.
LAST_TIME = 253402300799.0


def is_time(t: Any) -> bool:
    """A number (not a bool) from 0 to `LAST_TIME`: False for nan, inf and anything no date can show.

    Subclasses of float count (a reader built on numpy may hand on numpy.float64).
    """
    return isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= LAST_TIME


def iso_seconds(text: str) -> float:
    """An ISO 8601 date or date-time as POSIX seconds (without an offset: UTC); ValueError when it is none."""
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def require_time(text: str, t: float) -> float:
    """`t`, read from `text`, if it is a time (`is_time`); ValueError naming `text` otherwise."""
    if not is_time(t):
        raise ValueError(f"{text!r} is not a time from 1970 to the year 9999")
    return t


def parse_time(text: str) -> float:
    """A time typed on a command line: POSIX seconds, or ISO 8601 (without an offset: UTC). ValueError otherwise."""
    try:
        t = float(text)
    except ValueError:
        try:
            t = iso_seconds(text)
        except ValueError:
            raise ValueError(f"{text!r}: neither ISO 8601 (2026-12-05T12:00:00Z) nor POSIX seconds") from None
    return require_time(text, t)
