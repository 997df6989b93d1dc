"""Trips and metrics from the owner's own (local) streams, for the console's SVG drawings.

Read from the signed blocks the way `carledger log export` reads them (each
block's signature and Merkle root checked, `_checked_blocks`), in one pass
with bounded memory: a trip keeps at most MAX_POINTS points (every other one
is dropped, and the stride doubled, when it would grow past that), only the
last TRIPS trips are kept, and metrics are summed per day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"
TRIP_GAP = 300.0  # seconds without a position that end a trip
MAX_POINTS = 400  # points drawn per trip at most
TRIPS = 5  # the newest trips drawn
DAYS = 14  # the newest days of metrics drawn
#: metrics summed over a day; the others (shares) are averaged over the day's windows
SUMMED = ("metric.distance_km", "metric.driving_time_s", "metric.harsh_braking_count", "metric.harsh_acceleration_count")


@dataclass
class Trip:
    start: float
    end: float
    points: list[tuple[float, float]] = field(default_factory=list)  # (lat, lon)
    stride: int = 1
    seen: int = 0

    def add(self, t: float, lat: float, lon: float) -> None:
        self.end = t
        self.seen += 1
        if (self.seen - 1) % self.stride:
            return
        self.points.append((lat, lon))
        if len(self.points) > MAX_POINTS:
            self.points = self.points[::2]
            self.stride *= 2


def read(store_path: str, streams: list[str]) -> dict[str, Any]:
    """{"trips": [Trip, ...] (newest last), "metrics": {name: {day: value}}} from `streams` of the store."""
    from carledger.cli.log import _checked_blocks
    from carledger.ledger import Sample, Store, decode_record

    trips: list[Trip] = []
    sums: dict[str, dict[str, list[float]]] = {}
    problems: list = []
    with Store.open_readonly(store_path) as store:
        for stream in streams:
            if stream not in store.streams():
                continue
            # A stream records a value when it changes, so a latitude and a longitude need not come together:
            # a position is the last of each, at each time either changed.
            where: dict[str, float] = {}
            at: float | None = None
            for _, records in _checked_blocks(store, stream, problems):
                for raw in records:
                    rec = decode_record(raw)
                    if not isinstance(rec, Sample) or isinstance(rec.value, str):
                        continue
                    t = rec.t / 1e6
                    if rec.name in (LAT, LON):
                        if at is not None and t != at:
                            _position(trips, at, where)
                        where[rec.name] = float(rec.value)
                        at = t
                    elif rec.name.startswith("metric."):
                        day = datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d")
                        sums.setdefault(rec.name, {}).setdefault(day, []).append(float(rec.value))
                        if len(sums[rec.name]) > DAYS:
                            del sums[rec.name][min(sums[rec.name])]
            if at is not None:
                _position(trips, at, where)
    metrics = {name: {day: (sum(v) if name in SUMMED else sum(v) / len(v)) for day, v in sorted(days.items())}
               for name, days in sorted(sums.items())}
    return {"trips": [t for t in trips if len(t.points) > 1], "metrics": metrics, "problems": len(problems)}


def _position(trips: list[Trip], t: float, where: dict[str, float]) -> None:
    lat, lon = where.get(LAT), where.get(LON)
    if lat is None or lon is None or not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return  # none yet, or no place on Earth (nan, inf: a signed block may hold them): not drawn
    if not trips or t - trips[-1].end > TRIP_GAP:
        trips.append(Trip(t, t))
        del trips[:-TRIPS]
    trips[-1].add(t, where[LAT], where[LON])


def track_svg(trip: Trip, width: int = 340, height: int = 240) -> str:
    """The trip as an SVG polyline: an equirectangular projection around its middle, north up, start and end marked."""
    lats = [p[0] for p in trip.points]
    lons = [p[1] for p in trip.points]
    scale_x = math.cos(math.radians((min(lats) + max(lats)) / 2))
    span = max((max(lons) - min(lons)) * scale_x, max(lats) - min(lats), 1e-6)
    pad = 12
    k = min(width - 2 * pad, height - 2 * pad) / span

    def xy(lat: float, lon: float) -> str:
        return f"{pad + (lon - min(lons)) * scale_x * k:.1f},{height - pad - (lat - min(lats)) * k:.1f}"

    points = " ".join(xy(*p) for p in trip.points)
    (x0, y0), (x1, y1) = xy(*trip.points[0]).split(","), xy(*trip.points[-1]).split(",")
    km = span * 111.32
    return (f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="The trip\'s track, about '
            f'{km:.1f} km across" class="track"><rect width="{width}" height="{height}" fill="#fff" stroke="#000"/>'
            f'<polyline points="{points}" fill="none" stroke="#0033a0" stroke-width="3" stroke-linejoin="round"/>'
            f'<circle cx="{x0}" cy="{y0}" r="6" fill="#007a00"><title>start</title></circle>'
            f'<circle cx="{x1}" cy="{y1}" r="6" fill="#a00000"><title>end</title></circle></svg>')


def bars_svg(name: str, days: dict[str, float], width: int = 340, height: int = 160) -> str:
    """One bar per day, the value written above it."""
    top = max(days.values(), default=0) or 1.0
    n = max(len(days), 1)
    slot = (width - 10) / n
    bars = []
    for i, (day, value) in enumerate(days.items()):
        h = (height - 40) * value / top
        x = 5 + i * slot
        bars.append(f'<rect x="{x + 2:.1f}" y="{height - 20 - h:.1f}" width="{slot - 4:.1f}" height="{h:.1f}" fill="#000">'
                    f"<title>{day}: {value:g}</title></rect>"
                    f'<text x="{x + slot / 2:.1f}" y="{height - 24 - h:.1f}" text-anchor="middle" font-size="11">{value:.3g}</text>'
                    f'<text x="{x + slot / 2:.1f}" y="{height - 6}" text-anchor="middle" font-size="10">{day[5:]}</text>')
    from carledger.console.pages import e

    return (f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="{e(name)} per day" class="chart">'
            + "".join(bars) + "</svg>")
