"""Location under the owner's policy: coarsening, privacy zones, trip start/end.

Everything here runs in the car, once per GPS fix (about 1 Hz); the zone test
is cached per coarsened cell, so a car that stays in a cell costs a compare.

Coarsening
    `coarsen_decimals(lat, lon, d)` rounds to d decimals (d = 3 is about 110 m
    of latitude); `geohash_encode(lat, lon, n)` names the geohash cell of
    length n, reported as the cell's center (`geohash_cell_center`) and/or the
    geohash string.

Privacy zones
    `CircleZone(lat, lon, radius_m)` (haversine distance) and
    `PolygonZone(points)` (ray casting on lat/lon as plane coordinates, so
    edges are straight in lat/lon; zones must not cross the 180th meridian or
    contain a pole). `ZoneSet(zones, margin_m)` grows every zone by a margin.

The rule that keeps a zone secret
    A position is *inside* when a zone (grown by `margin_m`) intersects the
    position's coarsened cell: the set of every raw position that coarsens to
    the same output. So no recorded value is inside a zone, none is a cell
    that overlaps one (which would place the zone within half a cell
    diagonal of it), and nothing marks a suppression: inside, the filter
    returns nothing at all. Without coarsening the cell is the point itself,
    and `margin_m` (GPS error, the distance driven between two fixes) is the
    only margin. The circle/cell test is exact on the sphere (nearest point of
    the cell); the polygon/cell test grows the cell by the margin as a lat/lon
    box, which is a little larger than needed, never smaller.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Callable, NamedTuple

__all__ = [
    "EARTH_RADIUS_M",
    "LATITUDE",
    "LONGITUDE",
    "SPEED",
    "IGNITION",
    "haversine_m",
    "coarsen_decimals",
    "decimals_cell",
    "geohash_encode",
    "geohash_bbox",
    "geohash_cell_center",
    "CircleZone",
    "PolygonZone",
    "ZoneSet",
    "Fix",
    "LocationFilter",
    "TripDetector",
]

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG)
LATITUDE = "Vehicle.CurrentLocation.Latitude"
LONGITUDE = "Vehicle.CurrentLocation.Longitude"
SPEED = "Vehicle.Speed"
IGNITION = "Vehicle.LowVoltageSystemState"

_M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0
_EPS_DEG = 1e-9  # float slack on cell edges (0.1 mm)

_radians = math.radians
_sin = math.sin
_cos = math.cos
_asin = math.asin
_sqrt = math.sqrt


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two WGS 84 points (spherical Earth)."""
    p1 = _radians(lat1)
    p2 = _radians(lat2)
    a = _sin((p2 - p1) * 0.5) ** 2 + _cos(p1) * _cos(p2) * _sin(_radians(lon2 - lon1) * 0.5) ** 2
    return 2.0 * EARTH_RADIUS_M * _asin(min(1.0, _sqrt(a)))


def _check_position(lat: float, lon: float) -> None:
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ValueError(f"not a WGS 84 position: ({lat!r}, {lon!r})")


# -- coarsening --------------------------------------------------------------------------------


def coarsen_decimals(lat: float, lon: float, decimals: int) -> tuple[float, float]:
    """(lat, lon) rounded to `decimals` places (0..9)."""
    return round(lat, decimals), round(lon, decimals)


def decimals_cell(lat: float, lon: float, decimals: int) -> tuple[float, float, float, float]:
    """The cell of every position that rounds to the same (lat, lon) as this one:
    (lat_min, lat_max, lon_min, lon_max), edges included."""
    h = 0.5 * 10.0 ** -decimals + _EPS_DEG
    rlat = round(lat, decimals)
    rlon = round(lon, decimals)
    return rlat - h, rlat + h, rlon - h, rlon + h


_BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"
_BASE32_INDEX = {c: i for i, c in enumerate(_BASE32)}


def geohash_encode(lat: float, lon: float, length: int) -> str:
    """The geohash (base 32, Niemeyer) of length 1..12 of the cell containing (lat, lon)."""
    if not 1 <= length <= 12:
        raise ValueError(f"geohash length must be 1..12, not {length!r}")
    _check_position(lat, lon)
    lat_lo, lat_hi, lon_lo, lon_hi = -90.0, 90.0, -180.0, 180.0
    out = []
    ch = 0
    nbits = 0
    even = True  # bits alternate, longitude first
    for _ in range(5 * length):
        if even:
            mid = (lon_lo + lon_hi) * 0.5
            if lon >= mid:
                ch = (ch << 1) | 1
                lon_lo = mid
            else:
                ch <<= 1
                lon_hi = mid
        else:
            mid = (lat_lo + lat_hi) * 0.5
            if lat >= mid:
                ch = (ch << 1) | 1
                lat_lo = mid
            else:
                ch <<= 1
                lat_hi = mid
        even = not even
        nbits += 1
        if nbits == 5:
            out.append(_BASE32[ch])
            ch = 0
            nbits = 0
    return "".join(out)


def geohash_bbox(geohash: str) -> tuple[float, float, float, float]:
    """The cell of a geohash: (lat_min, lat_max, lon_min, lon_max)."""
    if not geohash:
        raise ValueError("empty geohash")
    lat_lo, lat_hi, lon_lo, lon_hi = -90.0, 90.0, -180.0, 180.0
    even = True
    for c in geohash.lower():
        bits = _BASE32_INDEX.get(c)
        if bits is None:
            raise ValueError(f"not a geohash: {geohash!r}")
        for shift in (4, 3, 2, 1, 0):
            bit = (bits >> shift) & 1
            if even:
                mid = (lon_lo + lon_hi) * 0.5
                if bit:
                    lon_lo = mid
                else:
                    lon_hi = mid
            else:
                mid = (lat_lo + lat_hi) * 0.5
                if bit:
                    lat_lo = mid
                else:
                    lat_hi = mid
            even = not even
    return lat_lo, lat_hi, lon_lo, lon_hi


def geohash_cell_center(geohash: str) -> tuple[float, float]:
    """The center (lat, lon) of a geohash cell: the position reported for it."""
    lat_lo, lat_hi, lon_lo, lon_hi = geohash_bbox(geohash)
    return (lat_lo + lat_hi) * 0.5, (lon_lo + lon_hi) * 0.5


# -- zones -------------------------------------------------------------------------------------


def _clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def _box_distance_m(lat: float, lon: float, lat_min: float, lat_max: float, lon_min: float, lon_max: float) -> float:
    """Great-circle distance from a point to the nearest point of a lat/lon box (0 inside).

    The nearest point lies on the box's meridian edge nearest in longitude, at
    the latitude of the perpendicular foot (tan f = tan lat / cos dlon),
    clamped to the edge; or straight north/south when the longitude is inside.
    """
    if lon < lon_min:
        elon = lon_min
    elif lon > lon_max:
        elon = lon_max
    else:
        return haversine_m(lat, lon, _clamp(lat, lat_min, lat_max), lon)
    dl = _radians(lon - elon)
    if abs(dl) < math.pi / 2 and abs(lat) < 90.0:
        foot = math.degrees(math.atan(math.tan(_radians(lat)) / _cos(dl)))
    else:
        foot = lat
    return haversine_m(lat, lon, _clamp(foot, lat_min, lat_max), elon)


def _grow_box(box: tuple[float, float, float, float], margin_m: float) -> tuple[float, float, float, float]:
    """A lat/lon box containing every point within margin_m of the given box."""
    lat_min, lat_max, lon_min, lon_max = box
    if margin_m <= 0.0:
        return box
    dlat = math.degrees(margin_m / EARTH_RADIUS_M)
    lat_min = max(-90.0, lat_min - dlat)
    lat_max = min(90.0, lat_max + dlat)
    c = _cos(_radians(max(abs(lat_min), abs(lat_max))))
    if c <= 1e-9 or margin_m / EARTH_RADIUS_M >= c:
        return lat_min, lat_max, -180.0, 180.0
    dlon = math.degrees(_asin(min(1.0, _sin(margin_m / EARTH_RADIUS_M) / c)))
    return lat_min, lat_max, max(-180.0, lon_min - dlon), min(180.0, lon_max + dlon)


def _boxes_overlap(a: tuple[float, float, float, float], b0: float, b1: float, b2: float, b3: float) -> bool:
    return a[0] <= b1 and b0 <= a[1] and a[2] <= b3 and b2 <= a[3]


class CircleZone:
    """All points within radius_m (great-circle distance) of (lat, lon)."""

    __slots__ = ("lat", "lon", "radius_m")

    def __init__(self, lat: float, lon: float, radius_m: float):
        _check_position(lat, lon)
        if not (radius_m > 0 and math.isfinite(radius_m)):
            raise ValueError(f"a zone's radius must be a positive number of metres, not {radius_m!r}")
        self.lat = float(lat)
        self.lon = float(lon)
        self.radius_m = float(radius_m)

    def __repr__(self) -> str:
        return f"CircleZone({self.lat!r}, {self.lon!r}, {self.radius_m!r})"

    def bbox(self, margin_m: float = 0.0) -> tuple[float, float, float, float]:
        return _grow_box((self.lat, self.lat, self.lon, self.lon), self.radius_m + margin_m)

    def contains(self, lat: float, lon: float, margin_m: float = 0.0) -> bool:
        return haversine_m(self.lat, self.lon, lat, lon) <= self.radius_m + margin_m

    def intersects_box(self, lat_min: float, lat_max: float, lon_min: float, lon_max: float, margin_m: float = 0.0) -> bool:
        return _box_distance_m(self.lat, self.lon, lat_min, lat_max, lon_min, lon_max) <= self.radius_m + margin_m


def _point_in_ring(lat: float, lon: float, ring: Sequence[tuple[float, float]]) -> bool:
    """Even-odd ray casting (ray towards +lon), points on the boundary may go either way."""
    inside = False
    n = len(ring)
    j = n - 1
    for i in range(n):
        yi, xi = ring[i]
        yj, xj = ring[j]
        if (yi > lat) != (yj > lat) and lon < (xj - xi) * (lat - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


def _segment_hits_box(y0: float, x0: float, y1: float, x1: float, ymin: float, ymax: float, xmin: float, xmax: float) -> bool:
    """Liang-Barsky: does the segment (y0,x0)-(y1,x1) meet the closed box?"""
    t0, t1 = 0.0, 1.0
    dx = x1 - x0
    dy = y1 - y0
    for p, q in ((-dx, x0 - xmin), (dx, xmax - x0), (-dy, y0 - ymin), (dy, ymax - y0)):
        if p == 0.0:
            if q < 0.0:
                return False
        else:
            r = q / p
            if p < 0.0:
                if r > t1:
                    return False
                if r > t0:
                    t0 = r
            else:
                if r < t0:
                    return False
                if r < t1:
                    t1 = r
    return True


class PolygonZone:
    """A polygon of (lat, lon) vertices (closed or not; at least 3 distinct points)."""

    __slots__ = ("points", "_bbox")

    def __init__(self, points: Iterable[Sequence[float]]):
        pts = [(float(p[0]), float(p[1])) for p in points]
        if len(pts) > 1 and pts[0] == pts[-1]:
            pts.pop()
        if len(set(pts)) < 3:
            raise ValueError("a polygon zone needs at least 3 distinct (lat, lon) points")
        for lat, lon in pts:
            _check_position(lat, lon)
        lons = [p[1] for p in pts]
        if max(lons) - min(lons) > 180.0:
            raise ValueError("a polygon zone must not cross the 180th meridian")
        self.points = tuple(pts)
        lats = [p[0] for p in pts]
        self._bbox = (min(lats), max(lats), min(lons), max(lons))

    def __repr__(self) -> str:
        return f"PolygonZone({list(self.points)!r})"

    def bbox(self, margin_m: float = 0.0) -> tuple[float, float, float, float]:
        return _grow_box(self._bbox, margin_m)

    def contains(self, lat: float, lon: float, margin_m: float = 0.0) -> bool:
        if margin_m > 0.0:
            return self.intersects_box(lat, lat, lon, lon, margin_m)
        b = self._bbox
        if not (b[0] <= lat <= b[1] and b[2] <= lon <= b[3]):
            return False
        return _point_in_ring(lat, lon, self.points)

    def intersects_box(self, lat_min: float, lat_max: float, lon_min: float, lon_max: float, margin_m: float = 0.0) -> bool:
        lat_min, lat_max, lon_min, lon_max = _grow_box((lat_min, lat_max, lon_min, lon_max), margin_m)
        if not _boxes_overlap(self._bbox, lat_min, lat_max, lon_min, lon_max):
            return False
        pts = self.points
        j = len(pts) - 1
        for i in range(len(pts)):
            if _segment_hits_box(pts[j][0], pts[j][1], pts[i][0], pts[i][1], lat_min, lat_max, lon_min, lon_max):
                return True
            j = i
        # no edge meets the box: it is either wholly inside the polygon or wholly outside
        return _point_in_ring(lat_min, lon_min, pts)


class ZoneSet:
    """Privacy zones, each grown by margin_m; answers "inside any?" for points and cells."""

    __slots__ = ("zones", "margin_m", "_boxes")

    def __init__(self, zones: Iterable["CircleZone | PolygonZone"] = (), margin_m: float = 0.0):
        if not (margin_m >= 0 and math.isfinite(margin_m)):
            raise ValueError(f"a zone margin must be a non-negative number of metres, not {margin_m!r}")
        if isinstance(zones, ZoneSet):
            zones = zones.zones
        self.zones = tuple(zones)
        for z in self.zones:
            if not isinstance(z, (CircleZone, PolygonZone)):
                raise TypeError(f"not a zone: {z!r}")
        self.margin_m = float(margin_m)
        self._boxes = tuple((z.bbox(self.margin_m), z) for z in self.zones)

    def __len__(self) -> int:
        return len(self.zones)

    def __bool__(self) -> bool:
        return bool(self.zones)

    def contains(self, lat: float, lon: float) -> bool:
        """Is the point inside a zone (grown by the margin)?"""
        m = self.margin_m
        for b, z in self._boxes:
            if b[0] <= lat <= b[1] and b[2] <= lon <= b[3] and z.contains(lat, lon, m):
                return True
        return False

    def intersects_box(self, lat_min: float, lat_max: float, lon_min: float, lon_max: float) -> bool:
        """Does a zone (grown by the margin) meet the lat/lon box (a coarsened cell)?"""
        m = self.margin_m
        for b, z in self._boxes:
            if _boxes_overlap(b, lat_min, lat_max, lon_min, lon_max) and z.intersects_box(lat_min, lat_max, lon_min, lon_max, m):
                return True
        return False


# -- the per-stream location filter --------------------------------------------------------------


class Fix(NamedTuple):
    """A position that may be recorded: coarsened (or raw, without coarsening)."""

    t: float
    lat: float
    lon: float
    geohash: str | None  # the cell's geohash in geohash mode, else None


_NONE, _LAT, _LON = 0, 1, 2


class LocationFilter:
    """Pairs latitude and longitude samples into fixes and returns what may be recorded.

    zones: zones (or a ZoneSet); margin_m: how far every zone is grown.
    decimals / geohash: coarsening (at most one); neither = raw positions.
    pair_window_s: a latitude and a longitude at most this far apart in time
        (normally the same CAN frame, the same t) make one fix. A component
        whose partner does not come (on-change sampling: it did not change)
        is paired with the partner's last value when the next sample shows
        it is not coming, so such a fix is returned one sample late, with its
        own time.
    max_fix_age_s: after this long without a fix the position is unknown and
        `suppressed(t)` is true (the car may have driven into a zone).

    `feed(t, name, value)` returns a `Fix` to record, or None: inside a zone,
    or not a complete fix yet. `inside` is the zone state of the last fix (true
    until the first fix: unknown counts as inside); `suppressed(t)` tells the
    pipeline whether the stream's other location signals (heading, altitude,
    GPS speed) may be recorded at t.
    """

    __slots__ = (
        "zones", "decimals", "geohash", "pair_window_s", "max_fix_age_s", "latitude", "longitude",
        "inside", "fix_t", "raw_lat", "raw_lon", "last", "_pend", "_pend_t", "_pend_v", "_lat", "_lon",
        "_klat", "_klon", "_khash", "_kinside", "_kout",
    )

    def __init__(
        self,
        zones: "Iterable[CircleZone | PolygonZone] | ZoneSet" = (),
        decimals: int | None = None,
        geohash: int | None = None,
        *,
        margin_m: float = 0.0,
        pair_window_s: float = 0.1,
        max_fix_age_s: float = 5.0,
        latitude: str = LATITUDE,
        longitude: str = LONGITUDE,
    ):
        if decimals is not None and geohash is not None:
            raise ValueError("coarsen by decimals or by geohash, not both")
        if decimals is not None and (type(decimals) is not int or not 0 <= decimals <= 9):
            raise ValueError(f"decimals must be an integer 0..9, not {decimals!r}")
        if geohash is not None and (type(geohash) is not int or not 1 <= geohash <= 12):
            raise ValueError(f"geohash length must be an integer 1..12, not {geohash!r}")
        self.zones = ZoneSet(zones, margin_m)
        self.decimals = decimals
        self.geohash = geohash
        self.pair_window_s = float(pair_window_s)
        self.max_fix_age_s = float(max_fix_age_s)
        self.latitude = latitude
        self.longitude = longitude
        self.inside = True  # no fix yet: unknown position counts as inside
        self.fix_t: float | None = None  # time of the last fix (raw, recorded or not)
        self.raw_lat: float | None = None
        self.raw_lon: float | None = None
        self.last: Fix | None = None  # the last fix returned for recording
        self._pend = _NONE
        self._pend_t = 0.0
        self._pend_v = 0.0
        self._lat: float | None = None  # last known components (raw)
        self._lon: float | None = None
        self._klat = self._klon = math.nan  # cell cache (decimals mode)
        self._khash: str | None = None  # cell cache (geohash mode)
        self._kinside = True
        self._kout: tuple[float, float, str | None] = (math.nan, math.nan, None)

    def suppressed(self, t: float) -> bool:
        """May location-class signals (heading, altitude, GPS speed) not be recorded at t?"""
        return self.inside or self.fix_t is None or t - self.fix_t > self.max_fix_age_s

    def feed(self, t: float, name: str, value: float) -> Fix | None:
        if name == self.latitude:
            which = _LAT
        elif name == self.longitude:
            which = _LON
        else:
            return None
        pend = self._pend
        if pend == _NONE:
            self._pend, self._pend_t, self._pend_v = which, t, value
            return None
        if pend != which and abs(t - self._pend_t) <= self.pair_window_s:
            self._pend = _NONE
            if which == _LAT:
                return self._fix(max(t, self._pend_t), value, self._pend_v)
            return self._fix(max(t, self._pend_t), self._pend_v, value)
        out = self._resolve()
        self._pend, self._pend_t, self._pend_v = which, t, value
        return out

    def flush(self, t: float | None = None) -> Fix | None:
        """End of data (or a timer): a component still waiting for its partner is paired now."""
        if self._pend == _NONE or (t is not None and t - self._pend_t <= self.pair_window_s):
            return None
        return self._resolve()

    def _resolve(self) -> Fix | None:
        pend = self._pend
        self._pend = _NONE
        if pend == _LAT:
            if self._lon is None:
                self._lat = self._pend_v
                return None
            return self._fix(self._pend_t, self._pend_v, self._lon)
        if pend == _LON:
            if self._lat is None:
                self._lon = self._pend_v
                return None
            return self._fix(self._pend_t, self._lat, self._pend_v)
        return None

    def _fix(self, t: float, lat: float, lon: float) -> Fix | None:
        self._lat = lat
        self._lon = lon
        self.fix_t = t
        try:
            inside, olat, olon, ghash = self.check(lat, lon)
        except (TypeError, ValueError):  # not a position (NaN, out of range, not a number)
            inside = True
        self.raw_lat = lat
        self.raw_lon = lon
        self.inside = inside
        if inside:
            return None
        fix = Fix(t, olat, olon, ghash)
        self.last = fix
        return fix

    def check(self, lat: float, lon: float) -> tuple[bool, float, float, str | None]:
        """(inside, lat, lon, geohash) for a raw position: the zone decision and what would be recorded.

        Raises ValueError for something that is not a WGS 84 position.
        """
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            raise ValueError(f"not a WGS 84 position: ({lat!r}, {lon!r})")
        d = self.decimals
        if d is not None:
            olat = round(lat, d)
            olon = round(lon, d)
            if olat == self._klat and olon == self._klon:
                return self._kinside, olat, olon, None
            h = 0.5 * 10.0 ** -d + _EPS_DEG
            inside = self.zones.intersects_box(olat - h, olat + h, olon - h, olon + h)
            self._klat, self._klon, self._kinside = olat, olon, inside
            return inside, olat, olon, None
        n = self.geohash
        if n is not None:
            ghash = geohash_encode(lat, lon, n)
            if ghash == self._khash:
                out = self._kout
                return self._kinside, out[0], out[1], ghash
            box = geohash_bbox(ghash)
            inside = self.zones.intersects_box(box[0] - _EPS_DEG, box[1] + _EPS_DEG, box[2] - _EPS_DEG, box[3] + _EPS_DEG)
            out = ((box[0] + box[1]) * 0.5, (box[2] + box[3]) * 0.5, ghash)
            self._khash, self._kinside, self._kout = ghash, inside, out
            return inside, out[0], out[1], ghash
        return self.zones.contains(lat, lon), lat, lon, None


# -- trip start and end ------------------------------------------------------------------------

_OFF_STATES = frozenset({"OFF", "LOCK", "ACC"})


class TripDetector:
    """Trip start and end events, recorded only where no zone can be learnt from them.

    A trip starts when the speed reaches start_kmh and ends when the car has
    stood (speed at most stop_kmh) for end_after_s, when the ignition
    (Vehicle.LowVoltageSystemState) goes OFF/LOCK/ACC, or at `flush`. The end
    is dated when the car stopped. The event's position is the fix at that
    moment (a start with no fresh fix waits up to max_fix_age_s for one); it
    goes through the same zone test and coarsening as the stream's location:
    inside a zone (or within its margin), or with no usable fix, there is no
    event at all, then or later.

    Records (t, name, value), t the start or stop time:
    trip.start.latitude, trip.start.longitude (and trip.start.geohash in
    geohash mode); trip.end.* likewise.

    The detector keeps its own LocationFilter (same parameters), so feed it
    the stream's latitude and longitude samples as well as speed and ignition.
    """

    __slots__ = (
        "location", "start_kmh", "stop_kmh", "end_after_s", "max_fix_age_s", "speed", "ignition",
        "in_trip", "trips_ended", "_start_t", "_start_pending", "_stop_t",
    )

    def __init__(
        self,
        zones: "Iterable[CircleZone | PolygonZone] | ZoneSet" = (),
        decimals: int | None = None,
        geohash: int | None = None,
        *,
        margin_m: float = 0.0,
        start_kmh: float = 5.0,
        stop_kmh: float = 1.0,
        end_after_s: float = 120.0,
        max_fix_age_s: float = 5.0,
        speed: str = SPEED,
        ignition: str = IGNITION,
        latitude: str = LATITUDE,
        longitude: str = LONGITUDE,
    ):
        if not (0 <= stop_kmh < start_kmh):
            raise ValueError("need 0 <= stop_kmh < start_kmh")
        self.location = LocationFilter(
            zones, decimals, geohash, margin_m=margin_m, max_fix_age_s=max_fix_age_s,
            latitude=latitude, longitude=longitude,
        )
        self.start_kmh = float(start_kmh)
        self.stop_kmh = float(stop_kmh)
        self.end_after_s = float(end_after_s)
        self.max_fix_age_s = float(max_fix_age_s)
        self.speed = speed
        self.ignition = ignition
        self.in_trip = False
        self.trips_ended = 0  # trips that ended so far, whether or not their end could be recorded
        self._start_t = 0.0
        self._start_pending = False
        self._stop_t: float | None = None

    def feed(self, t: float, name: str, value) -> list:
        if name == self.speed:
            return self._speed(t, name, value)
        if name == self.ignition:
            if self.in_trip and value in _OFF_STATES:
                return self._end(self._stop_t if self._stop_t is not None else t)
            return []
        loc = self.location
        if name == loc.latitude or name == loc.longitude:
            loc.feed(t, name, value)
            if self._start_pending and loc.fix_t is not None and loc.fix_t >= self._start_t:
                return self._emit_start()
        return []

    def flush(self, t: float) -> list:
        """End of data: a trip still open ends (at its stop, if the car is standing)."""
        self.location.flush()
        if not self.in_trip:
            return []
        return self._end(self._stop_t if self._stop_t is not None else t)

    def feeder(self, name: str) -> Callable[[float, str, Any], list]:
        """What takes the samples of input `name` as feed(t, name, value) would: the speed's go straight to _speed."""
        return self._speed if name == self.speed else self.feed

    def _speed(self, t: float, name: str, v: float) -> list:
        """A speed sample (`name` is the speed's: feed's signature, for `feeder`)."""
        if not self.in_trip:
            if v >= self.start_kmh:
                self.in_trip = True
                self._start_t = t
                self._stop_t = None
                loc = self.location
                if loc.fix_t is not None and 0.0 <= t - loc.fix_t <= self.max_fix_age_s:
                    return self._emit_start()
                self._start_pending = True
            return []
        out: list = []
        if self._start_pending and t - self._start_t > self.max_fix_age_s:
            self._start_pending = False  # no fix to prove the start was outside every zone
        if v <= self.stop_kmh:
            if self._stop_t is None:
                self._stop_t = t
            elif t - self._stop_t >= self.end_after_s:
                out = self._end(self._stop_t)
        else:
            self._stop_t = None
        return out

    def _emit_start(self) -> list:
        self._start_pending = False
        loc = self.location
        if loc.fix_t - self._start_t > self.max_fix_age_s:
            return []
        return self._event(self._start_t, "trip.start", loc.raw_lat, loc.raw_lon)

    def _end(self, t_end: float) -> list:
        self.in_trip = False
        self.trips_ended += 1
        self._start_pending = False
        self._stop_t = None
        loc = self.location
        if loc.fix_t is None or t_end - loc.fix_t > self.max_fix_age_s:
            return []  # no fix at the end: cannot show it is outside every zone
        return self._event(t_end, "trip.end", loc.raw_lat, loc.raw_lon)

    def _event(self, t: float, what: str, lat, lon) -> list:
        try:
            inside, olat, olon, ghash = self.location.check(lat, lon)
        except (TypeError, ValueError):
            return []
        if inside:
            return []
        out = [(t, what + ".latitude", olat), (t, what + ".longitude", olon)]
        if ghash is not None:
            out.append((t, what + ".geohash", ghash))
        return out
