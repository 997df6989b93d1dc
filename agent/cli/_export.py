"""Sample exports, one way for every command that writes samples (`log export`, `read`, `edr export`).

One place for what a reader of an export relies on (docs/exports.md):

- the format names: `jsonl` and `csv` everywhere (`SAMPLE_FORMATS`); a
  command adds formats that are not one sample per line next to them
  (`log export --format candump`, and the signed blocks themselves);
- the columns: `COLUMNS`, in this order, in CSV and as the JSON Lines keys;
- the times: `--time iso|epoch|relative`, like candump's `-t`. ISO 8601 UTC
  is the default wherever a person reads (tables, CSV); JSON and JSON Lines,
  which programs read, default to epoch seconds;
- the values: a sample's value as its DBC signal can carry it (`Rounding`),
  at output only. The signed records keep exactly what the decoder gave
  (bit-exact to cantools), so rounding can never change signed data.
"""

from __future__ import annotations

import abc
import argparse
import csv
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Iterable, TextIO

COLUMNS = ("t", "stream", "seq", "name", "message", "signal", "value")
TIME_CHOICES = ("iso", "epoch", "relative")
VSS_ROOT = "Vehicle."  # every COVESA VSS path starts here; no DBC source does in the DBCs we ship
MAX_PLACES = 15  # a double carries 15 significant decimal digits; finer scales are left alone


def add_time_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--time", choices=TIME_CHOICES, metavar="iso|epoch|relative",
        help="how times are written: iso (ISO 8601 UTC, the default for text and CSV), epoch (seconds since "
        "1970, the default for JSON), relative (seconds since the first time written)",
    )


def iso(t: float, places: int = 6) -> str:
    """ISO 8601 UTC: `2026-12-05T12:15:18.022766Z` (places: 0, 3 or 6 digits of the second)."""
    spec = {0: "seconds", 3: "milliseconds"}.get(places, "microseconds")
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec=spec).replace("+00:00", "Z")


class Clock:
    """Times as the reader asked for them; `relative` counts from the first time written."""

    def __init__(self, mode: str | None, *, machine: bool = False, places: int = 6):
        self.mode = mode or ("epoch" if machine else "iso")
        self.machine = machine  # JSON: epoch and relative stay numbers
        self.places = places
        self.zero: float | None = None

    def __call__(self, t: float | None) -> str | float | None:
        if t is None:
            return None if self.machine else "-"
        if self.mode == "iso":
            return iso(t, self.places)
        if self.mode == "relative":
            if self.zero is None:
                self.zero = t
            t -= self.zero
        if self.machine:
            return round(t, 6)
        return f"{t:.{self.places}f}"


def _places(number: float | int) -> int:
    exponent = Decimal(repr(number)).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else MAX_PLACES + 1


class Rounding:
    """A sample's value to the resolution its DBC signal can carry: `58.48`, not `58.480000000000004`.

    With the DBC (`--dbc`), a value of signal MESSAGE.SIGNAL is rounded to
    the decimal places of that signal's scale and offset: raw × scale + offset
    has no more. Without it, a float is written with 15 significant digits:
    every decimal of 15 digits or fewer survives a double exactly, so this
    removes the binary noise of `raw × 0.01` and never a digit a DBC value has.
    Integers, text and values of IEEE float signals are written as they are.
    """

    def __init__(self, databases: Iterable[Any] = ()):
        self.places: dict[str, int] = {}
        for db in databases:
            for message in db.messages:
                for signal in message.signals:
                    if signal.is_float:
                        continue
                    places = max(_places(signal.scale), _places(signal.offset))
                    if places <= MAX_PLACES:
                        self.places[f"{message.name}.{signal.name}"] = places

    def __call__(self, source: str | None, value: Any) -> Any:
        if type(value) is not float or not math.isfinite(value):
            return value
        places = self.places.get(source) if source else None
        if places is not None:
            return round(value, places)
        return float(f"{value:.{MAX_PLACES}g}")


def rounding_from(dbc_paths: list[str], prog: str = "carledger") -> Rounding | None:
    """Rounding by the DBCs given (--dbc); None, with one line naming the file, when one cannot be read."""
    import sys

    from carledger.decode import DbcError, load_dbc

    try:
        return Rounding(load_dbc(path).database for path in dbc_paths)
    except DbcError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None


def sample_row(stream: str, seq: int, sample: Any, clock: Clock, rounding: Rounding) -> dict[str, Any]:
    """The COLUMNS of one sample: `message` and `signal` from its source (docs/exports.md#columns)."""
    source = sample.source or sample.name
    if source.startswith(VSS_ROOT):  # computed from a signal the car names by its VSS path (delta-V)
        message, signal = "", source
    else:
        message, _, signal = source.partition(".")
    return {
        "t": clock(sample.t / 1e6), "stream": stream, "seq": seq, "name": sample.name,
        "message": message, "signal": signal, "value": rounding(sample.source, sample.value),
    }


def event_row(stream: str, seq: int, event: Any, clock: Clock) -> dict[str, Any]:
    return {"t": clock(event.t / 1e6), "stream": stream, "seq": seq, "event": event.kind, "detail": event.detail}


#: A float JSON has no number for (RFC 8259), as the text proto3's JSON mapping gives it: Python's float(),
#: JavaScript's Number() and Go's strconv.ParseFloat read these back.
NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _spelled(value: Any) -> Any:
    """`value` with every NaN or infinity in it (values, keys, nested) as its NON_FINITE text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else NON_FINITE[repr(float(value))]
    if isinstance(value, dict):
        return {_spelled(k): _spelled(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_spelled(v) for v in value]
    return value


def to_json(doc: Any, **options: Any) -> str:
    """json.dumps, as valid JSON whatever the floats are: NaN and infinity as "NaN", "Infinity", "-Infinity".

    An IEEE float signal can carry them, and json.dumps writes them bare (`NaN`), which JSON has no
    place for: JavaScript's JSON.parse and Go's encoding/json reject the whole line. The common case,
    no such float, costs one dumps as before.
    """
    try:
        return json.dumps(doc, allow_nan=False, **options)
    except ValueError:
        return json.dumps(_spelled(doc), allow_nan=False, **options)


def json_default(value: Any) -> Any:
    """Bytes in event details as hex; anything else JSON has no type for as text."""
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


class SampleWriter(abc.ABC):
    """Writes rows of one format; `events` says whether the format carries declared events."""

    events = False

    def __init__(self, out: TextIO):
        self.out = out

    @abc.abstractmethod
    def sample(self, row: dict[str, Any]) -> None:
        """Writes one sample row (docs/exports.md: the columns)."""

    def event(self, row: dict[str, Any]) -> None:
        """Formats without events leave them out (docs/exports.md)."""


class JsonLines(SampleWriter):
    events = True

    def sample(self, row: dict[str, Any]) -> None:
        self.out.write(to_json(row) + "\n")

    def event(self, row: dict[str, Any]) -> None:
        self.out.write(to_json(row, default=json_default) + "\n")


class Csv(SampleWriter):
    def __init__(self, out: TextIO):
        super().__init__(out)
        self.writer = csv.writer(out)
        self.writer.writerow(COLUMNS)

    def sample(self, row: dict[str, Any]) -> None:
        self.writer.writerow([row[c] for c in COLUMNS])


@dataclass(frozen=True)
class Format:
    name: str
    help: str
    writer: Callable[[TextIO], SampleWriter]
    machine: bool  # read by programs: times default to epoch numbers


SAMPLE_FORMATS: dict[str, Format] = {
    "jsonl": Format("jsonl", "one JSON object per line (declared events too, with --events)", JsonLines, True),
    "csv": Format("csv", f"a header ({','.join(COLUMNS)}), then one sample per line", Csv, False),
}

