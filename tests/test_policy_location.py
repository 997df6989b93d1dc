"""Location under the owner's policy: geohash, coarsening, privacy zones, trip start/end."""

from __future__ import annotations

import random

import pytest

from carledger.policy.location import (
    LATITUDE,
    LONGITUDE,
    CircleZone,
    LocationFilter,
    PolygonZone,
    TripDetector,
    ZoneSet,
    coarsen_decimals,
    geohash_bbox,
    geohash_cell_center,
    geohash_encode,
)
from carledger_sim.car import SimulatedCar
from carledger_sim.route import HOME, destination
from carledger_sim.route import haversine_m as sim_haversine  # independent of ours

RADIUS = 300.0
SPEED = "Vehicle.Speed"


# -- an independent check of "nothing within the margin" --------------------------------------------


def cell_min_distance(lat_min, lat_max, lon_min, lon_max, center=HOME, n=200) -> float:
    """Smallest distance from `center` to a cell, by brute force over its edges (and center)."""
    best = sim_haversine(center[0], center[1], (lat_min + lat_max) / 2, (lon_min + lon_max) / 2)
    for i in range(n + 1):
        f = i / n
        la = lat_min + f * (lat_max - lat_min)
        lo = lon_min + f * (lon_max - lon_min)
        for p in ((la, lon_min), (la, lon_max), (lat_min, lo), (lat_max, lo)):
            d = sim_haversine(center[0], center[1], p[0], p[1])
            if d < best:
                best = d
    inside = lat_min <= center[0] <= lat_max and lon_min <= center[1] <= lon_max
    return 0.0 if inside else best


# -- geohash and decimals --------------------------------------------------------------------------


def test_geohash_known_vectors():
    assert geohash_encode(57.64911, 10.40744, 11) == "u4pruydqqvj"
    assert geohash_encode(42.6, -5.6, 5) == "ezs42"
    assert geohash_encode(48.1371, 11.5754, 6) == "u281z7"  # Marienplatz
    lat, lon = geohash_cell_center("ezs42")
    assert lat == pytest.approx(42.605, abs=0.003) and lon == pytest.approx(-5.603, abs=0.003)
    lat_min, lat_max, lon_min, lon_max = geohash_bbox("ezs42")
    assert (lat_min, lat_max, lon_min, lon_max) == (42.583007812500, 42.626953125, -5.625, -5.5810546875)
    lat, lon = geohash_cell_center("u4pruydqqvj")
    assert lat == pytest.approx(57.64911, abs=1e-6) and lon == pytest.approx(10.40744, abs=1e-6)


def test_geohash_round_trip_and_prefixes():
    rng = random.Random(7)
    for _ in range(300):
        lat, lon = rng.uniform(-90, 90), rng.uniform(-180, 180)
        h = geohash_encode(lat, lon, 9)
        a, b, c, d = geohash_bbox(h)
        assert a <= lat <= b and c <= lon <= d
        for n in range(1, 9):
            assert geohash_encode(lat, lon, n) == h[:n]
    with pytest.raises(ValueError):
        geohash_encode(91.0, 0.0, 5)
    with pytest.raises(ValueError):
        geohash_bbox("ezs4a")  # 'a' is not in the geohash alphabet


def test_coarsen_decimals_has_no_float_noise():
    assert coarsen_decimals(48.137154, 11.575382, 3) == (48.137, 11.575)
    assert coarsen_decimals(48.1376, 11.5754, 3) == (48.138, 11.575)
    assert repr(coarsen_decimals(48.13712345, 11.57549, 4)[0]) == "48.1371"


# -- zones -----------------------------------------------------------------------------------------


def test_circle_zone_uses_great_circle_distance():
    z = CircleZone(*HOME, RADIUS)
    for bearing in range(0, 360, 15):
        assert z.contains(*destination(*HOME, bearing, RADIUS - 1.0))
        assert not z.contains(*destination(*HOME, bearing, RADIUS + 1.0))


def test_polygon_zone_ray_casting_concave():
    # an L-shaped work site around (48.20, 11.60)
    pts = [(48.200, 11.600), (48.200, 11.610), (48.205, 11.610), (48.205, 11.605), (48.210, 11.605), (48.210, 11.600)]
    z = PolygonZone(pts + [pts[0]])  # closed ring accepted
    assert z.contains(48.202, 11.602)
    assert z.contains(48.202, 11.608)
    assert z.contains(48.208, 11.602)
    assert not z.contains(48.208, 11.608)  # the notch
    assert not z.contains(48.199, 11.605)
    zs = ZoneSet([z, CircleZone(*HOME, RADIUS)])
    assert zs.contains(48.208, 11.602) and zs.contains(*HOME) and not zs.contains(48.208, 11.608)
    with pytest.raises(ValueError):
        PolygonZone([(48.0, 11.0), (48.1, 11.0)])


def test_cell_intersection_has_no_false_negative():
    """Every cell the brute force finds touching a zone, the zone test says so too (and is not far off)."""
    rng = random.Random(3)
    circle = ZoneSet([CircleZone(*HOME, RADIUS)])
    for _ in range(300):
        size = rng.choice((0.001, 0.005, 0.01))
        clat = HOME[0] + rng.uniform(-0.015, 0.015)
        clon = HOME[1] + rng.uniform(-0.02, 0.02)
        box = (clat - size / 2, clat + size / 2, clon - size / 2, clon + size / 2)
        d = cell_min_distance(*box, n=100)
        hit = circle.intersects_box(*box)
        if d <= RADIUS:
            assert hit, (box, d)
        if hit:
            assert d <= RADIUS + 0.5, (box, d)  # exact nearest point: only brute-force resolution apart
    # polygon: a square of about 400 m around a point east of home
    c = (48.14, 11.60)
    sq = PolygonZone([(c[0] - 0.0018, c[1] - 0.0027), (c[0] - 0.0018, c[1] + 0.0027),
                      (c[0] + 0.0018, c[1] + 0.0027), (c[0] + 0.0018, c[1] - 0.0027)])
    zs = ZoneSet([sq])
    for _ in range(300):
        size = rng.choice((0.001, 0.005))
        la = c[0] + rng.uniform(-0.008, 0.008)
        lo = c[1] + rng.uniform(-0.01, 0.01)
        box = (la - size / 2, la + size / 2, lo - size / 2, lo + size / 2)
        brute = any(sq.contains(box[0] + i / 20 * size, box[2] + j / 20 * size) for i in range(21) for j in range(21))
        if brute:
            assert zs.intersects_box(*box)
    # a cell wholly inside the polygon
    assert zs.intersects_box(c[0] - 0.0001, c[0] + 0.0001, c[1] - 0.0001, c[1] + 0.0001)


def test_zone_margin_grows_zones():
    zs = ZoneSet([CircleZone(*HOME, RADIUS)], margin_m=100.0)
    assert zs.contains(*destination(*HOME, 45.0, RADIUS + 90.0))
    assert not zs.contains(*destination(*HOME, 45.0, RADIUS + 110.0))
    sq = PolygonZone([(48.0, 11.0), (48.0, 11.01), (48.01, 11.01), (48.01, 11.0)])
    zp = ZoneSet([sq], margin_m=100.0)
    assert zp.contains(*destination(48.005, 11.01, 90.0, 90.0))
    assert not zp.contains(*destination(48.005, 11.01, 90.0, 200.0))


# -- an out-and-back drive from home ---------------------------------------------------------------


def out_and_back(seed: int = 1, stand_s: int = 200) -> list[tuple[float, float, float, float]]:
    """(t, lat, lon, speed) once a second: a highway drive from HOME, the same way back, standing at home."""
    car = SimulatedCar("highway", seed=seed, duration=240)
    out = [car.state_at(float(s)) for s in range(240)]
    track = out + out[::-1]
    rows = [(float(i), s.lat, s.lon, s.speed_kmh) for i, s in enumerate(track)]
    t = rows[-1][0]
    rows += [(t + 1 + i, HOME[0], HOME[1], 0.0) for i in range(stand_s)]
    return rows


@pytest.fixture(scope="module")
def drive():
    rows = out_and_back()
    far = max(sim_haversine(*HOME, lat, lon) for _, lat, lon, _ in rows)
    assert far > 3000.0  # the car really leaves home
    assert sim_haversine(*HOME, rows[0][1], rows[0][2]) < 1.0 and sim_haversine(*HOME, rows[-1][1], rows[-1][2]) < 1.0
    return rows


def feed_fixes(filt: LocationFilter, rows, on_change: bool = False):
    """Feed latitude then longitude per fix (one GPS frame: same t); on_change feeds only components that changed."""
    results = []
    last = (None, None)
    for t, lat, lon, _ in rows:
        fixes = []
        if not on_change or lat != last[0]:
            fixes.append(filt.feed(t, LATITUDE, lat))
        if not on_change or lon != last[1]:
            fixes.append(filt.feed(t, LONGITUDE, lon))
        last = (lat, lon)
        results.append((t, lat, lon, [f for f in fixes if f is not None]))
    tail = filt.flush()
    if tail is not None:
        results.append((tail.t, None, None, [tail]))
    return results


MODES = [
    pytest.param({"decimals": 3}, id="decimals3"),
    pytest.param({"decimals": 2}, id="decimals2"),
    pytest.param({"geohash": 7}, id="geohash7"),
    pytest.param({"geohash": 6}, id="geohash6"),
]


def recorded_cell(mode: dict, fix):
    if "decimals" in mode:
        h = 0.5 * 10.0 ** -mode["decimals"]
        return fix.lat - h, fix.lat + h, fix.lon - h, fix.lon + h
    assert geohash_cell_center(fix.geohash) == (fix.lat, fix.lon)
    return geohash_bbox(fix.geohash)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("on_change", [False, True], ids=["every-fix", "on-change"])
def test_nothing_recorded_reveals_the_home_zone(drive, mode, on_change):
    filt = LocationFilter([CircleZone(*HOME, RADIUS)], **mode)
    results = feed_fixes(filt, drive, on_change)
    fixes = [f for *_, fs in results for f in fs]
    assert len(fixes) > 200  # most of the drive is recorded
    for fix in fixes:
        # no recorded coordinate in the zone, nor any cell that overlaps it (the coarsening margin)
        assert sim_haversine(*HOME, fix.lat, fix.lon) > RADIUS
        assert cell_min_distance(*recorded_cell(mode, fix)) > RADIUS, fix
        assert ("geohash" in mode) == (fix.geohash is not None)
    for t, lat, lon, fs in results:
        if lat is not None and sim_haversine(*HOME, lat, lon) <= RADIUS:
            assert fs == [], (t, fs)  # no output at all while inside (not even a marker)
    # the margin is real: raw positions outside the zone whose cell overlaps it are suppressed too
    suppressed_outside = [
        (t, lat, lon) for t, lat, lon, fs in results
        if lat is not None and not fs and sim_haversine(*HOME, lat, lon) > RADIUS + 5
    ]
    assert suppressed_outside
    assert filt.inside and filt.suppressed(drive[-1][0])  # parked at home


def test_raw_positions_with_a_margin(drive):
    filt = LocationFilter([CircleZone(*HOME, RADIUS)], margin_m=50.0)
    fixes = [f for *_, fs in feed_fixes(filt, drive) for f in fs]
    # exactly the raw positions farther than radius + margin, unchanged
    want = [(float(t), lat, lon) for t, lat, lon, _ in drive if sim_haversine(*HOME, lat, lon) > RADIUS + 50.0]
    assert len(want) > 200
    assert [(f.t, f.lat, f.lon) for f in fixes] == want


def test_pairing_and_suppression_of_other_location_signals():
    far = destination(*HOME, 90.0, 2000.0)
    f = LocationFilter([CircleZone(*HOME, RADIUS)], decimals=3)
    assert f.suppressed(0.0)  # no fix yet: unknown counts as inside
    assert f.feed(0.0, LATITUDE, HOME[0]) is None
    assert f.feed(0.0, LONGITUDE, HOME[1]) is None  # paired, inside
    assert f.inside and f.suppressed(0.5)
    assert f.feed(1.0, LATITUDE, far[0]) is None  # waiting for its longitude
    fix = f.feed(1.0, LONGITUDE, far[1])
    assert fix is not None and fix.t == 1.0 and (fix.lat, fix.lon) == coarsen_decimals(*far, 3)
    assert not f.inside and not f.suppressed(2.0)
    assert f.suppressed(1.0 + f.max_fix_age_s + 0.1)  # stale fix: the car may be anywhere now
    # a longitude alone (latitude unchanged, on-change sampling) is paired with the last latitude,
    # when the next sample shows no partner is coming
    far2 = destination(far[0], far[1], 90.0, 500.0)
    assert f.feed(2.0, LONGITUDE, far2[1]) is None
    fix = f.feed(3.0, LONGITUDE, far2[1] + 0.001)
    assert fix is not None and fix.t == 2.0 and fix.lon == round(far2[1], 3) and fix.lat == round(far[0], 3)
    assert f.flush(3.0) is None  # its partner could still come
    fix = f.flush()
    assert fix is not None and fix.t == 3.0
    assert f.feed(4.0, "Vehicle.Speed", 50.0) is None  # not ours
    # garbage is not a position, and not recorded
    assert f.feed(5.0, LATITUDE, float("nan")) is None
    assert f.feed(5.0, LONGITUDE, 11.0) is None
    assert f.inside


def test_cell_cache_does_not_leak_between_cells():
    """The filter caches the zone decision per cell; moving along must re-decide at each new cell."""
    z = [CircleZone(*HOME, RADIUS)]
    for mode in ({"decimals": 3}, {"geohash": 7}):
        f = LocationFilter(z, **mode)
        fresh_results = []
        for i in range(0, 1500, 7):
            p = destination(*HOME, 30.0, float(i))
            f.feed(float(i), LATITUDE, p[0])
            got = f.feed(float(i), LONGITUDE, p[1])
            fresh = LocationFilter(z, **mode)
            fresh.feed(0.0, LATITUDE, p[0])
            want = fresh.feed(0.0, LONGITUDE, p[1])
            assert (got is None) == (want is None)
            fresh_results.append(want)
        assert any(r is None for r in fresh_results) and any(r is not None for r in fresh_results)


def test_invalid_configuration():
    with pytest.raises(ValueError):
        LocationFilter([], decimals=3, geohash=6)
    with pytest.raises(ValueError):
        LocationFilter([], decimals=12)
    with pytest.raises(ValueError):
        CircleZone(*HOME, 0.0)
    with pytest.raises(TypeError):
        ZoneSet([HOME])


# -- trip start and end ----------------------------------------------------------------------------


def feed_trip(det: TripDetector, rows, end_with_ignition=False):
    records = []
    for t, lat, lon, v in rows:
        records += det.feed(t, LATITUDE, lat)
        records += det.feed(t, LONGITUDE, lon)
        # speed at 10 Hz between fixes, as the car sends it more often than GPS
        for k in range(10):
            records += det.feed(t + k / 10, SPEED, v)
    if end_with_ignition:
        records += det.feed(rows[-1][0] + 1, "Vehicle.LowVoltageSystemState", "OFF")
    records += det.flush(rows[-1][0] + 2)
    return records


@pytest.mark.parametrize("mode", MODES)
def test_trip_start_and_end_at_home_are_not_recorded(drive, mode):
    det = TripDetector([CircleZone(*HOME, RADIUS)], **mode, end_after_s=60.0)
    records = feed_trip(det, drive)
    assert records == []
    assert not det.in_trip


@pytest.mark.parametrize("mode", MODES + [pytest.param({}, id="raw")])
def test_trip_start_and_end_outside_zones_are_recorded_coarsened(drive, mode):
    work = (48.30, 11.70)  # a zone far from the drive: it must not suppress anything
    det = TripDetector([CircleZone(*work, RADIUS)], **mode, end_after_s=60.0)
    records = feed_trip(det, drive)
    names = [n for _, n, _ in records]
    expect = ["trip.start.latitude", "trip.start.longitude"] + (["trip.start.geohash"] if "geohash" in mode else [])
    expect += [n.replace("start", "end") for n in expect]
    assert names == expect
    start = {n.split(".")[-1]: v for t, n, v in records if n.startswith("trip.start")}
    end = {n.split(".")[-1]: v for t, n, v in records if n.startswith("trip.end")}
    t_start = records[0][0]
    t_end = [t for t, n, _ in records if n.startswith("trip.end")][0]
    moving = [t for t, *_, v in drive if v >= 5.0]
    assert moving[0] - 1 <= t_start <= moving[0] + 1
    # the trip ends when the car stopped, not when the standstill was detected
    rolling = [t for t, *_, v in drive if v > 1.0]
    assert rolling[-1] < t_end <= rolling[-1] + 1.0
    for pos in (start, end):
        assert sim_haversine(*HOME, pos["latitude"], pos["longitude"]) < 1000.0  # coarsened home, not elsewhere
        if "decimals" in mode:
            assert (pos["latitude"], pos["longitude"]) == coarsen_decimals(*HOME, mode["decimals"])
        if "geohash" in mode:
            assert pos["geohash"] == geohash_encode(*HOME, mode["geohash"])


def test_trip_end_by_ignition_and_zone_margin():
    # a trip from 2 km east of home to 380 m from home: outside the 300 m zone, inside a 100 m margin
    start = destination(*HOME, 90.0, 2000.0)
    rows = []
    for i in range(41):
        p = destination(*start, 270.0, 1620.0 * i / 40)
        rows.append((float(i), p[0], p[1], 0.0 if i in (0, 40) else 150.0))
    assert sim_haversine(*HOME, rows[-1][1], rows[-1][2]) == pytest.approx(380.0, abs=1.0)
    det = TripDetector([CircleZone(*HOME, RADIUS)], margin_m=100.0)
    records = feed_trip(det, rows, end_with_ignition=True)
    assert [n for _, n, _ in records] == ["trip.start.latitude", "trip.start.longitude"]
    det = TripDetector([CircleZone(*HOME, RADIUS)])
    records = feed_trip(det, rows, end_with_ignition=True)
    assert [n for _, n, _ in records][2:] == ["trip.end.latitude", "trip.end.longitude"]
    assert records[2][0] == 40.0


def test_trip_without_a_fix_records_nothing():
    det = TripDetector([CircleZone(*HOME, RADIUS)])
    out = []
    for i in range(100):
        out += det.feed(i / 10, SPEED, 30.0)
    out += det.flush(20.0)
    assert out == []
