"""Routes: polylines of WGS 84 waypoints that the simulated car drives along.

A route is a polyline. The car's position is the point at distance `s` (metres
travelled since the start) along it, so the GPS track integrates the car's
speed exactly. Each segment of the polyline also carries the road's curvature
(1/m, positive = turning left), from which the drive model derives lateral
acceleration, yaw rate and steering wheel angle, and the speed the driver
slows down to before a bend.

Generated routes are made of straights, clothoid-like transitions (curvature
ramps) and arcs, sampled every `STEP_M` metres; they start at `HOME`.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from dataclasses import dataclass

#: Fixed start of every scenario ("home"), Munich Marienplatz, WGS 84 degrees.
HOME = (48.1371, 11.5754)
#: Heading the car leaves home with, degrees clockwise from north.
HOME_HEADING = 90.0

EARTH_RADIUS_M = 6_371_008.8
STEP_M = 2.0


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two WGS 84 points."""
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial bearing from point 1 to point 2, degrees clockwise from north in [0, 360)."""
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


def destination(lat: float, lon: float, bearing: float, dist_m: float) -> tuple[float, float]:
    """The point `dist_m` metres from (lat, lon) along `bearing` (great circle)."""
    d = dist_m / EARTH_RADIUS_M
    b = math.radians(bearing)
    p1 = math.radians(lat)
    l1 = math.radians(lon)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2))
    return math.degrees(p2), (math.degrees(l2) + 540.0) % 360.0 - 180.0


@dataclass(frozen=True)
class Position:
    lat: float
    lon: float
    heading: float  # degrees clockwise from north, [0, 360)
    curvature: float  # 1/m, positive = left


class Route:
    """A polyline of (lat, lon) waypoints with per-segment curvature.

    `position(s)` interpolates linearly between waypoints by the distance along
    the polyline (haversine segment lengths). Past the last waypoint the road
    continues straight along the last segment's bearing.
    """

    def __init__(self, waypoints: list[tuple[float, float]], curvature: list[float] | None = None):
        if len(waypoints) < 2:
            raise ValueError("a route needs at least two waypoints")
        self.waypoints = [(float(a), float(b)) for a, b in waypoints]
        n = len(self.waypoints) - 1
        self._cum = [0.0]
        self._bearing = []
        for (la1, lo1), (la2, lo2) in zip(self.waypoints, self.waypoints[1:]):
            d = haversine_m(la1, lo1, la2, lo2)
            if d <= 0:
                raise ValueError("route waypoints must be distinct")
            self._cum.append(self._cum[-1] + d)
            self._bearing.append(bearing_deg(la1, lo1, la2, lo2))
        if curvature is None:
            curvature = self._estimate_curvature()
        if len(curvature) != n:
            raise ValueError("need one curvature value per route segment")
        self._kappa = [float(k) for k in curvature]
        self.length_m = self._cum[-1]
        self.destination = False  # True: the drive ends at the last waypoint (the car stops there)

    def _estimate_curvature(self) -> list[float]:
        """Curvature of a plain waypoint list: heading change over the mean segment length."""
        out = []
        n = len(self._bearing)
        for i in range(n):
            ks = []
            for j in (i - 1, i):
                if 0 <= j < n - 1:
                    turn = (self._bearing[j] - self._bearing[j + 1] + 180.0) % 360.0 - 180.0  # left = positive
                    span = (self._cum[j + 2] - self._cum[j]) / 2.0
                    ks.append(math.radians(turn) / span)
            out.append(sum(ks) / len(ks) if ks else 0.0)
        return out

    def _segment(self, s: float) -> int:
        i = bisect_right(self._cum, s) - 1
        return min(max(i, 0), len(self._bearing) - 1)

    def curvature(self, s: float) -> float:
        """Curvature at s, interpolated linearly between segment midpoints."""
        if s >= self.length_m:
            return 0.0
        cum, kap = self._cum, self._kappa
        i = self._segment(max(s, 0.0))
        mid = (cum[i] + cum[i + 1]) * 0.5
        j = i - 1 if s < mid else i + 1
        if j < 0 or j >= len(kap):
            return kap[i]
        mid_j = (cum[j] + cum[j + 1]) * 0.5
        f = (s - mid) / (mid_j - mid)
        return kap[i] + (kap[j] - kap[i]) * f

    def position(self, s: float) -> Position:
        """Where the car is after `s` metres along the route."""
        if s >= self.length_m:
            lat, lon = self.waypoints[-1]
            b = self._bearing[-1]
            if s > self.length_m:
                lat, lon = destination(lat, lon, b, s - self.length_m)
            return Position(lat, lon, b, 0.0)
        i = self._segment(max(s, 0.0))
        s0, s1 = self._cum[i], self._cum[i + 1]
        f = (max(s, 0.0) - s0) / (s1 - s0)
        (la1, lo1), (la2, lo2) = self.waypoints[i], self.waypoints[i + 1]
        return Position(la1 + (la2 - la1) * f, lo1 + (lo2 - lo1) * f, self._bearing[i], self._kappa[i])

    # -- generated routes ------------------------------------------------------

    @classmethod
    def from_segments(
        cls,
        segments: list[tuple[float, float, float]],
        start: tuple[float, float] = HOME,
        heading: float = HOME_HEADING,
        step_m: float = STEP_M,
    ) -> "Route":
        """Build a route from (length_m, curvature_start, curvature_end) pieces.

        Curvature varies linearly along each piece (a clothoid when the ends
        differ, an arc or a straight when they are equal). The path is
        integrated in a local east/north plane every `step_m` metres and
        projected to WGS 84 around `start`.
        """
        lat0, lon0 = start
        m_per_deg_lat = math.pi * EARTH_RADIUS_M / 180.0
        m_per_deg_lon = m_per_deg_lat * math.cos(math.radians(lat0))
        psi = math.radians(90.0 - heading)  # mathematical angle, counter-clockwise from east
        x = y = 0.0
        pts = [(lat0, lon0)]
        kap: list[float] = []
        for length, k0, k1 in segments:
            n = max(1, int(round(length / step_m)))
            ds = length / n
            for j in range(n):
                k = k0 + (k1 - k0) * (j + 0.5) / n
                # exact chord of a constant-curvature piece
                dpsi = k * ds
                mid = psi + dpsi / 2.0
                chord = ds if abs(dpsi) < 1e-9 else 2.0 * math.sin(dpsi / 2.0) / k
                x += chord * math.cos(mid)
                y += chord * math.sin(mid)
                psi += dpsi
                pts.append((lat0 + y / m_per_deg_lat, lon0 + x / m_per_deg_lon))
                kap.append(k)
        return cls(pts, kap)

    @classmethod
    def round_trip(cls, kind: str, length_m: float, rng: random.Random, start=HOME, heading=HOME_HEADING) -> "Route":
        """Out along a generated road of `length_m` / 2, a U-turn, and back the same way to `start`.

        The car stops where it started, which is what tests of privacy zones
        around home need: leaving the zone and coming back.
        """
        out = cls.generate(kind, length_m / 2.0, rng, start=start, heading=heading)
        back = out.waypoints[-2::-1]
        u_turn = 1.0 / 4.0  # a tight turn, so the driver slows to walking pace for it
        curvature = out._kappa + [u_turn] + [-k for k in reversed(out._kappa)][1:]
        route = cls(out.waypoints + back, curvature)
        route.destination = True
        return route

    @classmethod
    def generate(cls, kind: str, length_m: float, rng: random.Random, start=HOME, heading=HOME_HEADING) -> "Route":
        """A random road of at least `length_m` metres: "city", "rural" or "highway"."""
        segs: list[tuple[float, float, float]] = []
        total = 0.0

        def add(length: float, k0: float, k1: float) -> None:
            nonlocal total
            segs.append((length, k0, k1))
            total += length

        def bend(radius: float, angle_deg: float, ramp: float) -> None:
            k = 1.0 / radius
            sign = 1.0 if rng.random() < 0.5 else -1.0
            k *= sign
            arc = max(0.0, math.radians(angle_deg) * radius - ramp)  # the two ramps turn as much as one ramp of arc
            add(ramp, 0.0, k)
            if arc > 0:
                add(arc, k, k)
            add(ramp, k, 0.0)

        # leaving home: a quiet street
        add(120.0, 0.0, 0.0)
        if kind == "city":
            while total < length_m:
                bend(rng.uniform(12.0, 22.0), 90.0, 8.0)
                add(rng.uniform(60.0, 260.0), 0.0, 0.0)
                if rng.random() < 0.3:
                    bend(rng.uniform(80.0, 200.0), rng.uniform(10.0, 35.0), 15.0)
                    add(rng.uniform(40.0, 150.0), 0.0, 0.0)
        elif kind == "highway":
            bend(18.0, 90.0, 8.0)
            add(300.0, 0.0, 0.0)
            bend(70.0, 90.0, 25.0)  # the on-ramp
            while total < length_m:
                add(rng.uniform(600.0, 2500.0), 0.0, 0.0)
                bend(rng.uniform(900.0, 2500.0), rng.uniform(8.0, 35.0), 120.0)
        elif kind == "rural":
            while total < length_m:
                add(rng.uniform(300.0, 1200.0), 0.0, 0.0)
                bend(rng.uniform(450.0, 900.0), rng.uniform(10.0, 45.0), 60.0)
        else:
            raise ValueError(f"unknown route kind {kind!r}")
        return cls.from_segments(segs, start=start, heading=heading)
