"""The owner's policy file: parsed and validated into frozen dataclasses.

Validation collects every problem in the file (not just the first) as a
`FieldError` printed ``FILE:LINE: field: message``; `docs/policy.md` is the
schema, `docs/policy.example.toml` the commented example.

Default is no collection: an empty or missing policy has no streams, and a
signal reaches a stream only when one of its patterns names it *and* the
signal's class (technical, location, personal) is allowed for that stream.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import date, datetime, time, timedelta, timezone
from difflib import get_close_matches
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Iterable

from carledger.configtable import NAME
from carledger.ledger.block import valid_stream_name
from carledger.policy.classes import CLASSES, LOCATION, PERSONAL, TECHNICAL, Classifier
from carledger.policy.duration import DurationError, parse_duration
from carledger.tomlfile import FieldError, KeyLocator, TomlDocument, parse_toml, read_toml

#: The longest consent the policy accepts: consent must be renewed at least this often.
MAX_CONSENT = timedelta(days=731)
MAX_CONSENT_TEXT = "2 years"
#: Streams the agent writes itself (carledger.pipeline.HEALTH_STREAM); a policy cannot define them.
RESERVED_STREAMS = frozenset({"health", "audit", "crash"})
#: Crash capture defaults (docs/edr.md): Part 563 keeps two non-deployment events.
EDR_KEEP_NON_DEPLOYMENT = 2
EDR_POST = 5.0  # seconds recorded after the end of the event
EDR_EVENT_TIMEOUT = 0.3  # seconds after the trigger by which the event has ended at the latest
EDR_OWNER_KEY = "owner"
AGGREGATE_FUNCTIONS = ("min", "max", "mean", "count")
METRICS = ("distance", "harsh_braking", "harsh_acceleration", "night_driving", "over_speed")
IDENTITIES = ("pseudonym", "vin")
MAX_VERSION = 2**53 - 1  # a policy version stays exact as a JSON number (IEEE double)
DEFAULT_HARSH_BRAKING = 4.0  # m/s^2 of deceleration
DEFAULT_HARSH_ACCELERATION = 3.0  # m/s^2
DEFAULT_NIGHT = ("22:00", "05:00")
MAX_DECIMALS = 8
IGNITION_ON = ("ON", "START")  # VSS LowVoltageSystemState values of a running ignition (terminal 15)
IGNITION_SILENCE = 30.0  # seconds without a frame on any bus that end an ignition cycle
MAX_IGNITION_SILENCE = 86400.0
MAX_GEOHASH = 12

_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")

KnownSignals = Iterable["str | tuple[str, str | None]"]


# -- errors -------------------------------------------------------------------------


class PolicyError(Exception):
    """An invalid policy; `problems` lists every problem found, in file order."""

    def __init__(self, problems: list[FieldError]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PolicyUnreadable(PolicyError):
    """The policy file does not exist or cannot be read (as opposed to: it has mistakes)."""


# -- the document -------------------------------------------------------------------


@dataclass(frozen=True)
class Zone:
    """A privacy zone: a circle (lat, lon, radius_m) or a polygon of (lat, lon) points."""

    name: str
    lat: float | None = None
    lon: float | None = None
    radius_m: float | None = None
    polygon: tuple[tuple[float, float], ...] = ()

    def contains(self, lat: float, lon: float) -> bool:
        if self.polygon:
            return _in_polygon(lat, lon, self.polygon)
        assert self.lat is not None and self.lon is not None and self.radius_m is not None
        return _distance_m(self.lat, self.lon, lat, lon) <= self.radius_m


@dataclass(frozen=True)
class Consent:
    granted: datetime
    expires: datetime

    def valid_at(self, when: datetime) -> bool:
        return self.granted <= when < self.expires


@dataclass(frozen=True)
class LocationPrecision:
    """Location coarsening: round to `decimals` places, or to a geohash of `geohash` characters."""

    decimals: int | None = None
    geohash: int | None = None

    def cell_m(self) -> float:
        """The size of a cell in metres (the longer side; at the equator)."""
        if self.decimals is not None:
            return 111_320.0 / 10**self.decimals
        bits = 5 * (self.geohash or 0)
        lon_bits = (bits + 1) // 2
        return 40_075_000.0 / 2**lon_bits


@dataclass(frozen=True)
class Aggregate:
    """Window aggregates computed in the car: `functions` of `signals` over `window` seconds."""

    signals: tuple[str, ...]
    window: float
    functions: tuple[str, ...]


@dataclass(frozen=True)
class Metrics:
    """Scores computed in the car; only their results leave (per trip, or every `every` seconds)."""

    distance: bool = False
    harsh_braking: float | None = None  # threshold, m/s^2 of deceleration
    harsh_acceleration: float | None = None  # threshold, m/s^2
    night_driving: tuple[str, str] | None = None  # ("22:00", "05:00"), local time
    over_speed: float | None = None  # limit, km/h
    every: float | None = None  # seconds; None: once per trip

    def enabled(self) -> tuple[str, ...]:
        return tuple(m for m in METRICS if getattr(self, m) not in (None, False))


@dataclass(frozen=True)
class Stream:
    """What goes to one recipient for one purpose (or stays in the car, when `local`)."""

    name: str
    recipient: str | None = None
    purpose: str | None = None
    local: bool = False
    signals: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()  # classes allowed besides technical, sorted
    raw: bool = True
    min_interval: float | None = None
    precision: tuple[tuple[str, float | int], ...] = ()  # (pattern, quantum), first match wins
    location: LocationPrecision | None = None
    zones: tuple[str, ...] = ()  # privacy zones applied (all by default)
    aggregates: tuple[Aggregate, ...] = ()
    metrics: Metrics | None = None
    retention: float | None = None
    consent: Consent | None = None
    encrypt_to: str | None = None
    identity: str = "pseudonym"
    paused: bool = False

    def classes(self) -> frozenset[str]:
        """The signal classes this stream may carry."""
        return frozenset((TECHNICAL, *self.allow))

    def selects(self, name: str, source: str | None = None) -> bool:
        """Do the stream's raw-signal patterns name this signal (class not considered)?"""
        return self.raw and _matches_any(self.signals, name, source)

    def quantum(self, name: str, source: str | None = None) -> float | int | None:
        """The precision quantum for a signal (first matching pattern), or None for full precision."""
        for pattern, quantum in self.precision:
            if _matches(pattern, name, source):
                return quantum
        return None

    def active_at(self, when: datetime) -> bool:
        """Not paused, and local or under a consent valid at `when`."""
        if self.paused:
            return False
        return self.local or (self.consent is not None and self.consent.valid_at(when))


@dataclass(frozen=True)
class CrashCapture:
    """The `[edr]` section: crash captures, encrypted to `keys`, released only to `recipient` under `consent`."""

    keys: tuple[tuple[str, str], ...]  # (name, X25519 public key as hex); "owner" always among them
    keep_non_deployment: int = EDR_KEEP_NON_DEPLOYMENT
    post: float = EDR_POST
    event_timeout: float = EDR_EVENT_TIMEOUT
    recipient: str | None = None
    purpose: str | None = None
    consent: Consent | None = None

    def released_at(self, when: datetime) -> bool:
        """May captures leave the car at `when` (to `recipient`)?"""
        return self.recipient is not None and self.consent is not None and self.consent.valid_at(when)


@dataclass(frozen=True)
class Ignition:
    """The `[ignition]` section: classes off at every ignition cycle until the owner allows them.

    China's 2021 automotive data provisions: "default no collection, each
    time". A cycle begins when `signal` turns to one of `on` (from another
    value), or when the first frame comes after `silence` seconds without any.
    """

    each_drive: tuple[str, ...]  # classes switched off at each ignition, sorted
    signal: str | None = None  # VSS name or DBC Message.Signal of the ignition state
    on: tuple[str | int, ...] = IGNITION_ON
    silence: float = IGNITION_SILENCE


@dataclass(frozen=True)
class Policy:
    version: int = 0
    paused: bool = False
    classes: tuple[tuple[str, str], ...] = ()
    zones: tuple[Zone, ...] = ()
    streams: tuple[Stream, ...] = ()
    edr: CrashCapture | None = None  # no [edr] section: no crash capture
    ignition: Ignition | None = None  # no [ignition] section: classes stay on across drives
    path: str | None = field(default=None, compare=False)

    @classmethod
    def empty(cls, path: str | None = None) -> "Policy":
        """No policy: no streams, nothing collected but the agent's own health."""
        return cls(path=path)

    def stream(self, name: str) -> Stream:
        for stream in self.streams:
            if stream.name == name:
                return stream
        raise KeyError(f"no stream {name!r} in the policy")

    def zone(self, name: str) -> Zone:
        for zone in self.zones:
            if zone.name == name:
                return zone
        raise KeyError(f"no zone {name!r} in the policy")

    def classifier(self) -> Classifier:
        return Classifier(self.classes)

    def effective_class(self, name: str, source: str | None = None) -> str:
        """The signal's class: the policy's [classes] override, else the default from its VSS branch."""
        return self.classifier().classify(name, source)

    def allowed(self, stream: Stream | str, name: str, source: str | None = None) -> bool:
        """May the raw signal go to `stream`: a pattern names it and its class is allowed there."""
        s = self.stream(stream) if isinstance(stream, str) else stream
        return s.selects(name, source) and self.effective_class(name, source) in s.classes()

    def active_streams(self, when: datetime) -> tuple[Stream, ...]:
        """Streams collecting at `when`: none while the policy is paused."""
        if self.paused:
            return ()
        return tuple(s for s in self.streams if s.active_at(when))

    def canonical(self) -> dict[str, Any]:
        """The parsed document as plain data (lists, floats, UTC date-time strings); no file path."""
        out = {
            "version": self.version,
            "paused": self.paused,
            "classes": [list(item) for item in self.classes],
            "zones": [plain(z) for z in self.zones],
            "streams": [plain(s) for s in self.streams],
        }
        if self.edr is not None:  # absent, not null: digests of policies without [edr] stay what they were
            out["edr"] = plain(self.edr)
        if self.ignition is not None:  # likewise absent when there is no [ignition]
            out["ignition"] = plain(self.ignition)
        return out

    def digest(self) -> bytes:
        """SHA-256 of the deterministic CBOR of `canonical()`: what blocks name as their policy."""
        from carledger.ledger.cbor import encode

        return hashlib.sha256(encode(self.canonical())).digest()


def plain(value: Any) -> Any:
    """Dataclasses, tuples and date-times as JSON/CBOR-friendly data (map keys are field names)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value) if f.compare}
    if isinstance(value, (tuple, list, frozenset, set)):
        items = sorted(value) if isinstance(value, (frozenset, set)) else value
        return [plain(v) for v in items]
    if isinstance(value, datetime):
        return format_time(value)
    return value


def format_time(when: datetime) -> str:
    """UTC RFC 3339 with Z, seconds precision unless there is a fraction."""
    text = when.astimezone(timezone.utc).replace(tzinfo=None).isoformat()
    return text + "Z"


# -- matching -----------------------------------------------------------------------


def _matches(pattern: str, name: str, source: str | None) -> bool:
    return fnmatchcase(name, pattern) or (source is not None and fnmatchcase(source, pattern))


def _matches_any(patterns: Iterable[str], name: str, source: str | None) -> bool:
    return any(_matches(p, name, source) for p in patterns)


def _known(known: KnownSignals | None) -> tuple[tuple[str, str | None], ...] | None:
    if known is None:
        return None
    items = []
    for item in known:
        if isinstance(item, str):
            items.append((item, None))
        else:
            name, source = item
            items.append((name, source if source != name else None))
    return tuple(items)


def vehicle_signals(dbc_paths: Iterable[str | Path], vss_paths: Iterable[str | Path] | None = None) -> list[tuple[str, str]]:
    """(VSS name or Message.Signal, Message.Signal) of every signal in the DBC files.

    The VSS mapping files default to the ones beside the DBCs (``car.dbc`` ->
    ``car.vss.toml``). Raises `carledger.decode.DbcError` or `FieldError`.
    """
    from carledger.decode import VssMapping, load_dbc

    dbc_paths = [str(p) for p in dbc_paths]
    mapping = VssMapping.load(list(vss_paths) if vss_paths else VssMapping.beside(dbc_paths))
    signals = []
    for path in dbc_paths:
        for message in load_dbc(path).database.messages:
            for signal in message.signals:
                source = f"{message.name}.{signal.name}"
                signals.append((mapping.name(source), source))
    return signals


# -- line numbers ---------------------------------------------------------------------


# -- validation ---------------------------------------------------------------------

_TOP = ("version", "paused", "classes", "zone", "stream", "edr", "ignition")
_IGNITION = ("each_drive", "signal", "on", "silence")
_EDR = ("keys", "keep_non_deployment", "post", "event_timeout", "recipient", "purpose", "consent")
_ZONE = ("name", "lat", "lon", "radius_m", "polygon")
_STREAM = (
    "name", "recipient", "purpose", "local", "signals", "allow", "raw", "min_interval", "precision",
    "location", "zones", "aggregate", "metrics", "retention", "consent", "encrypt_to", "identity", "paused",
)
_CONSENT = ("granted", "expires")
_LOCATION = ("decimals", "geohash")
_AGGREGATE = ("signals", "window", "functions")
_METRICS = (*METRICS, "every")

FieldPath = tuple  # keys and list indices, e.g. ("stream", 1, "consent", "expires")


def _field_name(path: FieldPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if _PLAIN_KEY.match(part) else f'"{part}"'
            out += f".{text}" if out else text
    return out


def _lookup_name(path: FieldPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _Problems:
    def __init__(self, doc: TomlDocument):
        self.doc = doc
        self.locator = KeyLocator(doc.text)
        self.items: list[FieldError] = []

    def add(self, path: FieldPath, message: str) -> None:
        # A missing top-level field has no line of its own: point at the top of the file.
        line = self.locator.line(_lookup_name(path)) or 1
        self.items.append(FieldError(self.doc.path, line, _field_name(path), message))

    def sorted(self) -> list[FieldError]:
        order = {id(p): i for i, p in enumerate(self.items)}
        return sorted(self.items, key=lambda p: (p.line or 0, order[id(p)]))


_MISSING = object()


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    names = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}
    if isinstance(value, datetime):
        return "a date-time"
    if isinstance(value, date):
        return "a date"
    if isinstance(value, time):
        return "a time"
    return names.get(type(value), type(value).__name__)


class _Table:
    """Typed access to one table; each problem is recorded and the value read as absent."""

    def __init__(self, problems: _Problems, data: dict[str, Any], path: FieldPath, allowed: tuple[str, ...], what: str = "field"):
        self.p, self.data, self.path = problems, data, path
        for key in data:
            if key not in allowed:
                close = get_close_matches(key, allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                problems.add((*path, key), f"unknown {what} ({hint}expected one of: {', '.join(allowed)})")

    def at(self, key: str | int, *more: str | int) -> FieldPath:
        return (*self.path, key, *more)

    def error(self, key: str, message: str) -> None:
        self.p.add(self.at(key), message)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> Any:
        return self.data.get(key, _MISSING)

    def typed(self, key: str, kinds: tuple[type, ...], expected: str, *, required: str | None = None) -> Any:
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            if required:
                self.error(key, required)
            return None
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            self.error(key, f"expected {expected}, got {_type_name(value)}")
            return None
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.typed(key, (bool,), "true or false")
        return default if value is None else value

    def text(self, key: str, *, required: str | None = None) -> str | None:
        value = self.typed(key, (str,), "a string", required=required)
        if value is not None and not value.strip():
            self.error(key, "must not be empty")
            return None
        return value

    def number(self, key: str, *, required: str | None = None, positive: bool = False, low: float | None = None, high: float | None = None) -> float | None:
        value = self.typed(key, (int, float), "a number", required=required)
        if value is None:
            return None
        if not math.isfinite(value):
            self.error(key, f"must be a finite number, got {value}")
            return None
        if positive and value <= 0:
            self.error(key, f"must be greater than 0, got {value}")
            return None
        if (low is not None and value < low) or (high is not None and value > high):
            self.error(key, f"must be between {low:g} and {high:g}, got {value}")
            return None
        return float(value)

    def integer(self, key: str, low: int, high: int) -> int | None:
        value = self.typed(key, (int,), "an integer")
        if value is not None and not low <= value <= high:
            self.error(key, f"must be an integer from {low} to {high}, got {value}")
            return None
        return value

    def patterns(self, key: str, *, required: str | None = None) -> tuple[str, ...]:
        value = self.typed(key, (str, list), "a signal pattern or a list of them", required=required)
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        good = []
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item.strip():
                where = self.at(key, i) if isinstance(value, list) else self.at(key)
                self.p.add(where, f"expected a signal pattern (a non-empty string), got {_type_name(item)}")
            else:
                good.append(item)
        return tuple(good)

    def duration(self, key: str, *, positive: bool = False) -> float | None:
        if not self.has(key):
            return None
        try:
            seconds = parse_duration(self.data[key])
        except DurationError as exc:
            self.error(key, str(exc))
            return None
        if positive and seconds <= 0:
            self.error(key, "must be longer than 0")
            return None
        return seconds

    def timestamp(self, key: str, *, required: str | None = None) -> datetime | None:
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            if required:
                self.error(key, required)
            return None
        if isinstance(value, datetime):
            if value.tzinfo is None:
                self.error(key, f"give a time zone: {value.isoformat()}Z (UTC) or with an offset such as +01:00")
                return None
            return value.astimezone(timezone.utc)
        if isinstance(value, date):
            return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
        if isinstance(value, str):
            self.error(key, f"expected a TOML date-time without quotes, like 2027-05-01T00:00:00Z, got the string {value!r}")
            return None
        self.error(key, f"expected a date-time like 2027-05-01T00:00:00Z, got {_type_name(value)}")
        return None

    def table(self, key: str) -> dict[str, Any] | None:
        return self.typed(key, (dict,), "a table")

    def tables(self, key: str, header: str) -> list[tuple[int, dict[str, Any]]]:
        value = self.typed(key, (list,), f"[[{header}]] tables")
        if value is None:
            return []
        good = []
        for i, item in enumerate(value):
            if isinstance(item, dict):
                good.append((i, item))
            else:
                self.p.add(self.at(key, i), f"expected a [[{header}]] table, got {_type_name(item)}")
        return good


class _Validator:
    def __init__(self, doc: TomlDocument, known: KnownSignals | None, now: datetime | None, check_expiry: bool):
        self.doc = doc
        self.p = _Problems(doc)
        self.known = _known(known)
        self.now = now or datetime.now(timezone.utc)
        self.check_expiry = check_expiry
        self.classifier = Classifier()

    # signal-name checks --------------------------------------------------------------

    def matching(self, pattern: str) -> list[tuple[str, str | None]]:
        assert self.known is not None
        return [(n, s) for n, s in self.known if _matches(pattern, n, s)]

    def check_known(self, path: FieldPath, pattern: str) -> bool:
        """Report a pattern that names no signal of the vehicle; True when it names some (or we cannot tell)."""
        if self.known is None or self.matching(pattern):
            return True
        names = [n for n, _ in self.known] + [s for _, s in self.known if s]
        close = get_close_matches(pattern, names, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        self.p.add(path, f"unknown signal pattern {pattern!r}: it matches no signal the vehicle's DBC/VSS mapping knows{hint}")
        return False

    def classes_named(self, pattern: str) -> set[str]:
        """The classes of the signals a pattern names (of the pattern itself when signals are unknown)."""
        if self.known is None:
            return {self.classifier.classify(pattern)}
        return {self.classifier.classify(n, s) for n, s in self.matching(pattern)}

    def check_class(self, path: FieldPath, pattern: str, allowed: frozenset[str], stream_name: str) -> None:
        """A pattern that names only signals of classes the stream does not allow is a mistake."""
        if self.known is not None:
            matched = self.matching(pattern)
            if not matched:
                return
            classes = {self.classifier.classify(n, s): n for n, s in matched}
            if any(c in allowed for c in classes):
                return
            cls, example = sorted(classes.items())[0]
        else:
            cls, example = self.classifier.classify(pattern), pattern
            if cls in allowed:
                return
        shown = f" ({example})" if example != pattern else ""
        self.p.add(
            path,
            f"class not allowed: {pattern!r} names {cls} signals{shown}, which stream {stream_name!r} does not allow; "
            f'add allow = ["{cls}"] to send them',
        )

    # the document --------------------------------------------------------------------

    def run(self) -> Policy | None:
        data = self.doc.data
        if not data:
            return Policy.empty(self.doc.path)
        top = _Table(self.p, data, (), _TOP, "top-level field")
        version = top.typed("version", (int,), "an integer of at least 1", required="required: the policy's version, an integer of at least 1 that only goes up")
        if version is not None and version < 1:
            top.error("version", f"must be an integer of at least 1 (it only goes up), got {version}")
        elif version is not None and version > MAX_VERSION:
            # The bound keeps the version exact everywhere it goes: JSON readers that use doubles,
            # SQLite's 64-bit integers, the signed events that carry it.
            top.error("version", f"must be at most {MAX_VERSION} (2**53 - 1), got {version}")
        paused = top.boolean("paused", False)
        classes = self.classes(top)
        self.classifier = Classifier(classes)
        zones = self.zones(top)
        # Names of every [[zone]], valid or not: a zone's own mistake is not also an "unknown zone" in streams.
        declared = [t.get("name") for t in data.get("zone", []) if isinstance(t, dict)] if isinstance(data.get("zone"), list) else []
        zone_names = tuple(dict.fromkeys([z.name for z in zones] + [n for n in declared if isinstance(n, str)]))
        streams = []
        seen: dict[str, int] = {}
        for index, table in top.tables("stream", "stream"):
            stream = self.stream(index, table, zone_names)
            if stream is None:
                continue
            if stream.name in seen:
                self.p.add(("stream", index, "name"), f"duplicate stream name {stream.name!r} (also stream[{seen[stream.name]}])")
            else:
                seen[stream.name] = index
            streams.append(stream)
        edr = self.edr(top)
        ignition = self.ignition(top)
        if self.p.items:
            return None
        return Policy(
            version=version or 0, paused=paused, classes=classes, zones=zones, streams=tuple(streams), edr=edr,
            ignition=ignition, path=self.doc.path,
        )

    def ignition(self, top: _Table) -> Ignition | None:
        table = top.table("ignition")
        if table is None:
            return None
        t = _Table(self.p, table, ("ignition",), _IGNITION)
        before = len(self.p.items)
        each = self.allow(t, "each_drive")
        if not each and len(self.p.items) == before:
            t.error("each_drive", f'required: the classes switched off at every ignition, e.g. ["{LOCATION}"]')
        signal = t.text("signal")
        if signal is not None:
            self.check_known(t.at("signal"), signal)
        on = t.typed("on", (list,), "a list of the signal's values that mean the ignition is on")
        values: tuple[str | int, ...] = IGNITION_ON
        if on is not None:
            if signal is None:
                t.error("on", "only with signal: the values of that signal that mean the ignition is on")
            bad = [i for i, v in enumerate(on) if isinstance(v, bool) or not isinstance(v, (str, int))]
            for i in bad:
                self.p.add(t.at("on", i), f"expected a value name (\"ON\") or a raw number, got {_type_name(on[i])}")
            if not on:
                t.error("on", "must name at least one value")
            values = tuple(on)
        silence = t.duration("silence", positive=True)
        if silence is not None and silence > MAX_IGNITION_SILENCE:
            t.error("silence", f"must be at most 1 day, got {silence:g} s")
        if len(self.p.items) > before:
            return None
        return Ignition(each_drive=each, signal=signal, on=values,
                        silence=IGNITION_SILENCE if silence is None else silence)

    def edr(self, top: _Table) -> CrashCapture | None:
        table = top.table("edr")
        if table is None:
            return None
        t = _Table(self.p, table, ("edr",), _EDR)
        before = len(self.p.items)
        keys = []
        named = t.table("keys")
        if named is None:
            if not t.has("keys"):
                t.error("keys", f'required: the X25519 public keys captures are encrypted to, at least {{ {EDR_OWNER_KEY} = "64 hex digits" }}')
        else:
            for name, key in named.items():
                where = t.at("keys", name)
                if not NAME.match(name):
                    self.p.add(where, f"{name!r} is not a valid key name (letters, digits, _ . -; at most 63)")
                elif not isinstance(key, str) or not _HEX_KEY.match(key):
                    self.p.add(where, "expected an X25519 public key as 64 hex characters (carledger keygen recipient)")
                else:
                    keys.append((name, key.lower()))
            if EDR_OWNER_KEY not in named:
                t.error("keys", f"required: the owner's key ({EDR_OWNER_KEY} = \"64 hex digits\"); a capture must always be readable by the owner")
        keep = t.integer("keep_non_deployment", 0, 100)
        post = t.duration("post")
        if post is not None and not 0 <= post <= 60:
            t.error("post", f"must be between 0 and 60 seconds, got {post:g}")
        timeout = t.duration("event_timeout")
        if timeout is not None and not 0.02 <= timeout <= 5:
            t.error("event_timeout", f"must be between 20 ms and 5 s, got {timeout:g} s")
        recipient = t.text("recipient")
        purpose = t.text("purpose")
        consent = None
        if recipient is None:
            for key in ("purpose", "consent"):
                if t.has(key):
                    t.error(key, "captures leave the car only to a recipient: add recipient, or remove this")
        else:
            if purpose is None:
                t.error("purpose", "required with recipient: what the recipient may use crash captures for")
            consent = self.consent(t, local=False)
        if len(self.p.items) > before:
            return None
        return CrashCapture(
            keys=tuple(keys), recipient=recipient, purpose=purpose, consent=consent,
            keep_non_deployment=EDR_KEEP_NON_DEPLOYMENT if keep is None else keep,
            post=EDR_POST if post is None else post,
            event_timeout=EDR_EVENT_TIMEOUT if timeout is None else timeout,
        )

    def classes(self, top: _Table) -> tuple[tuple[str, str], ...]:
        table = top.table("classes")
        out = []
        for pattern, cls in (table or {}).items():
            path = ("classes", pattern)
            if not isinstance(cls, str) or cls not in CLASSES:
                shown = repr(cls) if isinstance(cls, str) else _type_name(cls)
                self.p.add(path, f"unknown class {shown} (expected one of: {', '.join(CLASSES)})")
                continue
            if self.check_known(path, pattern):
                out.append((pattern, cls))
        return tuple(out)

    def zones(self, top: _Table) -> tuple[Zone, ...]:
        zones = []
        seen: dict[str, int] = {}
        for index, table in top.tables("zone", "zone"):
            t = _Table(self.p, table, ("zone", index), _ZONE)
            name = t.text("name", required="required: a name for the zone, such as \"home\"")
            if name is not None and not NAME.match(name):
                t.error("name", f"{name!r} is not a valid name (letters, digits, _ . -; at most 63)")
                name = None
            if name is not None:
                if name in seen:
                    t.error("name", f"duplicate zone name {name!r} (also zone[{seen[name]}])")
                seen.setdefault(name, index)
            circle = [k for k in ("lat", "lon", "radius_m") if t.has(k)]
            if t.has("polygon"):
                if circle:
                    t.error(circle[0], "give either lat, lon and radius_m (a circle) or polygon, not both")
                polygon = self.polygon(t)
                if name is not None and polygon is not None:
                    zones.append(Zone(name, polygon=polygon))
                continue
            lat = t.number("lat", required="required: the centre's latitude (or give a polygon)", low=-90, high=90)
            lon = t.number("lon", required="required: the centre's longitude (or give a polygon)", low=-180, high=180)
            radius = t.number("radius_m", required="required: a circular zone needs radius_m (metres)", positive=True)
            if None not in (name, lat, lon, radius):
                zones.append(Zone(name, lat=lat, lon=lon, radius_m=radius))  # type: ignore[arg-type]
        return tuple(zones)

    def polygon(self, t: _Table) -> tuple[tuple[float, float], ...] | None:
        value = t.typed("polygon", (list,), "a list of [lat, lon] points")
        if value is None:
            return None
        points, ok = [], True
        for i, point in enumerate(value):
            path = t.at("polygon", i)
            if (
                not isinstance(point, list) or len(point) != 2
                or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in point)
            ):
                self.p.add(path, "expected a point [lat, lon] of two numbers")
                ok = False
                continue
            lat, lon = float(point[0]), float(point[1])
            if not -90 <= lat <= 90:
                self.p.add(path, f"latitude must be between -90 and 90, got {point[0]}")
                ok = False
            if not -180 <= lon <= 180:
                self.p.add(path, f"longitude must be between -180 and 180, got {point[1]}")
                ok = False
            points.append((lat, lon))
        if len(value) < 3:
            t.error("polygon", f"a polygon needs at least 3 points, got {len(value)}")
            return None
        return tuple(points) if ok else None

    def stream(self, index: int, table: dict[str, Any], zone_names: tuple[str, ...]) -> Stream | None:
        t = _Table(self.p, table, ("stream", index), _STREAM)
        before = len(self.p.items)
        name = t.text("name", required="required: a name for the stream (letters, digits, . : -)")
        if name is not None and not valid_stream_name(name):
            t.error("name", f"{name!r} is not a valid stream name (1-64 of letters, digits, . : -; alphanumeric first)")
        elif name in RESERVED_STREAMS:
            t.error("name", f"{name!r} is the agent's own stream; choose another name")
        label = name or f"stream[{index}]"
        local = t.boolean("local", False)
        if local:
            recipient = t.text("recipient")
            if recipient is not None:
                t.error("recipient", "a local stream has no recipient (its data never leaves the car); remove recipient or local")
            purpose = t.text("purpose")
        else:
            recipient = t.text("recipient", required="required: who receives this stream (or set local = true for data that stays in the car)")
            purpose = t.text("purpose", required="required: what the recipient may use this stream for")

        allow = self.allow(t)
        classes = frozenset((TECHNICAL, *allow))
        raw = t.boolean("raw", True)
        signals = t.patterns("signals")
        for i, pattern in enumerate(signals):
            where = t.at("signals", i) if isinstance(table.get("signals"), list) else t.at("signals")
            if self.check_known(where, pattern):
                self.check_class(where, pattern, classes, label)
        aggregates = self.aggregates(t, classes, label)
        metrics = self.metrics(t)
        if not raw and signals:
            t.error("raw", "raw = false sends no raw signals, but signals are listed; remove them (aggregates and metrics have their own inputs) or set raw = true")
        if not signals and not aggregates and metrics is None:
            t.error("signals", "the stream sends nothing: give signals, [[stream.aggregate]] or [stream.metrics]")
        elif not raw and not aggregates and metrics is None:
            t.error("raw", "raw = false and no aggregate or metrics: the stream sends nothing")

        min_interval = t.duration("min_interval")
        precision = self.precision(t, signals, aggregates)
        location = self.location(t, allow)
        zones = self.stream_zones(t, zone_names)
        retention = t.duration("retention", positive=True)
        consent = self.consent(t, local)
        encrypt_to = t.text("encrypt_to")
        if encrypt_to is not None and not _HEX_KEY.match(encrypt_to):
            t.error("encrypt_to", "expected the recipient's X25519 public key as 64 hex characters")
            encrypt_to = None
        identity = t.text("identity") or "pseudonym"
        if identity not in IDENTITIES:
            t.error("identity", f"unknown identity {identity!r} (expected one of: {', '.join(IDENTITIES)})")
        elif identity == "vin" and PERSONAL not in allow and not local:
            t.error("identity", 'the VIN identifies the owner: add "personal" to allow to send it, or use identity = "pseudonym"')
        paused = t.boolean("paused", False)
        if len(self.p.items) > before or name is None:
            return Stream(name) if name else None
        return Stream(
            name=name, recipient=recipient, purpose=purpose, local=local, signals=signals, allow=allow, raw=raw,
            min_interval=min_interval, precision=precision, location=location, zones=zones, aggregates=aggregates,
            metrics=metrics, retention=retention, consent=consent, encrypt_to=encrypt_to.lower() if encrypt_to else None,
            identity=identity, paused=paused,
        )

    def allow(self, t: _Table, key: str = "allow") -> tuple[str, ...]:
        """A list of sensitive classes (`allow`, `[ignition].each_drive`); technical is always on."""
        value = t.typed(key, (list, str), f'a list of classes: {", ".join(repr(c) for c in (LOCATION, PERSONAL))}')
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        out = set()
        for i, item in enumerate(items):
            path = t.at(key, i) if isinstance(value, list) else t.at(key)
            if not isinstance(item, str) or item not in CLASSES:
                shown = repr(item) if isinstance(item, str) else _type_name(item)
                self.p.add(path, f"unknown class {shown} (expected one of: {', '.join(CLASSES)})")
            elif item != TECHNICAL:
                out.add(item)
            elif key != "allow":
                self.p.add(path, f"technical signals cannot be switched off per drive (expected {LOCATION!r} or {PERSONAL!r})")
        return tuple(sorted(out))

    def aggregates(self, t: _Table, classes: frozenset[str], label: str) -> tuple[Aggregate, ...]:
        out = []
        for i, table in t.tables("aggregate", "stream.aggregate"):
            a = _Table(self.p, table, t.at("aggregate", i), _AGGREGATE)
            signals = a.patterns("signals", required="required: the signals to aggregate")
            for j, pattern in enumerate(signals):
                where = a.at("signals", j) if isinstance(table.get("signals"), list) else a.at("signals")
                if self.check_known(where, pattern):
                    self.check_class(where, pattern, classes, label)
                    if LOCATION in self.classes_named(pattern):
                        self.p.add(where, f"location signals cannot be aggregated ({pattern!r}): a mean position would show "
                                          "where the car spends its time, privacy zones included; send coarsened location instead")
            window = a.duration("window", positive=True)
            if not a.has("window"):
                a.error("window", 'required: the window length, e.g. 60 or "1m"')
            functions = a.typed("functions", (list,), f"a list of: {', '.join(AGGREGATE_FUNCTIONS)}", required=f"required: a list of: {', '.join(AGGREGATE_FUNCTIONS)}")
            good = []
            for j, fn in enumerate(functions or []):
                if fn not in AGGREGATE_FUNCTIONS:
                    shown = repr(fn) if isinstance(fn, str) else _type_name(fn)
                    self.p.add(a.at("functions", j), f"unknown function {shown} (expected one of: {', '.join(AGGREGATE_FUNCTIONS)})")
                elif fn not in good:
                    good.append(fn)
            if functions is not None and not functions:
                a.error("functions", f"give at least one of: {', '.join(AGGREGATE_FUNCTIONS)}")
            if signals and window and good:
                out.append(Aggregate(signals, window, tuple(good)))
        return tuple(out)

    def metrics(self, t: _Table) -> Metrics | None:
        table = t.table("metrics")
        if table is None:
            return None
        before = len(self.p.items)
        m = _Table(self.p, table, t.at("metrics"), _METRICS, "metric")
        distance = m.boolean("distance", False)
        braking = self.threshold(m, "harsh_braking", "threshold", DEFAULT_HARSH_BRAKING)
        accel = self.threshold(m, "harsh_acceleration", "threshold", DEFAULT_HARSH_ACCELERATION)
        over = self.threshold(m, "over_speed", "limit", None)
        night = self.night(m)
        every = None
        if m.has("every") and m.raw("every") != "trip":
            every = m.duration("every", positive=True)
        result = Metrics(distance, braking, accel, night, over, every)
        if not result.enabled() and len(self.p.items) == before:
            self.p.add(t.at("metrics"), f"no metric enabled (expected some of: {', '.join(METRICS)})")
        return result

    def threshold(self, m: _Table, key: str, param: str, default: float | None) -> float | None:
        value = m.raw(key)
        if value is _MISSING or value is False:
            return None
        if value is True and default is not None:
            return default
        if not isinstance(value, dict):
            unit = "km/h" if key == "over_speed" else "m/s²"
            m.error(key, f"expected a table such as {{ {param} = {default or 130.0} }} ({unit})" + (" or true" if default else ""))
            return None
        sub = _Table(self.p, value, m.at(key), (param,), "parameter")
        number = sub.number(param, required=f"required: the {param}", positive=True)
        return number

    def night(self, m: _Table) -> tuple[str, str] | None:
        value = m.raw("night_driving")
        if value is _MISSING or value is False:
            return None
        if value is True:
            return DEFAULT_NIGHT
        if not isinstance(value, dict):
            m.error("night_driving", 'expected true or a table such as { from = "22:00", to = "05:00" }')
            return None
        sub = _Table(self.p, value, m.at("night_driving"), ("from", "to"), "parameter")
        times = []
        for key, fallback in zip(("from", "to"), DEFAULT_NIGHT):
            raw = sub.raw(key)
            if raw is _MISSING:
                times.append(fallback)
            elif isinstance(raw, time):
                times.append(raw.strftime("%H:%M"))
            elif isinstance(raw, str) and _CLOCK.match(raw):
                times.append(raw)
            else:
                sub.error(key, f'expected a time of day "HH:MM" such as "{fallback}"')
                return None
        if times[0] == times[1]:
            sub.error("to", "the night must not start and end at the same time")
            return None
        return (times[0], times[1])

    def precision(self, t: _Table, signals: tuple[str, ...], aggregates: tuple[Aggregate, ...]) -> tuple[tuple[str, float | int], ...]:
        table = t.table("precision")
        out = []
        sent = signals + tuple(p for a in aggregates for p in a.signals)
        for pattern, quantum in (table or {}).items():
            path = t.at("precision", pattern)
            if isinstance(quantum, bool) or not isinstance(quantum, (int, float)) or not math.isfinite(quantum) or quantum <= 0:
                self.p.add(path, f"expected a quantum greater than 0 (values are rounded to multiples of it), got {quantum!r}")
                continue
            if not self.check_known(path, pattern):
                continue
            if self.known is not None and not any(_matches_any(sent, n, s) for n, s in self.matching(pattern)):
                self.p.add(path, f"{pattern!r} names no signal this stream sends")
                continue
            out.append((pattern, quantum))  # as written: an int quantum keeps integer values integers
        return tuple(out)

    def location(self, t: _Table, allow: tuple[str, ...]) -> LocationPrecision | None:
        table = t.table("location")
        if table is None:
            return None
        sub = _Table(self.p, table, t.at("location"), _LOCATION)
        decimals = sub.integer("decimals", 0, MAX_DECIMALS)
        geohash = sub.integer("geohash", 1, MAX_GEOHASH)
        if sub.has("decimals") and sub.has("geohash"):
            t.error("location", "give either decimals or geohash, not both")
            return None
        if not sub.has("decimals") and not sub.has("geohash"):
            t.error("location", f"give decimals (0 to {MAX_DECIMALS}) or geohash (1 to {MAX_GEOHASH})")
            return None
        if LOCATION not in allow:
            t.error("location", 'location coarsening is set but the stream does not allow location; add "location" to allow')
            return None
        if decimals is None and geohash is None:
            return None
        return LocationPrecision(decimals=decimals, geohash=geohash)

    def stream_zones(self, t: _Table, zone_names: tuple[str, ...]) -> tuple[str, ...]:
        value = t.typed("zones", (bool, list), "true, false or a list of zone names")
        if value is None or value is True:
            return zone_names
        if value is False:
            return ()
        out = []
        for i, name in enumerate(value):
            if name not in zone_names:
                shown = repr(name) if isinstance(name, str) else _type_name(name)
                known = ", ".join(zone_names) or "none defined"
                self.p.add(t.at("zones", i), f"unknown zone {shown} (zones: {known})")
            elif name not in out:
                out.append(name)
        return tuple(out)

    def consent(self, t: _Table, local: bool) -> Consent | None:
        if local:
            if t.has("consent"):
                t.error("consent", "a local stream needs no consent (its data never leaves the car); remove consent or local")
            return None
        table = t.table("consent")
        if table is None:
            if not t.has("consent"):
                t.error("consent", "required: every stream that leaves the car needs consent = { granted = ..., expires = ... }")
            return None
        c = _Table(self.p, table, t.at("consent"), _CONSENT)
        granted = c.timestamp("granted", required="required: when the owner granted this consent, e.g. 2026-11-01T00:00:00Z")
        expires = c.timestamp("expires", required=f"required: consent must expire (no consent is forever; at most {MAX_CONSENT_TEXT})")
        if granted is None or expires is None:
            return None
        if expires <= granted:
            c.error("expires", f"expires ({format_time(expires)}) before it was granted ({format_time(granted)})")
            return None
        if expires - granted > MAX_CONSENT:
            c.error("expires", f"consent lasts longer than {MAX_CONSENT_TEXT} ({(expires - granted).days} days); it must be renewed at least every {MAX_CONSENT_TEXT}")
            return None
        if self.check_expiry and expires <= self.now:
            c.error("expires", f"consent expired on {format_time(expires)}; renew it (new dates) or remove the stream")
            return None
        return Consent(granted, expires)


# -- entry points ---------------------------------------------------------------------


def parse_policy(
    doc: TomlDocument, known_signals: KnownSignals | None = None, *, now: datetime | None = None, check_expiry: bool = True
) -> tuple[Policy | None, list[FieldError]]:
    """Validate a parsed TOML document: (the policy, []) or (None, every problem in file order)."""
    validator = _Validator(doc, known_signals, now, check_expiry)
    policy = validator.run()
    problems = validator.p.sorted()
    return (None if problems else policy), problems


def _read(path: str | Path, text: str | None = None) -> TomlDocument:
    try:
        return read_toml(path) if text is None else parse_toml(str(path), text)
    except FieldError as exc:
        if exc.message.startswith("TOML syntax"):
            raise PolicyError([exc]) from None
        raise PolicyUnreadable([exc]) from None


def load_policy(
    path: str | Path,
    known_signals: KnownSignals | None = None,
    *,
    now: datetime | None = None,
    check_expiry: bool = True,
    missing_ok: bool = False,
) -> Policy:
    """Read and validate a policy file; raise PolicyError listing every problem.

    `known_signals` (names, or (name, source) pairs such as `vehicle_signals`
    returns) turns on the check that every pattern names a signal of the
    vehicle. With `missing_ok`, a missing file is the empty policy (no
    collection). `check_expiry=False` accepts consents that have expired (for
    showing an old policy); `now` is the time expiry is checked against.
    """
    if missing_ok and not Path(path).exists():
        return Policy.empty(str(path))
    return policy_from_text(path, None, known_signals, now=now, check_expiry=check_expiry)


def policy_from_text(
    name: str | Path,
    text: str | None,
    known_signals: KnownSignals | None = None,
    *,
    now: datetime | None = None,
    check_expiry: bool = True,
) -> Policy:
    """Like `load_policy`, for policy text that came from `name` (read from the file when text is None)."""
    policy, problems = parse_policy(_read(name, text), known_signals, now=now, check_expiry=check_expiry)
    if problems:
        raise PolicyError(problems)
    assert policy is not None
    return policy


def check_policy(path: str | Path, known_signals: KnownSignals | None = None, *, now: datetime | None = None) -> list[FieldError]:
    """Every problem of the policy file (an unreadable file is one problem); [] when valid."""
    try:
        doc = _read(path)
    except PolicyError as exc:
        return exc.problems
    return parse_policy(doc, known_signals, now=now)[1]


# -- geometry -------------------------------------------------------------------------


def _distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine, mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(min(1.0, math.sqrt(a)))


def _in_polygon(lat: float, lon: float, points: tuple[tuple[float, float], ...]) -> bool:
    """Ray casting in the lat/lon plane (zones are small; no antimeridian crossing)."""
    inside = False
    j = len(points) - 1
    for i in range(len(points)):
        yi, xi = points[i]
        yj, xj = points[j]
        if (yi > lat) != (yj > lat) and lon < (xj - xi) * (lat - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


__all__ = [
    "AGGREGATE_FUNCTIONS", "Aggregate", "Consent", "LocationPrecision", "MAX_CONSENT", "METRICS", "Metrics",
    "Policy", "PolicyError", "PolicyUnreadable", "Stream", "Zone", "check_policy",
    "format_time", "load_policy", "parse_policy", "plain", "vehicle_signals",
]
