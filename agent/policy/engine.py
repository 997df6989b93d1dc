"""The owner's policy at work on decoded samples: what each active stream records.

The pipeline asks the engine, per decoded signal, for its *consumers*: small
objects with ``offer(t, value)`` that it calls for every new value. A stream
that may not have a signal gets no consumer, so a signal nobody may have is
never even decoded, and an inactive stream (paused, consent expired or
revoked) costs nothing at all. Per stream (`StreamRuntime`):

- a raw signal the stream names and whose class it allows gets a `Tap`
  (on change, minimum interval), rounded to the stream's quantum first;
- latitude and longitude go through the stream's `LocationFilter`
  (coarsening, privacy zones) and only its fixes are recorded; other
  location-class signals are dropped while the position is unknown or in a
  zone; trip start and end go through a `TripDetector` with the same rules;
- on-board metrics and window aggregates are fed their inputs, and only
  their results are recorded.

The engine starts and stops streams as the owner's state says (consent
bounds, revocations, the pause switch, a new policy) and declares each change
as a signed event in the stream's own chain, so a recipient can tell why its
chain ends, pauses or resumes. docs/owner-state.md says which events.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from datetime import tzinfo, timezone
from typing import Any, Callable, Iterable

from carledger.ledger import StreamWriter
from carledger.policy.aggregate import WindowAggregator
from carledger.policy.classes import LOCATION
from carledger.policy.document import Policy, Stream, Zone, _matches_any
from carledger.policy.location import (
    IGNITION,
    LATITUDE,
    LONGITUDE,
    SPEED,
    CircleZone,
    LocationFilter,
    PolygonZone,
    TripDetector,
)
from carledger.policy.metrics import (
    Distance,
    DrivingTime,
    HarshEvents,
    MetricSet,
    NightShare,
    OverSpeedShare,
)
from carledger.policy.precision import quantizer
from carledger.policy.pseudonym import pseudonym
from carledger.sampling import Tap

log = logging.getLogger(__name__)

GEOHASH = "Vehicle.CurrentLocation.Geohash"  # recorded beside the cell center in geohash mode
_LOCATION_INPUTS = (LATITUDE, LONGITUDE)
_TRIP_INPUTS = (SPEED, IGNITION, LATITUDE, LONGITUDE)

MinInterval = Callable[[Stream, str, str], float]


@dataclass
class EngineSettings:
    """What the agent's configuration adds to the policy."""

    min_interval: MinInterval = lambda stream, name, source: stream.min_interval or 0.0
    timezone: tzinfo = timezone.utc  # local time for night driving
    zone_margin_m: float = 50.0  # GPS error and the distance between two fixes, around every zone
    pseudonym_secret: bytes | None = None  # None: recipients see the vehicle id (tests, replays)
    on_event: Callable[[str, dict], None] = field(default=lambda kind, detail: None)


class QuantizedTap(Tap):
    """A tap that rounds to the stream's quantum first, so on-change sampling sees the rounded value."""

    __slots__ = ("quantize", "raw")

    def __init__(self, quantize: Callable[[Any], Any], *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.quantize = quantize
        self.raw: Any = None  # the value last offered, before rounding

    def offer(self, t: float, value: Any) -> None:
        if value == self.raw and not self.pending:
            return  # rounds as the last one did, which the tap holds: a no-op, without rounding again
        self.raw = value
        Tap.offer(self, t, self.quantize(value))


class GuardedTap(Tap):
    """A location-class signal (heading, altitude): recorded only while the position is known to be outside every zone."""

    __slots__ = ("location",)
    on_change_only = False  # a value held back inside a zone is recorded once the car is out of it, unchanged

    def __init__(self, location: LocationFilter, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.location = location

    def offer(self, t: float, value: Any) -> None:
        if not self.location.suppressed(t):
            Tap.offer(self, t, value)


class Feed:
    """Hands every new value of one signal to a processor (location filter, metrics, aggregates).

    `dependents` are taps the processor offers values to (the position's
    taps): the message handler that calls this feed adopts them too, so their
    held-back values are offered again like any tap's.

    `offer(t, value)` is the processor's own callable: a window aggregate's input, or (`Feed.of`)
    `fn(name, t, value)` as a `functools.partial`, called in C, not through a method of this class,
    which was one Python call per sample more (about 1 % of a policy replay's instructions,
    bench_instructions).
    """

    __slots__ = ("offer", "name", "owner", "dependents")

    def __init__(self, offer: Callable[[float, Any], None], name: str, dependents: dict | None = None):
        self.offer = offer
        self.name = name
        self.owner: Any = None
        self.dependents = dependents if dependents is not None else {}

    @classmethod
    def of(cls, fn: Callable[[str, float, Any], None], name: str, dependents: dict | None = None) -> "Feed":
        """A feed whose processor takes the signal's name too: `fn(name, t, value)`."""
        return cls(functools.partial(fn, name), name, dependents)

    def finite_only(self) -> None:
        """Hand on no NaN and no infinity: no reading, which metrics and aggregates would sum into NaN."""
        self.offer = functools.partial(_finite_only, self.offer)


def _finite_only(offer: Callable[[float, Any], None], t: float, value: Any) -> None:
    if type(value) is float and value - value:  # value - value is NaN, which is true, exactly for NaN and infinity
        return  # one NaN speed made a window's distance NaN, an infinite one the mean of a window infinite
    offer(t, value)


def location_zones(zones: Iterable[Zone]) -> list[CircleZone | PolygonZone]:
    out: list[CircleZone | PolygonZone] = []
    for zone in zones:
        if zone.polygon:
            out.append(PolygonZone(zone.polygon))
        else:
            assert zone.lat is not None and zone.lon is not None and zone.radius_m is not None
            out.append(CircleZone(zone.lat, zone.lon, zone.radius_m))
    return out


class StreamRuntime:
    """One active stream: its writer, taps and processors. Lives as long as the stream stays active."""

    def __init__(self, stream: Stream, policy: Policy, writer: StreamWriter, settings: EngineSettings):
        self.stream = stream
        self.writer = writer
        self.settings = settings
        self._classify = policy.classifier().classify
        self._taps: dict[tuple[Any, str, str], Tap] = {}
        self._quanta: dict[str, Callable[[Any], Any] | None] = {}
        loc = stream.location
        decimals = loc.decimals if loc else None
        geohash = loc.geohash if loc else None
        zones = location_zones(z for z in policy.zones if z.name in stream.zones)
        margin = settings.zone_margin_m if zones else 0.0
        # The stream needs to know where the car is when it may carry location: it names
        # the position, or patterns of location signals (heading, altitude ...).
        self.carries_location = stream.raw and LOCATION in stream.classes() and (
            stream.selects(LATITUDE) or stream.selects(LONGITUDE)
            or any(self._classify(p) == LOCATION for p in stream.signals)
        )
        self.location = LocationFilter(zones, decimals, geohash, margin_m=margin) if self.carries_location else None
        self.trips = (
            TripDetector(zones, decimals, geohash, margin_m=margin)
            if self.carries_location and stream.selects(LATITUDE) and stream.selects(LONGITUDE)
            else None
        )
        self.metrics: MetricSet | None = None
        self._trip_bounds: TripDetector | None = None
        if stream.metrics is not None:
            self.metrics = MetricSet(self._metric_list(stream, settings))
            if stream.metrics.every is None:
                self._trip_bounds = TripDetector()  # per-trip metrics: only the trip's bounds are used
        self.aggregators = [
            (agg.signals, WindowAggregator(agg.window, agg.functions, sink=self._record)) for agg in stream.aggregates
        ]
        self._location_taps: dict[str, Tap] = {}

    @staticmethod
    def _metric_list(stream: Stream, settings: EngineSettings) -> list:
        m = stream.metrics
        assert m is not None
        w = m.every
        out: list = []
        if m.distance:
            out.append(Distance(w))
        if m.harsh_braking is not None:
            out.append(HarshEvents("braking", m.harsh_braking, w))
        if m.harsh_acceleration is not None:
            out.append(HarshEvents("acceleration", m.harsh_acceleration, w))
        if m.night_driving is not None:
            out.append(NightShare(w, start=m.night_driving[0], end=m.night_driving[1], tz=settings.timezone))
        if m.over_speed is not None:
            out.append(OverSpeedShare(m.over_speed, w))
        if m.night_driving is not None or m.over_speed is not None:
            out.append(DrivingTime(w))  # the weight that lets a recipient combine shares
        return out

    # -- what the stream takes from a signal ------------------------------------------------

    def consumers(self, name: str, source: str, scope: Any = None, *, ieee_float: bool = False) -> list:
        """The taps and feeds this stream attaches to one decoded signal (empty: it takes nothing).

        `scope` tells apart the same signal arriving on different buses (each gets its own tap).
        `ieee_float`: the signal is an IEEE float, which can carry NaN and infinity; the trip, metric
        and aggregate feeds then take only finite values. A raw tap records what the bus sent, and
        the position's feed takes NaN as a position it cannot place (inside a zone until a fix says
        otherwise). Other signals are finite by their DBC (carledger.decode refuses a scale that is
        not), so theirs pay no test per sample.
        """
        out: list = []
        stream = self.stream
        if stream.raw and stream.selects(name, source):
            cls = self._classify(name, source)
            if cls in stream.classes():
                if name in _LOCATION_INPUTS:
                    pass  # recorded from the location filter's fixes, below
                elif cls == LOCATION:
                    if self.location is not None:  # else its position is unknown: nothing to guard it with
                        out.append(self._tap(name, source, scope, GuardedTap, self.location))
                else:
                    out.append(self._tap(name, source, scope))
        if self.location is not None and name in _LOCATION_INPUTS:
            out.append(Feed.of(self._on_position, name, self._location_taps))
            if stream.selects(name, source):
                self._location_taps[name] = self._tap(name, source, "position")
                if self.location.geohash is not None:
                    self._location_taps[GEOHASH] = self._tap(GEOHASH, GEOHASH, "position")
        feeds: list[Feed] = []
        if self.trips is not None and name in (SPEED, IGNITION):
            feeds.append(Feed.of(functools.partial(self._on_trip_input, self.trips.feeder(name)), name))
        if self.metrics is not None and (name in self.metrics.inputs or (self._trip_bounds and name in (SPEED, IGNITION))):
            feeds.append(Feed.of(functools.partial(self._on_metric_input, self.metrics.feeds(name)), name))
        for signals, aggregator in self.aggregators:
            if _matches_any(signals, name, source) and self._classify(name, source) != LOCATION:
                feeds.append(Feed(aggregator.input(name), name))
        if ieee_float:
            for feed in feeds:
                feed.finite_only()
        return out + feeds

    def _tap(self, name: str, source: str, scope: Any, kind: type = Tap, *pre: Any) -> Tap:
        """The stream's tap for a signal; kept across plan rebuilds so on-change state survives."""
        key = (scope, name, source)
        tap = self._taps.get(key)
        if tap is None:
            interval = self.settings.min_interval(self.stream, name, source)
            quantum = self.stream.quantum(name, source)
            src = source if source != name else None
            sink = self.writer.add_sample
            if quantum is not None and kind is Tap:
                tap = QuantizedTap(quantizer(quantum), sink, name, src, interval)
            else:
                tap = kind(*pre, sink, name, src, interval)
            self._taps[key] = tap
        return tap

    # -- processors ---------------------------------------------------------------------------

    def _record(self, records: Iterable[tuple[float, str, Any]]) -> None:
        add = self.writer.add_sample
        for t, name, value in records:
            q = self._quanta.get(name, False)
            if q is False:
                quantum = self.stream.quantum(name) or self.stream.quantum(name.rsplit(".", 1)[0])
                q = self._quanta[name] = quantizer(quantum) if quantum is not None and not name.endswith(".count") else None
            add(t, name, q(value) if q is not None else value)

    def _on_position(self, name: str, t: float, value: Any) -> None:
        assert self.location is not None
        fix = self.location.feed(t, name, value)
        if self.trips is not None:
            records = self.trips.feed(t, name, value)
            if records:
                self._record(records)
        if fix is not None:
            self._record_fix(fix)

    def _record_fix(self, fix: Any) -> None:
        taps = self._location_taps
        lat, lon = taps.get(LATITUDE), taps.get(LONGITUDE)
        if lat is not None:
            lat.offer(fix.t, fix.lat)
        if lon is not None:
            lon.offer(fix.t, fix.lon)
        if fix.geohash is not None and GEOHASH in taps:
            taps[GEOHASH].offer(fix.t, fix.geohash)

    def _on_trip_input(self, feed: Callable[[float, str, Any], list], name: str, t: float, value: Any) -> None:
        records = feed(t, name, value)  # the trip detector's (TripDetector.feeder)
        if records:
            self._record(records)

    def _on_metric_input(self, feeds: tuple, name: str, t: float, value: Any) -> None:
        assert self.metrics is not None
        for feed in feeds:  # each metric's own (MetricSet.feeds, the set is the stream's for life), not MetricSet.feed
            records = feed(t, name, value)
            if records:
                self._record(records)
        bounds = self._trip_bounds
        if bounds is not None and name in (SPEED, IGNITION):
            ended = bounds.trips_ended
            bounds.feed(t, name, value)
            if bounds.trips_ended != ended:
                self._record(self.metrics.flush(t))

    # -- time ---------------------------------------------------------------------------------

    def poll(self, t: float) -> None:
        """Close what time alone closes: metric and aggregate windows, a position waiting for its pair."""
        if self.location is not None:
            fix = self.location.flush(t)
            if fix is not None:
                self._record_fix(fix)
        if self.metrics is not None:
            self._record(self.metrics.poll(t))
        for _, aggregator in self.aggregators:
            self._record(aggregator.poll(t))

    def close(self, t: float) -> None:
        """The stream stops (or the agent does): record what is in progress, up to t."""
        if self.location is not None:
            fix = self.location.flush()
            if fix is not None:
                self._record_fix(fix)
        if self.trips is not None:
            self._record(self.trips.flush(t))
        if self.metrics is not None:
            self._record(self.metrics.flush(t))
        for _, aggregator in self.aggregators:
            self._record(aggregator.flush(t))


def stream_identity(stream: Stream, vehicle_id: str, secret: bytes | None) -> str:
    """The vehicle id a stream's blocks carry: the recipient's own pseudonym unless the policy says "vin"."""
    if stream.local or stream.identity == "vin" or secret is None or not stream.recipient:
        return vehicle_id
    return pseudonym(secret, vehicle_id, stream.recipient)
