"""carledger.times: what counts as a time, with vectors (nan and inf parse as floats and pass comparisons)."""

from __future__ import annotations

import math

import pytest

from carledger.times import LAST_TIME, is_time, parse_time

NOON = 1796472000.0  # 2026-12-05T12:00:00Z


@pytest.mark.parametrize("t, ok", [
    (0, True), (0.0, True), (NOON, True), (LAST_TIME, True),
    (LAST_TIME + 1, False), (-0.5, False), (math.nan, False), (math.inf, False), (-math.inf, False), (1e300, False),
    (True, False), ("1", False), (None, False), (type("Float64", (float,), {})(NOON), True),
])
def test_is_time(t, ok):
    assert is_time(t) is ok


@pytest.mark.parametrize("text, t", [
    ("1796472000", NOON), ("1796472000.25", NOON + 0.25), ("0", 0.0),
    ("2026-12-05T12:00:00Z", NOON), ("2026-12-05T12:00:00", NOON), ("2026-12-05T13:00:00+01:00", NOON),
    ("2026-12-05", NOON - 12 * 3600), ("9999-12-31T23:59:59Z", LAST_TIME),
])
def test_parse_time_takes_posix_seconds_and_iso_8601_naive_as_utc(text, t):
    assert parse_time(text) == t


@pytest.mark.parametrize("text, words", [
    ("nan", "is not a time from 1970 to the year 9999"), ("inf", "is not a time from 1970 to the year 9999"),
    ("-inf", "is not a time from 1970 to the year 9999"), ("1e300", "is not a time from 1970 to the year 9999"),
    ("-5", "is not a time from 1970 to the year 9999"), ("1969-12-31T23:59:59Z", "is not a time from 1970"),
    ("someday", "neither ISO 8601"), ("", "neither ISO 8601"), ("2026-13-01", "neither ISO 8601"),
])
def test_parse_time_refuses_what_no_date_can_show(text, words):
    with pytest.raises(ValueError, match=words):
        parse_time(text)
