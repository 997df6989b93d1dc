"""The simulated car's crash scenarios (issue 7, part 4): crash, near_miss, bump.

Everything is asserted on what goes onto the bus (the frames, decoded with
cantools) and on the drive model's states; the Part 563 trigger is a change of
longitudinal speed of 8 km/h or more within 150 ms.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path

import cantools
import pytest

from carledger_sim.car import SimulatedCar
from carledger_sim.cli import main
from carledger_sim.model import ACU_DETECT_S, AIRBAG_FIRE_S
from carledger_sim.scenarios import (
    BUMP_AT,
    BUMP_S,
    CRASH_AT,
    IMPACT_S,
    NEAR_MISS_AT,
    SCENARIOS,
    Impact,
    get_scenario,
)

DBC = Path(__file__).resolve().parents[1] / "dbc" / "carledger_demo.dbc"
DB = cantools.database.load_file(str(DBC))
WANTED = {"ABS_SPEED", "ABS_ACCEL", "ABS_BRAKE", "ACU_STATUS", "ECM_ENGINE"}
TRIGGER_KMH = 8.0
WINDOW_S = 0.15

# sha256 over (timestamp, id, extended, data) of every frame, measured before
# the crash scenarios were added: the existing drives must not change
CITY_0_60 = "ad65bb189099c6d6a08c13ed04c54716e95309b0ecfbb702a1373b67d189f010"
HARSH_BRAKE_0_45 = "a6db5ffc84ae8fea16ab633ae5eb42ec9f2d83d8d2a02e0574e3b693c6ee76ad"


def frames_digest(car: SimulatedCar) -> str:
    h = hashlib.sha256()
    for m in car.frames():
        h.update(repr((m.timestamp, m.arbitration_id, m.is_extended_id, bytes(m.data))).encode())
    return h.hexdigest()


@functools.cache
def drive(scenario: str, seed: int) -> tuple[SimulatedCar, dict[str, list[tuple[float, dict]]]]:
    """The car and its decoded frames, by message name: [(t since start, signals)]."""
    car = SimulatedCar(scenario, seed=seed)
    by_id = {DB.get_message_by_name(n).frame_id: n for n in WANTED}
    out: dict[str, list[tuple[float, dict]]] = {n: [] for n in WANTED}
    for m in car.frames():
        name = by_id.get(m.arbitration_id)
        if name is not None:
            out[name].append((m.timestamp - car.start_time, DB.decode_message(m.arbitration_id, m.data, decode_choices=False)))
    return car, out


def series(decoded, message: str, signal: str) -> list[tuple[float, float]]:
    return [(t, sig[signal]) for t, sig in decoded[message]]


def speed_changes(speed: list[tuple[float, float]], window: float = WINDOW_S) -> list[tuple[float, float]]:
    """(start time, change) of every pair of samples at most `window` apart
    whose speeds differ by the trigger or more (signed: negative = slowing)."""
    hits = []
    for i, (t0, v0) in enumerate(speed):
        for t1, v1 in speed[i + 1 :]:
            if t1 - t0 > window:
                break
            if abs(v1 - v0) >= TRIGGER_KMH:
                hits.append((t0, v1 - v0))
    return hits


def largest_change(speed: list[tuple[float, float]], window: float = WINDOW_S) -> float:
    best = 0.0
    for i, (t0, v0) in enumerate(speed):
        for t1, v1 in speed[i + 1 :]:
            if t1 - t0 > window:
                break
            best = max(best, abs(v1 - v0))
    return best


def assert_no_acu_flags(decoded) -> None:
    acu = decoded["ACU_STATUS"]
    assert len(acu) > 400  # 100 ms cycle
    for name in ("CrashDetected", "DriverAirbagDeployed", "PassengerAirbagDeployed"):
        assert {sig[name] for _, sig in acu} == {0}, name


# -- the scenarios exist, carry their impacts, and leave the others alone ----------------


def test_scenarios_carry_their_impacts():
    crash, near, bump = (get_scenario(n) for n in ("crash", "near_miss", "bump"))
    assert crash.impacts == (Impact(CRASH_AT, 0.0, IMPACT_S, deploys=True),)
    assert near.impacts == ()
    assert bump.impacts == (Impact(BUMP_AT, 10.0, BUMP_S, deploys=False),)
    assert CRASH_AT - 3.0 > 20.0  # more than 20 s of driving before the impact
    for s in (crash, near, bump):
        assert s.default_duration <= 55.0
    for old in ("city", "highway", "errand", "harsh_brake"):
        assert get_scenario(old).impacts == ()
    side = get_scenario("side_impact")  # parked, hit from the side: a deployment with no speed change
    assert [(i.to_kmh, i.deploys) for i in side.impacts] == [(0.0, True)]
    speeds = {s.speed_kmh for s in SimulatedCar(side, seed=0, duration=side.impacts[0].at + 1.0).history()}
    assert speeds == {0.0}


@pytest.mark.parametrize("bad", [dict(at=-1.0, to_kmh=0.0), dict(at=1.0, to_kmh=0.0, duration=0.0),
                                 dict(at=1.0, to_kmh=-5.0)])
def test_impact_rejects_nonsense(bad):
    with pytest.raises(ValueError, match="impact"):
        Impact(**bad)


def test_overlapping_impacts_are_rejected():
    with pytest.raises(ValueError, match="overlap"):
        dataclasses.replace(get_scenario("bump"), impacts=(Impact(35.0, 10.0, 0.12), Impact(35.1, 0.0)))
    twice = dataclasses.replace(get_scenario("bump"), impacts=(Impact(35.0, 10.0, 0.12), Impact(40.0, 8.0, 0.12)))
    speed = [s.speed_kmh for s in SimulatedCar(twice, seed=0, duration=42.0).history()]
    assert max(speed[3500:3600]) == pytest.approx(10.0) and max(speed[4000:4100]) == pytest.approx(8.0)


def test_existing_scenarios_send_the_same_frames_as_before():
    assert frames_digest(SimulatedCar("city", seed=0, duration=60)) == CITY_0_60
    assert frames_digest(SimulatedCar("harsh_brake", seed=0, duration=45)) == HARSH_BRAKE_0_45


def test_crash_is_deterministic_per_seed():
    a = frames_digest(SimulatedCar("crash", seed=4, duration=42))
    assert a == frames_digest(SimulatedCar("crash", seed=4, duration=42))
    assert a != frames_digest(SimulatedCar("crash", seed=5, duration=42))


def test_cli_lists_the_crash_scenarios(capsys):
    assert main(["scenarios"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(lines) == set(SCENARIOS)
    assert {"crash", "near_miss", "bump"} <= set(lines)
    assert "airbags deploy" in lines["crash"] and "no airbag" in lines["bump"]
    with pytest.raises(SystemExit):
        main(["record", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "city, highway, errand, harsh_brake, crash, near_miss, bump" in help_text


# -- crash ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crash_stops_the_car_within_the_impact(seed):
    car, dec = drive("crash", seed)
    speed = series(dec, "ABS_SPEED", "VehicleSpeed")
    before = [v for t, v in speed if CRASH_AT - 20.0 <= t < CRASH_AT]
    assert len(before) >= 1990 and min(before) > 30.0  # 20 s of steady driving, 10 ms samples
    at_impact = [v for t, v in speed if t < CRASH_AT][-1]
    assert 50.0 <= at_impact <= 60.0
    hits = speed_changes(speed)
    assert hits, "no Part 563 trigger in a crash"
    assert all(CRASH_AT - WINDOW_S <= t <= CRASH_AT + IMPACT_S and dv < 0 for t, dv in hits), hits
    assert min(dv for _, dv in hits) <= -at_impact + 1.0  # all of the speed goes within 150 ms
    assert {v for t, v in speed if t >= CRASH_AT + IMPACT_S} == {0.0}
    assert {s for t, s in series(dec, "ABS_SPEED", "VehicleStandstill") if t >= CRASH_AT + IMPACT_S} == {1}
    # the pulse is far beyond what the accelerometer signal can carry: it saturates
    accel = series(dec, "ABS_ACCEL", "LongitudinalAccel")
    assert min(a for _, a in accel) == pytest.approx(-32.768)
    assert all(a > -10.0 for t, a in accel if t < CRASH_AT or t > CRASH_AT + IMPACT_S + 0.01)


@pytest.mark.parametrize("seed", [0, 1])
def test_crash_sets_the_acu_flags_only_after_the_impact(seed):
    car, dec = drive("crash", seed)
    acu = dec["ACU_STATUS"]
    pre = [sig for t, sig in acu if t < CRASH_AT]
    post = [sig for t, sig in acu if t >= CRASH_AT + AIRBAG_FIRE_S]
    assert len(pre) >= 390 and len(post) >= 140
    for name in ("CrashDetected", "DriverAirbagDeployed"):
        assert {s[name] for s in pre} == {0}, name
        assert {s[name] for s in post} == {1}, name
    assert {s["PassengerAirbagDeployed"] for _, s in acu} == {0}  # nobody in that seat
    assert {s["PassengerSeatOccupied"] for s in post} == {0}
    assert {s["AirbagWarningLamp"] for s in post} == {1}
    assert {s["DriverBeltLatched"] for s in post} == {1}
    # the first ACU frame after the impact already carries the flags (100 ms cycle)
    first = min(t for t, s in acu if t >= CRASH_AT)
    assert first < CRASH_AT + 0.1 + 0.001
    # the ECM cuts fuel on the crash signal: the engine stops, then stands
    engine = dec["ECM_ENGINE"]
    assert {s["EngineRunning"] for t, s in engine if CRASH_AT - 20.0 < t < CRASH_AT} == {1}
    assert {s["EngineRunning"] for t, s in engine if t >= CRASH_AT + ACU_DETECT_S + 0.01} == {0}
    assert {s["EngineSpeed"] for t, s in engine if t >= CRASH_AT + 1.0} == {0.0}


def test_crash_model_states_are_consistent():
    car, _ = drive("crash", 0)
    h = car.history()
    dt = car.dt
    i0 = round(CRASH_AT / dt)
    n = round(IMPACT_S / dt)
    pre = h[i0]
    v0 = pre.speed_kmh / 3.6
    # the ACU: crash signal ~15 ms, airbags ~25 ms after the impact begins, then for good
    t_crash = next(s.t for s in h if s.crash_detected) - CRASH_AT
    t_fire = next(s.t for s in h if s.driver_airbag_deployed) - CRASH_AT
    assert ACU_DETECT_S <= t_crash < ACU_DETECT_S + dt
    assert AIRBAG_FIRE_S <= t_fire < AIRBAG_FIRE_S + dt
    assert all(s.crash_detected and s.driver_airbag_deployed for s in h if s.t >= CRASH_AT + AIRBAG_FIRE_S)
    assert not any(s.passenger_airbag_deployed or s.passenger_present for s in h)
    # a linear pulse to standstill, not the driver braking
    for s in h[i0 + 1 : i0 + n + 1]:
        assert s.accel_long == pytest.approx(-v0 / IMPACT_S, rel=1e-6)
        assert s.brake_pedal == pre.brake_pedal == 0.0 and not s.brake_switch and not s.abs_active
    assert h[i0 + n].speed_kmh == 0.0
    assert h[i0 + 1].accel_pedal == pre.accel_pedal > 0.0  # still on the throttle at the first instant
    # distance integrates speed through the pulse (trapezoidal rule)
    ds = h[i0 + n].distance_m - pre.distance_m
    assert ds == pytest.approx(v0 * IMPACT_S / 2.0, rel=1e-6)
    assert (h[i0 + n].odometer_km - pre.odometer_km) * 1000.0 == pytest.approx(ds, rel=1e-6)
    after = h[i0 + n + 1 :]
    assert {s.distance_m for s in after} == {h[i0 + n].distance_m}  # stands still till the end
    assert all(s.ignition == "ON" and not s.engine_running and s.fuel_rate == 0.0 for s in after)
    assert h[-1].t >= CRASH_AT + 14.0  # a long enough post-crash window


def test_a_deploying_impact_stops_the_drive_whatever_the_phases():
    # the city driver would go on; after a deploying impact the engine is dead and the car stays put
    city = dataclasses.replace(get_scenario("city"), impacts=(Impact(30.0, 0.0, 0.08, deploys=True),))
    car = SimulatedCar(city, seed=2, duration=40.0)
    h = car.history()
    plain = SimulatedCar("city", seed=2, duration=40.0).history()
    assert max(s.speed_kmh for s in plain if 30.1 <= s.t) > 15.0  # without the impact it drives on
    assert all(a.speed_kmh == b.speed_kmh for a, b in zip(h, plain) if a.t <= 30.0)
    assert all(s.speed_kmh == 0.0 and s.crash_detected for s in h if s.t >= 30.0 + 0.08)
    assert not any(s.crash_detected for s in h if s.t < 30.0)


# -- near miss -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_near_miss_brakes_hard_but_stays_below_the_trigger(seed):
    car, dec = drive("near_miss", seed)
    speed = series(dec, "ABS_SPEED", "VehicleSpeed")
    assert largest_change(speed) < 6.5
    assert speed_changes(speed) == []
    assert [v for t, v in speed if t < NEAR_MISS_AT][-1] > 65.0
    braked = min(v for t, v in speed if NEAR_MISS_AT <= t <= NEAR_MISS_AT + 4.0)
    assert 10.0 <= braked <= 20.0
    assert max(v for t, v in speed if t > NEAR_MISS_AT + 10.0) > 55.0  # and drives on
    accel = series(dec, "ABS_ACCEL", "LongitudinalAccel")
    assert min(a for _, a in accel) < -8.0  # it really is a hard brake
    assert min(a for _, a in accel) > -9.5  # the brakes cannot do more
    assert any(s["AbsActive"] for t, s in dec["ABS_BRAKE"] if NEAR_MISS_AT < t < NEAR_MISS_AT + 2.0)
    assert_no_acu_flags(dec)


# -- bump ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bump_pushes_the_standing_car_without_deployment(seed):
    car, dec = drive("bump", seed)
    speed = series(dec, "ABS_SPEED", "VehicleSpeed")
    assert max(v for t, v in speed if t < BUMP_AT - 5.0) > 25.0  # it drove before the light
    assert {v for t, v in speed if BUMP_AT - 2.0 <= t <= BUMP_AT} == {0.0}
    assert {s["BrakeSwitch"] for t, s in dec["ABS_BRAKE"] if BUMP_AT - 2.0 <= t <= BUMP_AT + BUMP_S} == {1}
    hits = speed_changes(speed)
    assert hits, "no Part 563 trigger in a bump"
    assert all(BUMP_AT - WINDOW_S <= t <= BUMP_AT + BUMP_S and dv > 0 for t, dv in hits), hits
    peak = max(v for t, v in speed if t >= BUMP_AT)
    assert 9.0 <= peak <= 10.5
    assert {v for t, v in speed if t >= BUMP_AT + 2.0} == {0.0}  # the brakes stop it again
    accel = series(dec, "ABS_ACCEL", "LongitudinalAccel")
    assert max(a for t, a in accel if BUMP_AT < t <= BUMP_AT + BUMP_S + 0.01) > 20.0
    assert_no_acu_flags(dec)
    assert {s["EngineRunning"] for t, s in dec["ECM_ENGINE"] if t > BUMP_AT} == {1}
