"""Tests of the simulated car (firmware-sim, package carledger_sim)."""

from __future__ import annotations

import collections
import math
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from pathlib import Path

import can
import cantools
import pytest

from carledger_sim.car import SimulatedCar, default_dbc_path
from carledger_sim.cli import main
from carledger_sim.ecus import (
    MalformedFrame,
    SilentEcu,
    UnknownIdFlood,
    crc8_sae_j1850,
    frame_checksum,
)
from carledger_sim.model import GEAR_RATIOS, IDLE_RPM, rpm_for
from carledger_sim.replay import replay
from carledger_sim.route import HOME, Route, haversine_m
from carledger_sim.scenarios import EMERGENCY_BRAKE_AT, SCENARIOS

REPO = Path(__file__).resolve().parents[1]
DBC = REPO / "dbc" / "carledger_demo.dbc"
VSS = REPO / "dbc" / "carledger_demo.vss.toml"


def key(m: can.Message):
    return (m.timestamp, m.arbitration_id, m.is_extended_id, bytes(m.data))


def uniq() -> str:
    return f"sim-test-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def city():
    car = SimulatedCar("city", seed=1, duration=60.0)
    return car, list(car.frames())


@pytest.fixture(scope="module")
def harsh():
    car = SimulatedCar("harsh_brake", seed=1)
    return car, list(car.frames())


# -- the DBC and the VSS mapping ------------------------------------------------------


def test_demo_dbc_loads_strictly_and_covers_decoder_features():
    db = cantools.database.load_file(str(DBC))  # strict by default
    assert Path(default_dbc_path()).read_text() == DBC.read_text()
    assert {n.name for n in db.nodes} == {"ECM", "ABS", "TCM", "BCM", "GPS", "ACU", "EPS"}
    sigs = [s for m in db.messages for s in m.signals]
    assert all(m.cycle_time for m in db.messages)
    assert any(s.byte_order == "big_endian" for s in sigs)
    assert any(s.is_float for s in sigs)
    assert any(s.is_signed for s in sigs)
    assert any(m.is_extended_frame for m in db.messages)
    assert any(m.is_multiplexed() for m in db.messages)
    for name in ("ABS_SPEED", "ABS_ACCEL", "ABS_BRAKE", "ECM_ENGINE"):
        m = db.get_message_by_name(name)
        assert m.cycle_time == 10
        assert {"Counter", "Checksum"} <= {s.name for s in m.signals}
    for name in ("ECM_TEMPS", "ECM_FUEL", "BCM_ODOMETER", "GPS_POSITION"):
        assert db.get_message_by_name(name).cycle_time == 1000
    lat = db.get_message_by_name("GPS_POSITION").get_signal_by_name("Latitude")
    assert lat.length == 32 and lat.is_signed and lat.scale == 1e-7
    assert db.get_message_by_name("EPS_STEERING").get_signal_by_name("SteeringWheelAngle").is_signed


def test_vss_mapping_names_existing_signals_with_vss_units():
    mapping = tomllib.loads(VSS.read_text())["signals"]
    db = cantools.database.load_file(str(DBC))
    units = {}
    for k, path in mapping.items():
        msg, sig = k.split(".")
        s = db.get_message_by_name(msg).get_signal_by_name(sig)
        assert path.startswith("Vehicle.")
        assert sig not in ("Counter", "Checksum")
        units[path] = s.unit
    assert len(set(mapping.values())) == len(mapping)
    expect = {
        "Vehicle.Speed": "km/h",
        "Vehicle.Acceleration.Longitudinal": "m/s^2",
        "Vehicle.Acceleration.Lateral": "m/s^2",
        "Vehicle.Powertrain.CombustionEngine.Speed": "rpm",
        "Vehicle.Chassis.SteeringWheel.Angle": "degrees",
        "Vehicle.Powertrain.CombustionEngine.ECT": "celsius",
        "Vehicle.Powertrain.CombustionEngine.EOT": "celsius",
        "Vehicle.Powertrain.FuelSystem.RelativeLevel": "percent",
        "Vehicle.TraveledDistance": "km",
        "Vehicle.CurrentLocation.Latitude": "degrees",
        "Vehicle.CurrentLocation.Longitude": "degrees",
        "Vehicle.CurrentLocation.Heading": "degrees",
        "Vehicle.Chassis.Brake.PedalPosition": "percent",
        "Vehicle.Chassis.Accelerator.PedalPosition": "percent",
        "Vehicle.Powertrain.Transmission.CurrentGear": None,
        "Vehicle.Cabin.Seat.Row1.DriverSide.IsBelted": None,
        "Vehicle.Cabin.Seat.Row1.DriverSide.Airbag.IsDeployed": None,
        "Vehicle.LowVoltageSystemState": None,
    }
    for path, unit in expect.items():
        assert path in units, path
        assert units[path] == unit, path


def test_crc8_sae_j1850_check_value():
    assert crc8_sae_j1850(b"123456789") == 0x4B


# -- reproducibility -------------------------------------------------------------------


def test_same_seed_same_frames_different_seed_different(city):
    car, frames = city
    again = list(SimulatedCar("city", seed=1, duration=10.0).frames())
    first = [f for f in frames if f.timestamp < 10.0]
    assert [key(m) for m in again] == [key(m) for m in first]
    other = list(SimulatedCar("city", seed=2, duration=10.0).frames())
    assert [key(m) for m in other] != [key(m) for m in first]


# -- physics -------------------------------------------------------------------------


def test_drive_starts_at_home_with_startup_sequence(city):
    car, _ = city
    h = car.history()
    assert (h[0].lat, h[0].lon) == HOME
    assert h[0].speed_kmh == 0 and not h[0].driver_belted and not h[0].engine_running
    assert any(s.ignition == "START" for s in h[:200])
    assert h[500].engine_running and h[500].driver_belted and h[500].ignition == "ON"
    assert not any(s.driver_airbag_deployed or s.passenger_airbag_deployed for s in h)


def test_odometer_integrates_speed(city):
    car, _ = city
    h = car.history()
    integral_km = sum(s.speed_kmh for s in h) / 3.6 * car.dt / 1000.0
    driven = h[-1].odometer_km - h[0].odometer_km
    assert driven > 0.2
    assert driven == pytest.approx(integral_km, rel=0.005)
    assert h[-1].distance_m == pytest.approx(driven * 1000.0, rel=1e-6)


def test_gps_track_follows_odometer(city):
    car, _ = city
    h = car.history()
    gps_m = sum(haversine_m(a.lat, a.lon, b.lat, b.lon) for a, b in zip(h[::10], h[10::10]))
    odo_m = (h[-1].odometer_km - h[0].odometer_km) * 1000.0
    assert gps_m == pytest.approx(odo_m, rel=0.01)
    # heading agrees with the direction of travel
    a, b = h[3000], h[3100]
    if haversine_m(a.lat, a.lon, b.lat, b.lon) > 20:
        from carledger_sim.route import bearing_deg

        d = abs((bearing_deg(a.lat, a.lon, b.lat, b.lon) - a.heading + 180) % 360 - 180)
        assert d < 45


def test_route_polyline_position_by_distance():
    r = Route([(48.0, 11.0), (48.0, 11.01), (48.01, 11.01)])
    seg = haversine_m(48.0, 11.0, 48.0, 11.01)
    p = r.position(seg / 2)
    assert p.lat == pytest.approx(48.0) and p.lon == pytest.approx(11.005)
    assert p.heading == pytest.approx(90.0, abs=0.01)
    assert r.position(seg + 10).heading == pytest.approx(0.0, abs=0.01)
    end = r.position(r.length_m + 100)  # the road goes on straight
    assert haversine_m(48.01, 11.01, end.lat, end.lon) == pytest.approx(100, rel=1e-3)


def test_rpm_consistent_with_gear_and_speed(city):
    car, _ = city
    locked = [s for s in car.history() if s.converter_locked]
    assert len(locked) > 500
    for s in locked:
        assert 1 <= s.gear <= len(GEAR_RATIOS)
        assert s.engine_rpm == pytest.approx(rpm_for(s.speed_kmh, s.gear), rel=1e-9)
    for s in car.history():
        if s.engine_running:
            assert s.engine_rpm >= IDLE_RPM - 1
        if s.speed_kmh > 3:
            assert s.gear >= 1
    gears = {s.gear for s in car.history()}
    assert {1, 2, 3} <= gears


def test_harsh_brake_decelerates_at_about_8(harsh):
    car, frames = harsh
    h = car.history()
    i = int(EMERGENCY_BRAKE_AT / car.dt)
    assert 75 <= h[i - 1].speed_kmh <= 85
    assert min(s.accel_long for s in h[:i]) > -3
    assert min(s.accel_long for s in h) == pytest.approx(-8.0, abs=0.5)
    assert h[-1].speed_kmh == 0.0 and h[-1].brake_switch
    assert any(s.abs_active for s in h)
    # and on the bus
    db = car.db
    accel = [db.decode_message(m.arbitration_id, m.data)["LongitudinalAccel"] for m in frames if m.arbitration_id == 0x130]
    assert min(accel) == pytest.approx(-8.0, abs=0.5)


def test_highway_cruises_and_city_stops():
    hw = SimulatedCar("highway", seed=4, duration=150.0).history()
    assert 105 <= max(s.speed_kmh for s in hw) <= 135
    assert min(s.speed_kmh for s in hw[-3000:]) > 75
    assert max(s.gear for s in hw) == 6
    city = SimulatedCar("city", seed=4, duration=150.0).history()
    assert max(s.speed_kmh for s in city) <= 55
    stops = sum(1 for a, b in zip(city, city[1:]) if a.speed_kmh > 0 and b.speed_kmh == 0)
    assert stops >= 2


def test_temperatures_warm_up_and_fuel_is_used(city):
    car, _ = city
    h = car.history()
    assert h[-1].coolant_temp > h[0].coolant_temp + 5
    assert h[-1].oil_temp > h[0].oil_temp + 2
    assert h[-1].coolant_temp - h[-1].oil_temp > 0  # oil lags coolant
    assert h[-1].fuel_level < h[0].fuel_level
    assert all(a.fuel_level >= b.fuel_level for a, b in zip(h, h[1:]))
    assert any(s.steering_angle > 30 for s in h) or any(s.steering_angle < -30 for s in h)
    for s in h:
        assert s.accel_lat == pytest.approx((s.speed_kmh / 3.6) ** 2 * math.tan(math.radians(s.steering_angle / 15.0)) / 2.7, abs=1e-6)


# -- frames on the bus -------------------------------------------------------------


def test_every_message_at_its_cycle_time(city):
    car, frames = city
    counts = collections.Counter(m.arbitration_id for m in frames)
    for msg in car.db.messages:
        expected = car.duration * 1000.0 / msg.cycle_time
        assert abs(counts[msg.frame_id] - expected) <= max(1, 0.02 * expected), msg.name
    assert [m.timestamp for m in frames] == sorted(m.timestamp for m in frames)
    assert 0 <= frames[0].timestamp and frames[-1].timestamp < car.duration


def test_frames_decode_and_match_the_model(city):
    car, frames = city
    db = car.db
    counters: dict[int, int] = {}
    pages = set()
    for m in frames:
        msg = db.get_message_by_frame_id(m.arbitration_id)
        assert m.dlc == msg.length and m.is_extended_id == msg.is_extended_frame
        d = msg.decode(m.data, decode_choices=False)
        st = car.state_at(m.timestamp - car.start_time)
        if "Counter" in d:
            prev = counters.get(m.arbitration_id)
            if prev is not None:
                assert d["Counter"] == (prev + 1) % 16
            counters[m.arbitration_id] = d["Counter"]
            assert d["Checksum"] == frame_checksum(m.arbitration_id, bytes(m.data), 7)
        name = msg.name
        if name == "ABS_SPEED":
            assert d["VehicleSpeed"] == pytest.approx(st.speed_kmh, abs=0.005 + 1e-9)
        elif name == "ECM_ENGINE":
            assert d["EngineSpeed"] == pytest.approx(st.engine_rpm, abs=0.125 + 1e-9)
            assert d["EngineTorque"] == pytest.approx(st.engine_torque, abs=0.05 + 1e-9)
        elif name == "EPS_STEERING":
            assert d["SteeringWheelAngle"] == pytest.approx(st.steering_angle, abs=0.05 + 1e-9)
        elif name == "ABS_ACCEL":
            assert d["LongitudinalAccel"] == pytest.approx(st.accel_long, abs=0.0005 + 1e-9)
        elif name == "TCM_GEAR":
            assert d["CurrentGear"] == st.gear
        elif name == "ECM_FUEL":
            assert d["FuelRate"] == pytest.approx(st.fuel_rate, rel=1e-6)
        elif name == "BCM_ODOMETER":
            assert d["Odometer"] == pytest.approx(st.odometer_km, abs=0.005 + 1e-9)
        elif name == "GPS_POSITION":
            assert d["Latitude"] == pytest.approx(st.lat, abs=0.5e-7 + 1e-12)
            assert d["Longitude"] == pytest.approx(st.lon, abs=0.5e-7 + 1e-12)
        elif name == "ECM_STATUS":
            pages.add(d["StatusPage"])
    assert pages == {0, 1, 2}
    # payloads of the fast messages change every frame (rolling counter + checksum)
    abs_speed = [bytes(m.data) for m in frames if m.arbitration_id == 0xB4]
    assert all(a != b for a, b in zip(abs_speed, abs_speed[1:]))


def test_faults_silence_malformed_and_flood():
    faults = [SilentEcu("ABS", 1.0, 2.0), MalformedFrame("ABS_SPEED", 1.5, 3), UnknownIdFlood(2.0, 2.1, 0.001)]
    car = SimulatedCar("city", seed=5, duration=3.0, faults=faults)
    frames = list(car.frames())
    abs_ids = {0xB4, 0xD0, 0x130}
    in_window = [m for m in frames if 1.0 <= m.timestamp < 2.0 and m.arbitration_id in abs_ids]
    assert [(m.arbitration_id, m.dlc) for m in in_window] == [(0xB4, 3)]
    assert any(m.arbitration_id in abs_ids for m in frames if m.timestamp >= 2.0)
    known = {m.frame_id for m in car.db.messages}
    unknown = [m for m in frames if m.arbitration_id not in known]
    assert 95 <= len(unknown) <= 105 and all(2.0 <= m.timestamp < 2.1 for m in unknown)
    with pytest.raises(ValueError):
        SimulatedCar("city", faults=[SilentEcu("XYZ")])


# -- buses ----------------------------------------------------------------------------


def test_plugin_bus_yields_the_drive():
    expected = list(SimulatedCar("harsh_brake", seed=1, duration=3.0).frames())
    with can.Bus(interface="carledger-sim", channel="harsh_brake", seed=1, speed=1000.0, duration=3.0) as bus:
        got = []
        while (m := bus.recv(timeout=0.5)) is not None:
            got.append(m)
        assert bus.recv(timeout=0.01) is None  # quiet after the drive
        with pytest.raises(can.CanOperationError):
            bus.send(can.Message(arbitration_id=0x7DF, data=b"\x02\x01\x0d"))
        assert len(bus.sent) == 1
        start = bus.start_time
    assert [(m.arbitration_id, bytes(m.data)) for m in got] == [(m.arbitration_id, bytes(m.data)) for m in expected]
    for g, e in zip(got, expected):
        assert g.timestamp == pytest.approx(start + e.timestamp, abs=2e-6)


def test_plugin_bus_filters_and_notifier():
    filters = [{"can_id": 0xB4, "can_mask": 0x7FF, "extended": False}]
    with can.Bus(interface="carledger-sim", channel="city", seed=2, speed=0, duration=2.0, can_filters=filters) as bus:
        reader = can.BufferedReader()
        notifier = can.Notifier(bus, [reader], timeout=0.05)
        try:
            msgs = []
            while len(msgs) < 200 and (m := reader.get_message(timeout=2.0)) is not None:
                msgs.append(m)
        finally:
            notifier.stop()
    assert len(msgs) == 200 and {m.arbitration_id for m in msgs} == {0xB4}
    with pytest.raises(can.CanInitializationError):
        can.Bus(interface="carledger-sim", channel="moon")


def test_run_onto_virtual_bus():
    channel = uniq()
    car = SimulatedCar("city", seed=3, duration=2.0)
    with can.Bus(interface="virtual", channel=channel) as rx, can.Bus(interface="virtual", channel=channel) as tx:
        n = car.run(tx, realtime_factor=40.0)
        got = []
        while (m := rx.recv(timeout=0.2)) is not None:
            got.append(m)
    expected = list(car.frames())
    assert n == len(expected) == len(got)
    assert [(m.arbitration_id, bytes(m.data)) for m in got] == [(m.arbitration_id, bytes(m.data)) for m in expected]
    # paced: the 2 s drive took about 2/40 s on the receiver's clock
    assert 0.03 <= got[-1].timestamp - got[0].timestamp < 1.0


def test_record_starts_at_the_present_time_by_default(tmp_path):
    """A policy's consents start recently; a drive recorded years ago would record nothing under them."""
    out = tmp_path / "drive.log"
    before = time.time()
    assert main(["record", "--scenario", "city", "--seed", "1", "--duration", "2", "-o", str(out)]) == 0
    after = time.time()
    first = float(out.read_text().splitlines()[0].split()[0].strip("()"))
    assert before <= first <= after


def test_run_stops_on_event():
    stop = threading.Event()
    stop.set()
    with can.Bus(interface="virtual", channel=uniq()) as tx:
        assert SimulatedCar("city", duration=2.0).run(tx, stop_event=stop) == 0


def test_record_writes_candump_log_read_back_identically(tmp_path):
    out = tmp_path / "drive.log"
    assert main(["record", "--scenario", "highway", "--seed", "7", "--duration", "5", "-o", str(out),
                 "--start-time", "2023-11-15T12:00:00Z"]) == 0
    line = out.read_text().splitlines()[0]
    assert line.startswith("(17000") and " can0 " in line
    expected = list(SimulatedCar("highway", seed=7, duration=5.0, start_time=1_700_049_600.0).frames())
    with can.LogReader(str(out)) as reader:
        got = list(reader)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert key(g) == key(e)
        assert g.dlc == e.dlc and g.channel == "can0"


def test_replay_log_onto_virtual_bus(tmp_path):
    out = tmp_path / "drive.log"
    assert main(["record", "--scenario", "city", "--duration", "1", "-o", str(out)]) == 0
    with can.LogReader(str(out)) as reader:
        expected = [(m.arbitration_id, bytes(m.data)) for m in reader]
    channel = uniq()
    with can.Bus(interface="virtual", channel=channel) as rx, can.Bus(interface="virtual", channel=channel) as tx:
        assert replay(out, tx, realtime_factor=0) == len(expected)
        got = []
        while (m := rx.recv(timeout=0.1)) is not None:
            got.append((m.arbitration_id, bytes(m.data)))
        assert got == expected
        assert main(["replay", str(out), "--interface", "virtual", "--channel", channel, "--speed", "20"]) == 0
        again = []
        while (m := rx.recv(timeout=0.1)) is not None:
            again.append(m)
        assert [(m.arbitration_id, bytes(m.data)) for m in again] == expected
        assert again[-1].timestamp - again[0].timestamp > 0.02


def test_a_pause_in_a_replayed_log_takes_at_most_max_pause(tmp_path, capsys):
    """Two drives an hour apart, or one damaged time far ahead, made the replay sleep through all of it (a line
    11.6 days ahead: 11.6 days). A pause takes at most --max-pause, as `carledger run --replay` does."""
    from carledger_sim.pacing import send_paced

    class Waits(threading.Event):  # records each wait and returns at once: no sleeping in the test
        def __init__(self) -> None:
            super().__init__()
            self.waits: list[float] = []

        def wait(self, timeout=None) -> bool:
            self.waits.append(timeout)
            return False

    times = [100.0, 100.5, 3700.5, 3701.0, 1_000_000.0, 1_000_000.5]
    messages = [can.Message(timestamp=t, arbitration_id=0x0B4, data=b"\x01") for t in times]
    channel = uniq()
    pauses: list = []
    with can.Bus(interface="virtual", channel=channel) as rx, can.Bus(interface="virtual", channel=channel) as tx:
        stop = Waits()
        assert send_paced(messages, tx, 1.0, stop, max_pause=2.0, on_pause=lambda s, t: pauses.append((s, t))) == 6
        assert len([m for m in iter(lambda: rx.recv(0), None)]) == 6
    # the waits are from the start (the clock does not move here): 0.5, then 2.5 (a pause of 2), 3, 5, 5.5
    assert stop.waits == pytest.approx([0.5, 2.5, 3.0, 5.0, 5.5], abs=0.05)
    assert pauses == [(3600.0, 3700.5), (996299.0, 1_000_000.0)]
    log = tmp_path / "two-drives.log"
    log.write_text("".join(f"({t:.6f}) can0 0B4#01\n" for t in (100.0, 100.01, 3700.0, 3700.01)))
    with can.Bus(interface="virtual", channel=channel) as rx:
        assert main(["replay", str(log), "--interface", "virtual", "--channel", channel, "--max-pause", "0.05"]) == 0
        assert len([m for m in iter(lambda: rx.recv(0.1), None)]) == 4
    assert f"{log}: a pause of 3600 s before the frame at 3700.000000 takes 0.05 s" in capsys.readouterr().err


def test_cli_run_onto_virtual_bus():
    channel = uniq()
    with can.Bus(interface="virtual", channel=channel) as rx:
        rc = main(["run", "--interface", "virtual", "--channel", channel, "--scenario", "harsh_brake",
                   "--seed", "1", "--duration", "1", "--speed", "0", "--drop-ecu", "GPS"])
        assert rc == 0
        got = []
        while (m := rx.recv(timeout=0.1)) is not None:
            got.append(m)
    expected = list(SimulatedCar("harsh_brake", seed=1, duration=1.0, faults=[SilentEcu("GPS")]).frames())
    assert [(m.arbitration_id, bytes(m.data)) for m in got] == [(m.arbitration_id, bytes(m.data)) for m in expected]
    assert not {0x3F8, 0x18FF5A10} & {m.arbitration_id for m in got}


def test_cli_lists_scenarios_and_reports_errors(capsys, tmp_path):
    assert main(["scenarios"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SCENARIOS)
    with pytest.raises(SystemExit) as exc:
        main(["record", "--scenario", "moon", "-o", str(tmp_path / "x.log")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown scenario" in err and "Traceback" not in err
    # float() takes nan and inf: a start at nan wrote '(nan)' timestamps, which the agent refuses as damaged lines
    for argv, words in ((["--start-time", "nan"], "'nan' is not a time from 1970 to the year 9999 (or 'now')"),
                        (["--start-time", "1e300"], "'1e300' is not a time from 1970"),
                        (["--drives", "2", "--awake", "nan"], "--awake: 'nan' is not a number of seconds")):
        with pytest.raises(SystemExit) as exc:
            main(["record", *argv, "-o", str(tmp_path / "x.log")])
        assert exc.value.code == 2 and words in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "missing.log"), "--interface", "virtual", "--channel", uniq()]) == 1
    assert "no such log file" in capsys.readouterr().err
    assert main(["record", "--duration", "1", "--drop-ecu", "XYZ", "-o", str(tmp_path / "y.log")]) == 1
    assert "unknown ECU" in capsys.readouterr().err
    assert main(["run", "--interface", "no-such-interface", "--duration", "1"]) == 1
    assert "error" in capsys.readouterr().err


def test_console_script_entry_point():
    exe = shutil.which("carledger-sim")
    cmd = [exe, "scenarios"] if exe else [sys.executable, "-m", "carledger_sim.cli", "scenarios"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "harsh_brake" in res.stdout
