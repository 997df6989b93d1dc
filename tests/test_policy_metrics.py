"""On-board metrics, window aggregates and precision, on simulated drives."""

from __future__ import annotations

import math
import random
from datetime import datetime, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

import pytest

from carledger.policy.aggregate import WindowAggregator
from carledger.policy.metrics import (
    ACCEL_LONG,
    ODOMETER,
    SPEED,
    Distance,
    DrivingTime,
    HarshEvents,
    MetricSet,
    NightShare,
    OverSpeedShare,
)
from carledger.policy.precision import quantize, quantizer
from carledger_sim.car import SimulatedCar

DAY = 1_700_049_600.0  # 2023-11-15T12:00:00Z


@lru_cache(maxsize=None)
def history(scenario: str, seed: int, duration: float | None = None):
    return tuple(SimulatedCar(scenario, seed=seed, duration=duration).history())


@lru_cache(maxsize=None)
def decoded(scenario: str, seed: int, duration: float | None = None) -> tuple:
    """(t, name, value) of speed and longitudinal acceleration decoded from the car's CAN frames."""
    car = SimulatedCar(scenario, seed=seed, duration=duration)
    db = car.db
    wanted = {
        db.get_message_by_name("ABS_SPEED").frame_id: ("VehicleSpeed", SPEED),
        db.get_message_by_name("ABS_ACCEL").frame_id: ("LongitudinalAccel", ACCEL_LONG),
    }
    out = []
    for msg in car.frames():
        w = wanted.get(msg.arbitration_id)
        if w is not None:
            value = db.get_message_by_frame_id(msg.arbitration_id).decode(msg.data)[w[0]]
            out.append((msg.timestamp, w[1], value))
    return tuple(out)


def run(metric, samples, t_end=None):
    records = []
    last_t = 0.0
    for t, name, value in samples:
        records += metric.feed(t, name, value)
        last_t = t
    records += metric.flush(last_t if t_end is None else t_end)
    return records


def speed_samples(states, start=0.0, every=1):
    return [(start + s.t, SPEED, s.speed_kmh) for s in states[::every]]


def values(records, name):
    return [v for _, n, v in records if n == name]


# -- precision -------------------------------------------------------------------------------------


def test_quantize():
    assert quantize(42.34, 0.1) == 42.3 and repr(quantize(42.34, 0.1)) == "42.3"
    assert repr(quantize(42.25, 0.5)) == "42.0" and quantize(42.26, 0.5) == 42.5
    assert repr(quantize(48.137154321, 1e-4)) == "48.1372"
    assert repr(quantize(0.7, 0.1)) == "0.7"  # 7 * 0.1 is 0.7000000000000001
    assert quantize(1234, 50) == 1250 and type(quantize(1234, 50)) is int
    assert quantize(1225, 50) == 1200 and quantize(1275, 50) == 1300  # ties to even, exactly
    assert quantize(-7, 5) == -5
    assert quantize(42, 0.5) == 42.0 and type(quantize(42, 0.5)) is float
    assert quantize(123.456, 10) == 120.0 and type(quantize(123.456, 10)) is float
    assert quantize("OFF", 1) == "OFF" and quantize(True, 1) is True
    assert math.isnan(quantize(float("nan"), 0.1)) and quantize(math.inf, 0.1) == math.inf
    rng = random.Random(1)
    q = quantizer(0.01)
    for _ in range(2000):
        x = rng.uniform(-500, 500)
        y = q(x)
        assert abs(y - x) <= 0.005 + 1e-9
        assert len(repr(y).split(".")[1]) <= 2
    for bad in (0, -1, math.nan, "0.1"):
        with pytest.raises(ValueError):
            quantize(1.0, bad)


# -- distance ---------------------------------------------------------------------------------------


def test_distance_from_speed_matches_the_odometer_on_a_highway_drive():
    h = history("highway", 1)
    odo = h[-1].odometer_km - h[0].odometer_km
    assert odo > 5.0
    (rec,) = run(Distance(), speed_samples(h, DAY))
    assert rec[1] == "metric.distance_km"
    assert rec[2] == pytest.approx(odo, rel=0.01)
    # sampled once a second (e.g. a minimum interval on the tap) it still holds
    (rec,) = run(Distance(), speed_samples(h, DAY, every=100))
    assert rec[2] == pytest.approx(odo, rel=0.01)


def test_distance_from_odometer_deltas():
    h = history("highway", 2)
    odo = h[-1].odometer_km - h[0].odometer_km
    samples = [(DAY + s.t, ODOMETER, round(s.odometer_km, 2)) for s in h[::100]]  # 1 Hz, 0.01 km, as on CAN
    (rec,) = run(Distance(source="odometer"), samples)
    assert rec[2] == pytest.approx(odo, rel=0.01)
    # auto: the odometer wins where it is sent; speed alone otherwise
    mixed = sorted(samples + speed_samples(h, DAY, every=10))
    (rec,) = run(Distance(), mixed)
    assert rec[2] == pytest.approx(round(h[-100].odometer_km, 2) - round(h[0].odometer_km, 2), abs=1e-9)
    # a reset (negative delta) and a wild jump are ignored
    bad = samples[:50] + [(samples[50][0], ODOMETER, 0.0)] + samples[51:]
    (rec,) = run(Distance(source="odometer"), bad)
    assert rec[2] < odo


def test_distance_does_not_integrate_across_a_gap_and_splits_windows():
    h = history("highway", 1)
    gap = [s for s in h if not 100.0 <= s.t < 160.0]
    by_t = {round(s.t, 2): s for s in h}
    gap_km = by_t[160.0].odometer_km - by_t[99.99].odometer_km
    odo = h[-1].odometer_km - h[0].odometer_km
    (rec,) = run(Distance(), speed_samples(gap, DAY))
    assert rec[2] == pytest.approx(odo - gap_km, rel=0.001)
    # one-minute windows: aligned, one record per window with data, adding up to the whole
    recs = run(Distance(window_s=60.0), speed_samples(h, DAY))
    assert [t for t, _, _ in recs] == [DAY + 60 * i for i in range(1, 5)] + [DAY + h[-1].t]
    assert sum(v for _, _, v in recs) == pytest.approx(odo, rel=1e-6)
    first_minute = by_t[60.0].odometer_km - h[0].odometer_km
    assert recs[0][2] == pytest.approx(first_minute, rel=1e-4)
    # with the gap: the window that saw no sample emits nothing
    recs = run(Distance(window_s=30.0), speed_samples(gap, DAY))
    ends = [t for t, _, _ in recs]
    assert DAY + 120.0 in ends and DAY + 150.0 not in ends and DAY + 180.0 in ends  # [120, 150) had no sample
    assert sum(v for _, _, v in recs) == pytest.approx(odo - gap_km, rel=0.001)


def test_poll_closes_a_window_when_no_sample_can_change_it():
    d = Distance(window_s=60.0)
    for i in range(50):
        assert d.feed(DAY + i, SPEED, 36.0) == ()
    assert d.poll(DAY + 62.0) == []  # a sample before DAY + 65 could still add to the window
    (rec,) = d.poll(DAY + 66.0)
    assert rec[0] == DAY + 60.0 and rec[2] == pytest.approx(0.49)
    assert d.poll(DAY + 200.0) == []


# -- harsh events -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_harsh_brake_scenario_has_exactly_one_harsh_braking(seed):
    samples = decoded("harsh_brake", seed)
    records = run(HarshEvents("braking", 4.0), samples)
    assert records == [(samples[-1][0], "metric.harsh_braking_count", 1)]
    assert values(run(HarshEvents("acceleration"), samples), "metric.harsh_acceleration_count") == [0]
    # without an acceleration signal: the derivative of the (0.01 km/h) speed signal
    speed_only = [s for s in samples if s[1] == SPEED]
    assert values(run(HarshEvents("braking", 4.0), speed_only), "metric.harsh_braking_count") == [1]
    # the event is dated in the window of the emergency stop (t = 30 s)
    recs = run(HarshEvents("braking", -4.0, window_s=10.0), samples)
    assert [(t, v) for t, _, v in recs] == [(10.0, 0), (20.0, 0), (30.0, 0), (40.0, 1), (samples[-1][0], 0)]


@pytest.mark.parametrize("seed", [1, 2])
def test_gentle_city_drive_has_no_harsh_events(seed):
    samples = decoded("city", seed, 150.0)
    assert values(run(HarshEvents("braking", 4.0), samples), "metric.harsh_braking_count") == [0]
    assert values(run(HarshEvents("acceleration", 3.5), samples), "metric.harsh_acceleration_count") == [0]
    speed_only = [s for s in samples if s[1] == SPEED]
    assert values(run(HarshEvents("braking", 4.0), speed_only), "metric.harsh_braking_count") == [0]
    # not vacuous: with a low threshold its firmer stops do count
    assert values(run(HarshEvents("braking", 1.5), samples), "metric.harsh_braking_count")[0] >= 1


def test_harsh_events_debounce_and_hysteresis():
    def count(levels, dt=0.01, **kw):
        m = HarshEvents("braking", 4.0, **kw)
        return run(m, [(i * dt, ACCEL_LONG, a) for i, a in enumerate(levels)])[0][2]

    assert count([0.0] * 10 + [-9.0] + [0.0] * 10) == 0  # a one-sample spike
    assert count([0.0] * 10 + [-5.0] * 20 + [0.0] * 10) == 1
    # ABS cycling around the threshold, and back past the release level briefly: one manoeuvre
    abs_cycle = ([-8.0] * 15 + [-3.5] * 5) * 5 + [-2.0] * 30 + [-6.0] * 30 + [0.0] * 10
    assert count(abs_cycle) == 1
    # two brakings 10 s apart: two events
    assert count([-5.0] * 50 + [0.0] * 1000 + [-5.0] * 50 + [0.0] * 10) == 2
    # a gap in the data ends an event
    m = HarshEvents("braking", 4.0, refractory_s=0.0)
    samples = [(i * 0.01, ACCEL_LONG, -5.0) for i in range(50)] + [(30 + i * 0.01, ACCEL_LONG, -5.0) for i in range(50)]
    assert run(m, samples)[0][2] == 2
    m = HarshEvents("acceleration", 3.0)
    assert run(m, [(i * 0.01, ACCEL_LONG, 3.2) for i in range(50)])[0] == (0.49, "metric.harsh_acceleration_count", 1)


# -- shares -----------------------------------------------------------------------------------------


def model_share(h, predicate, moving=1.0):
    drive = hit = 0.0
    for a, b in zip(h, h[1:]):
        if a.speed_kmh > moving:
            drive += b.t - a.t
            if predicate(a):
                hit += b.t - a.t
    return hit / drive


@pytest.mark.parametrize("limit", [50.0, 120.0])
def test_over_speed_share_matches_the_model(limit):
    h = history("highway", 1)
    want = model_share(h, lambda s: s.speed_kmh > limit)
    assert 0.0 < want < 1.0
    (rec,) = run(OverSpeedShare(limit), speed_samples(h, DAY))
    assert rec[1] == "metric.over_speed_share" and rec[2] == pytest.approx(want, abs=1e-6)
    steps = sum(1 for s in h[:-1] if s.speed_kmh > limit) / sum(1 for s in h[:-1] if s.speed_kmh > 1.0)
    assert rec[2] == pytest.approx(steps, abs=1e-3)
    # per window, weighted by driving time, they add up to the same share
    ms = MetricSet([OverSpeedShare(limit, 60.0), DrivingTime(60.0)])
    recs = run(ms, speed_samples(h, DAY))
    shares = dict((t, v) for t, n, v in recs if n == "metric.over_speed_share")
    weights = dict((t, v) for t, n, v in recs if n == "metric.driving_time_s")
    assert set(shares) <= set(weights)
    total = sum(shares.get(t, 0.0) * w for t, w in weights.items()) / sum(weights.values())
    assert total == pytest.approx(want, abs=1e-9)


def berlin(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=ZoneInfo("Europe/Berlin")).timestamp()


def test_night_share_night_vs_day():
    h = history("city", 1)
    night = berlin("2023-11-15T23:00:00")
    for start, want in ((night, 1.0), (DAY, 0.0), (berlin("2023-11-16T04:57:00"), None)):
        (rec,) = run(NightShare(tz="Europe/Berlin"), speed_samples(h, start))
        if want is None:  # 04:57 + 5 min: night until 05:00, a share in between
            tz = ZoneInfo("Europe/Berlin")
            want = model_share(h, lambda s: datetime.fromtimestamp(start + s.t, tz).hour < 5)
            assert 0.0 < want < 1.0
        assert rec[1] == "metric.night_share" and rec[2] == pytest.approx(want, abs=1e-6)


def test_night_share_crossing_22h_uses_local_time_with_dst():
    h = history("highway", 3)
    start = datetime(2023, 7, 15, 19, 58, tzinfo=timezone.utc).timestamp()  # 21:58 in Berlin (CEST)
    tz = ZoneInfo("Europe/Berlin")
    want = model_share(h, lambda s: datetime.fromtimestamp(start + s.t, tz).hour >= 22)
    assert 0.2 < want < 0.9
    (rec,) = run(NightShare(start="22:00", end="05:00", tz="Europe/Berlin"), speed_samples(h, start))
    assert rec[2] == pytest.approx(want, abs=1e-6)
    # a fixed UTC+1 offset is not Berlin in summer: 20:58, all day
    assert run(NightShare(tz=1), speed_samples(h, start))[0][2] == 0.0
    # UTC+2 as a fixed offset agrees with the zone in July
    assert run(NightShare(tz=2.0), speed_samples(h, start))[0][2] == pytest.approx(want, abs=1e-6)
    # an evening window that does not wrap midnight
    (rec,) = run(NightShare(start="20:00", end="21:59", tz="UTC"), speed_samples(h, start))
    assert rec[2] == pytest.approx(model_share(h, lambda s: 20 * 3600 <= (start + s.t) % 86400 < 21 * 3600 + 59 * 60), abs=1e-6)
    assert 0.0 < rec[2] < 1.0
    with pytest.raises(ValueError):
        NightShare(start="25:00")
    with pytest.raises(KeyError):
        NightShare(tz="Mars/Olympus_Mons")


def test_no_driving_no_share():
    assert run(NightShare(), [(DAY + i, SPEED, 0.0) for i in range(100)]) == []
    assert run(OverSpeedShare(100.0), [(DAY + i, SPEED, 0.5) for i in range(100)]) == []
    assert run(DrivingTime(), [(DAY + i, SPEED, 0.5) for i in range(100)]) == [(DAY + 99, "metric.driving_time_s", 0.0)]


def test_metric_set_dispatches_by_name():
    ms = MetricSet([Distance(), HarshEvents("braking"), OverSpeedShare(100.0)])
    assert ms.inputs == {SPEED, ODOMETER, ACCEL_LONG}
    assert ms.feed(0.0, "Vehicle.Cabin.Seat.Row1.DriverSide.IsBelted", True) == ()
    recs = run(ms, decoded("harsh_brake", 1))
    assert {n for _, n, _ in recs} == {"metric.distance_km", "metric.harsh_braking_count", "metric.over_speed_share"}


def test_a_metric_set_records_what_each_metric_fed_alone_records():
    """MetricSet calls some metrics' methods directly (the speed's samples to _speed, not through feed):
    the records are the ones each metric gives when every sample goes through its own feed."""
    samples = list(decoded("harsh_brake", 1))
    samples += [(t, ODOMETER, 1000.0 + i * 0.01) for i, (t, _, _) in enumerate(samples[::50])]
    samples.sort(key=lambda s: s[0])

    def metrics():
        return [Distance(60.0), Distance(60.0, source="odometer"), Distance(60.0, source="speed"),
                DrivingTime(60.0), OverSpeedShare(30.0, 60.0), NightShare(60.0, tz="Europe/Berlin"),
                HarshEvents("braking", window_s=60.0), HarshEvents("acceleration", window_s=60.0)]

    alone = sorted(r for m in metrics() for r in run(m, samples))
    together = sorted(run(MetricSet(metrics()), samples))
    assert together == alone and len({n for _, n, _ in alone}) == 6
    ms = MetricSet(metrics())  # as the policy engine calls it: each of feeds(name) in turn
    by_feeds = [r for t, name, value in samples for feed in ms.feeds(name) for r in feed(t, name, value)]
    assert sorted(by_feeds + ms.flush(samples[-1][0])) == alone
    assert ms.feeds("Vehicle.Cabin.Seat.Row1.DriverSide.IsBelted") == ()


# -- window aggregates -------------------------------------------------------------------------------


def direct_aggregates(samples, window_s, t_end, hold):
    """Brute force: per window, the held signal sampled every millisecond."""
    out = {}
    ws = math.floor(samples[0][0] / window_s) * window_s
    while ws < t_end:
        we = min(ws + window_s, t_end)
        inside = [(t, v) for t, v in samples if ws <= t < we]
        if inside:
            held = []
            step = 0.001
            k = 0
            while ws + (k + 0.5) * step < we:
                x = ws + (k + 0.5) * step
                prev = [(t, v) for t, v in samples if t <= x]
                if prev and x - prev[-1][0] < hold:
                    held.append(prev[-1][1])
                k += 1
            before = [(t, v) for t, v in samples if t < ws]
            carried = [before[-1][1]] if before and ws - before[-1][0] < hold else []
            vals = [v for _, v in inside] + carried
            out[we] = {"min": min(vals), "max": max(vals), "mean": sum(held) / len(held), "count": len(inside),
                       "last": inside[-1][1]}
        ws += window_s
    return out


def test_window_aggregates_match_a_direct_computation():
    rng = random.Random(5)
    samples = []
    t = 3.3
    while t < 60.0:
        samples.append((round(t, 3), round(rng.uniform(-10, 50), 2)))
        t += rng.choice((0.05, 0.2, 0.7, 1.5, 3.0)) if not 30 <= t < 31 else 12.0  # and one gap longer than the hold
    agg = WindowAggregator(10.0, ("min", "max", "mean", "count", "last"), max_hold_s=5.0)
    recs = []
    for t, v in samples:
        recs += agg.feed(t, "Vehicle.Speed", v)
        recs += agg.feed(t, "Vehicle.Cabin.Infotainment.Name", "text is ignored")
    t_end = 62.5
    recs += agg.flush(t_end)
    want = direct_aggregates(samples, 10.0, t_end, 5.0)
    got: dict = {}
    for t, n, v in recs:
        assert n.startswith("Vehicle.Speed.")
        got.setdefault(t, {})[n.rsplit(".", 1)[1]] = v
    assert sorted(got) == sorted(want)
    for we, w in want.items():
        g = got[we]
        assert (g["min"], g["max"], g["count"], g["last"]) == (w["min"], w["max"], w["count"], w["last"]), we
        assert g["mean"] == pytest.approx(w["mean"], abs=0.05), we
    # record names and order: per signal, the functions as asked
    assert [n for t, n, _ in recs if t == 20.0] == [f"Vehicle.Speed.{f}" for f in ("min", "max", "mean", "count", "last")]


def test_window_aggregates_several_signals_on_a_drive():
    h = history("harsh_brake", 1)
    agg = WindowAggregator(15.0, signals=[SPEED, "Vehicle.Powertrain.CombustionEngine.Speed"])
    recs = []
    for s in h:
        t = DAY + s.t
        recs += agg.feed(t, SPEED, s.speed_kmh)
        recs += agg.feed(t, "Vehicle.Powertrain.CombustionEngine.Speed", s.engine_rpm)
        recs += agg.feed(t, "Vehicle.Exterior.AirTemperature", s.ambient_temp)  # not asked for
    recs += agg.flush(DAY + h[-1].t + 0.01)
    by = {(t, n): v for t, n, v in recs}
    assert {n for _, n in by} == {f"{sig}.{f}" for sig in (SPEED, "Vehicle.Powertrain.CombustionEngine.Speed")
                                  for f in ("min", "max", "mean", "count")}
    for k in range(3):
        ws, we = DAY + 15 * k, DAY + 15 * (k + 1)
        win = [s.speed_kmh for s in h if ws <= DAY + s.t < we]
        assert by[(we, SPEED + ".count")] == len(win) == 1500
        assert by[(we, SPEED + ".min")] == min(win) and by[(we, SPEED + ".max")] == max(win)
        # 100 Hz samples: the time-weighted mean is the sample mean
        assert by[(we, SPEED + ".mean")] == pytest.approx(sum(win) / len(win), rel=1e-9)
    assert agg.poll(DAY + 1000) == []  # flushed: nothing left


def test_window_aggregator_poll_and_validation():
    agg = WindowAggregator(10.0, ("mean", "count"))
    assert agg.feed(1.0, "x", 2) == () and agg.feed(4.0, "x", 4) == ()
    assert agg.poll(9.0) == []
    assert agg.poll(10.0) == [(10.0, "x.mean", pytest.approx((2 * 3 + 4 * 5) / 8)), (10.0, "x.count", 2)]
    # held value carried (under max_hold_s) into the next window's mean
    assert agg.feed(12.0, "x", 10) == ()
    assert agg.flush(14.0) == [(14.0, "x.mean", pytest.approx(10.0)), (14.0, "x.count", 1)]
    with pytest.raises(ValueError):
        WindowAggregator(10.0, ("median",))
    with pytest.raises(ValueError):
        WindowAggregator(0.0)


class PerSampleAggregates:
    """The oracle: each sample added to its signal's accumulators as it comes (the aggregator before its samples
    were kept and folded in bulk), for exact comparison: the same float operations in the same order."""

    def __init__(self, window_s, functions, hold=5.0):
        self.w, self.functions, self.hold = window_s, functions, hold
        self.accs, self.ws, self.we = {}, None, math.inf

    def _open(self, t):
        self.ws = math.floor(t / self.w) * self.w
        self.we = self.ws + self.w

    def feed(self, t, name, value):
        if type(value) not in (int, float, bool):
            return []
        out = []
        if self.ws is None:
            self._open(t)
        elif t >= self.we:
            out = self._close(self.we)
            self._open(t)
        a = self.accs.setdefault(name, {"mn": math.inf, "mx": -math.inf, "wsum": 0.0, "wdur": 0.0, "ssum": 0.0,
                                        "n": 0, "v": 0.0, "t": None})
        if a["t"] is not None and t >= a["t"]:
            lo = a["t"] if a["t"] > self.ws else self.ws
            hi = min(t, a["t"] + self.hold)
            if hi > lo:
                a["wsum"] += a["v"] * (hi - lo)
                a["wdur"] += hi - lo
                if a["n"] == 0 and a["t"] < self.ws:
                    a["mn"], a["mx"] = min(a["mn"], a["v"]), max(a["mx"], a["v"])
        a["mn"], a["mx"] = min(a["mn"], value), max(a["mx"], value)
        a["ssum"] += value
        a["n"] += 1
        a["v"], a["t"] = value, t
        return out

    def poll(self, t):
        if self.ws is None or t < self.we:
            return []
        out = self._close(self.we)
        self.ws, self.we = None, math.inf
        return out

    def flush(self, t):
        out = self._close(min(t, self.we)) if self.ws is not None else []
        self.ws, self.we, self.accs = None, math.inf, {}
        return out

    def _close(self, t_end):
        out = []
        for name, a in self.accs.items():
            if a["n"] == 0:
                continue
            lo = a["t"] if a["t"] > self.ws else self.ws
            hi = min(t_end, a["t"] + self.hold)
            if hi > lo:
                a["wsum"] += a["v"] * (hi - lo)
                a["wdur"] += hi - lo
            for f in self.functions:
                val = {"mean": a["wsum"] / a["wdur"] if a["wdur"] > 0.0 else a["ssum"] / a["n"], "min": a["mn"],
                       "max": a["mx"], "count": a["n"], "last": a["v"]}[f]
                out.append((t_end, f"{name}.{f}", int(val) if type(val) is bool else val))
            a.update(mn=math.inf, mx=-math.inf, wsum=0.0, wdur=0.0, ssum=0.0, n=0)
        return out


@pytest.mark.parametrize("seed", range(12))
def test_window_aggregates_kept_and_folded_equal_each_sample_added_as_it_comes(seed):
    """Samples kept and folded in bulk (at a window's end, at FOLD_AT, at poll and flush) give the same records,
    to the last bit, as adding each as it comes: out-of-order times, text, bools, gaps over the hold, 1 to 3000
    samples a window, windows closed by time alone, and the feeding engine's way in (`input`, `sink`)."""
    from carledger.policy.aggregate import FOLD_AT

    rng = random.Random(seed)
    functions = ("min", "max", "mean", "count", "last")
    window = rng.choice((0.5, 3.0, 10.0, 60.0))
    names = ["a", "b", "c"][: rng.randint(1, 3)]
    oracle = PerSampleAggregates(window, functions)
    fed = WindowAggregator(window, functions)
    sunk: list = []
    engine = WindowAggregator(window, functions, sink=sunk.extend)
    inputs = {name: engine.input(name) for name in names}
    want, got, got_sunk = [], [], []
    t = 1_700_000_000.0 + rng.uniform(0, 100)
    for _ in range(rng.randint(2_000, 6_000)):
        small = rng.random() < 0.99
        t += rng.choice((0.0, 0.001, 0.001, 0.01, -0.01) if small else (0.3, 2.0, 7.0))  # repeats, steps back, gaps
        name = rng.choice(names)
        value = rng.choice((rng.uniform(-50, 50), rng.randint(-3, 3), True, False, "text", rng.uniform(0, 1e-9)))
        want += oracle.feed(t, name, value)
        got += fed.feed(t, name, value)
        inputs[name](t, value)
        if rng.random() < 0.002:  # a timer
            poll_t = t + rng.uniform(0, 2 * window)
            want += oracle.poll(poll_t)
            got += fed.poll(poll_t)
            got_sunk += engine.poll(poll_t)
        if rng.random() < 0.0005:  # the stream stops and starts again
            want += oracle.flush(t)
            got += fed.flush(t)
            got_sunk += engine.flush(t)
    want += oracle.flush(t + 1.0)
    got += fed.flush(t + 1.0)
    assert engine.feed(t, "a", "text") == ()  # with a sink, `feed` returns nothing
    got_sunk = sunk + got_sunk + engine.flush(t + 1.0)
    assert len(want) > 20
    assert repr(got) == repr(want)  # repr: bit for bit, and -0.0 apart from 0.0
    assert sorted(map(repr, got_sunk)) == sorted(map(repr, want))  # poll's and flush's records come back, not sunk
    if window == 60.0:  # windows long enough that a signal's samples were folded in before the window ended
        assert any(name.endswith(".count") and count > FOLD_AT for _, name, count in want)


def test_window_aggregates_keep_at_most_fold_at_samples_of_a_signal():
    """A long window at a high rate keeps a bounded number of samples, not the window's."""
    from carledger.policy.aggregate import FOLD_AT

    agg = WindowAggregator(3600.0, ("mean", "count"))
    offer = agg.input("x")
    for k in range(20 * FOLD_AT):
        offer(1000.0 + k * 0.001, float(k % 7))
        assert len(agg._accs["x"].samples) < FOLD_AT
    end = 1000.0 + 20 * FOLD_AT * 0.001
    assert agg.flush(end) == [(end, "x.mean", pytest.approx(3.0, abs=0.01)), (end, "x.count", 20 * FOLD_AT)]


def test_shares_integrated_together_record_what_each_records_alone_in_the_same_order():
    """MetricSet integrates shares that see the same samples over the same windows together (_ShareGroup):
    the records, in order, are the ones each metric gives fed one after the other, across 22:00 local time,
    gaps over max_gap_s, samples out of order, polls and a flush mid-drive."""
    rng = random.Random(3)
    start = berlin("2024-03-30T21:40:00")
    samples, t, v = [], start, 40.0
    while t < start + 2 * 3600:
        t += rng.choice((0.1, 0.1, 0.1, 0.1, 7.0, -0.3))
        v = min(max(v + rng.uniform(-4, 4), 0.0), 140.0)
        samples.append((t, SPEED, v if rng.random() < 0.9 else 0.5))

    def metrics():
        return [DrivingTime(420.0), NightShare(420.0, tz="Europe/Berlin"), OverSpeedShare(90.0, 420.0),
                Distance(420.0), OverSpeedShare(50.0, 420.0), NightShare(420.0, tz="Europe/Berlin", moving_kmh=5.0),
                DrivingTime(None), OverSpeedShare(100.0, None), HarshEvents("acceleration", window_s=420.0)]

    alone, together = metrics(), MetricSet(metrics())
    assert len(together._parts) == 6  # three shares, Distance, OverSpeedShare, a NightShare of its own, two, Harsh
    want, got = [], []
    for i, (t, name, value) in enumerate(samples):
        want += [r for m in alone if name in m.inputs for r in m.feed(t, name, value)]
        got += [r for feed in together.feeds(name) for r in feed(t, name, value)]
        if i % 500 == 0:
            want += [r for m in alone for r in m.poll(t + 700.0)]
            got += together.poll(t + 700.0)
        if i == len(samples) // 2:
            want += [r for m in alone for r in m.flush(t)]
            got += together.flush(t)
    want += [r for m in alone for r in m.flush(samples[-1][0])]
    got += together.flush(samples[-1][0])
    assert {n for _, n, _ in want} >= {"metric.night_share", "metric.over_speed_share", "metric.driving_time_s"}
    assert any(0.0 < v < 1.0 for _, n, v in want if n == "metric.night_share")  # a window across 22:00
    assert repr(got) == repr(want)
