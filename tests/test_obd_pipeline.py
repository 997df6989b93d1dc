"""OBD-II through the whole agent: the owner's policy decides what is polled and kept, like any CAN signal.

The OBD modules have their own tests (test_obd_*.py); these check the
wiring: a replayed polling log decoded passively, polling the simulated ECU
on a bus the agent also listens to, an ELM327 adapter, and that what the
agent transmits is only OBD-II requests, only for what a running stream
takes.
"""

from __future__ import annotations

import bisect
import json
import statistics
import textwrap
import threading
import uuid
from pathlib import Path

from fnmatch import fnmatchcase

import can
import pytest

from carledger.obd.pids import PIDS
from carledger.cli import main
from carledger.config import load_config
from carledger.pipeline import Pipeline
from carledger_sim.car import SimulatedCar
from carledger_sim.elm327 import Elm327Emulator
from carledger_sim.obd_responder import DriveClock, ObdResponder
from conftest import shared_path, wait_until
from test_obd_poll import Spy


def agent(tmp_path: Path, buses: str, streams: str) -> Path:
    (tmp_path / "policy.toml").write_text("version = 1\n" + textwrap.dedent(streams))
    config = tmp_path / "agent.toml"
    config.write_text(textwrap.dedent("""
        [agent]
        store = "ledger"
        vehicle = "OBD0TEST000000001"
        policy = "policy.toml"
        [seal]
        max_age = 0.2
    """) + textwrap.dedent(buses))
    return config


def sealed(store: Path, stream: str) -> int:
    """Records of a stream sealed so far (read as any reader would, while the agent writes)."""
    import sqlite3

    if not (store / "ledger.sqlite").exists():
        return 0
    db = sqlite3.connect(f"file:{store / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT coalesce(sum(count), 0) FROM blocks WHERE stream = ?", (stream,)).fetchone()[0]
    finally:
        db.close()


def export(store: Path, stream: str) -> list[dict]:
    out = store.parent / f"{stream}.jsonl"
    assert main(["log", "export", str(store), "--stream", stream, "-o", str(out)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_a_recorded_obd_polling_log_replays_through_the_agent(tmp_path, capsys):
    folder = shared_path("logs", "css_obd2_gnss")
    config = agent(tmp_path, f"""
        [[bus]]
        name = "obd"
        replay = "{folder / 'obd2_gnss_3BA199E2_session164.log'}"
        speed = 0
        obd_listen = true
        dbc = ["{folder / 'canmod-gps.dbc'}"]
    """, """
        [[stream]]
        name = "drive"
        local = true
        signals = ["Vehicle.Speed", "Vehicle.Powertrain.*", "gnss_speed.*"]
    """)
    Pipeline(load_config(config)).run()
    store = tmp_path / "ledger"
    capsys.readouterr()
    assert main(["verify", str(store)]) == 0
    records = export(store, "drive")
    obd = [(r["t"], r["value"]) for r in records if r["name"] == "Vehicle.Speed"]
    assert {r["message"] for r in records if r["name"] == "Vehicle.Speed"} == {"OBD"}  # source OBD.01.0D
    gnss = [(r["t"], r["value"] * 3.6) for r in records if r["name"] == "gnss_speed.Speed"]
    assert len(obd) > 1000 and len(gnss) > 1000
    names = {r["name"] for r in records}
    assert {"Vehicle.Powertrain.CombustionEngine.Speed", "Vehicle.Powertrain.CombustionEngine.ECT"} <= names
    valid = [(r["t"], r["value"]) for r in records if r["name"] == "gnss_speed.SpeedValid"]
    times, valid_times = [t for t, _ in gnss], [t for t, _ in valid]

    def held(series: list, at: list, t: float):  # the value a signal recorded on change had at t
        return series[bisect.bisect_right(at, t) - 1][1]

    pairs = [(v, held(gnss, times, t)) for t, v in obd if t >= max(times[0], valid_times[0]) and held(valid, valid_times, t)]
    assert len(pairs) > 1000
    assert statistics.correlation([a for a, _ in pairs], [b for _, b in pairs]) >= 0.99


@pytest.fixture
def simulated_ecu():
    channel = f"obd-{uuid.uuid4().hex[:8]}"
    car = SimulatedCar("city", seed=3, duration=300)
    car.history()
    clock = DriveClock(car, speed=1.0)
    ecu_bus = can.Bus(interface="virtual", channel=channel)
    responder = ObdResponder(ecu_bus, clock)
    responder.inject_dtc("P0301")
    responder.start()
    spy = Spy(channel)
    yield channel, car, clock, spy
    responder.stop()
    spy.close()
    ecu_bus.shutdown()


def test_polling_the_simulated_ecu_records_what_the_policy_takes_and_sends_only_requests(tmp_path, simulated_ecu, capsys):
    channel, car, clock, spy = simulated_ecu
    config = agent(tmp_path, f"""
        [[bus]]
        name = "port"
        interface = "virtual"
        channel = "{channel}"
        [bus.obd]
        max_rate = 20
        dtc_interval = 1.0
        [bus.obd.pids]
        SPEED = 0.1
    """, """
        [[stream]]
        name = "obd"
        local = true
        signals = ["Vehicle.Speed", "Vehicle.Powertrain.CombustionEngine.Speed", "Vehicle.OBD.*", "Vehicle.VehicleIdentification.VIN"]
    """)
    pipeline = Pipeline(load_config(config))
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: sealed(tmp_path / "ledger", "obd") >= 30, timeout=30)
    finally:
        pipeline.stop()
        thread.join(15)
    store = tmp_path / "ledger"
    capsys.readouterr()
    assert main(["verify", str(store)]) == 0
    records = export(store, "obd")
    names = {r["name"] for r in records}
    assert {"Vehicle.Speed", "Vehicle.Powertrain.CombustionEngine.Speed"} <= names
    assert any(r["value"] == "P0301" or "P0301" in str(r["value"]) for r in records if "DTC" in r["name"])
    requests = [m for m in spy.frames if not (0x7E8 <= m.arbitration_id <= 0x7EF)]
    assert requests
    for m in requests:  # the read-only contract: single-frame requests of read-only services, or flow control
        assert m.arbitration_id == 0x7DF or 0x7E0 <= m.arbitration_id <= 0x7E7
        kind = m.data[0] >> 4
        assert kind in (0, 3)
        if kind == 0:
            assert m.data[1] in (0x01, 0x02, 0x03, 0x07, 0x09, 0x0A)
    polled = {m.data[2] for m in requests if m.data[0] >> 4 == 0 and m.data[1] == 0x01}
    assert 0x0D in polled and 0x0C in polled  # what the stream takes
    patterns = ("Vehicle.Speed", "Vehicle.Powertrain.CombustionEngine.Speed", "Vehicle.OBD.*")
    taken = {pid.pid for pid in PIDS.values() for sig in pid.signals if any(fnmatchcase(sig.sample_name, p) for p in patterns)}
    bitmaps = {0x00, 0x20, 0x40, 0x60, 0x80, 0xA0, 0xC0}
    assert not polled - taken - bitmaps, "polled a PID no stream takes"
    assert 0x05 not in taken and 0x05 not in polled  # coolant: supported by the ECU, taken by no stream


def test_nothing_is_transmitted_without_obd_polling(tmp_path, simulated_ecu):
    channel, _, _, spy = simulated_ecu
    config = agent(tmp_path, f"""
        [[bus]]
        name = "port"
        interface = "virtual"
        channel = "{channel}"
        obd_listen = true
    """, """
        [[stream]]
        name = "obd"
        local = true
        signals = ["Vehicle.*"]
    """)
    pipeline = Pipeline(load_config(config))
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: pipeline.sources[0].opened.is_set() and pipeline.summary.blocks >= 2)
    finally:
        pipeline.stop()
        thread.join(15)
    assert pipeline.diagnostics.pollers == []  # listening only: no poller, nothing that could transmit
    assert spy.frames == []


def test_an_elm327_adapter_feeds_the_same_signals(tmp_path, capsys):
    channel = f"elm-{uuid.uuid4().hex[:8]}"
    car = SimulatedCar("city", seed=4, duration=300)
    car.history()
    clock = DriveClock(car, speed=1.0)
    ecu_bus, elm_bus = can.Bus(interface="virtual", channel=channel), can.Bus(interface="virtual", channel=channel)
    responder = ObdResponder(ecu_bus, clock).start()
    elm = Elm327Emulator(elm_bus).start()
    try:
        config = agent(tmp_path, f"""
            [[elm327]]
            port = "{elm.port}"
            [elm327.pids]
            SPEED = 0.2
            RPM = 0.2
        """, """
            [[stream]]
            name = "obd"
            local = true
            signals = ["Vehicle.Speed", "Vehicle.Powertrain.CombustionEngine.Speed"]
        """)
        pipeline = Pipeline(load_config(config))
        thread = threading.Thread(target=pipeline.run, daemon=True)
        thread.start()
        try:
            wait_until(lambda: sealed(tmp_path / "ledger", "obd") >= 6, timeout=60)
        finally:
            pipeline.stop()
            thread.join(20)
    finally:
        elm.stop()
        responder.stop()
        ecu_bus.shutdown()
        elm_bus.shutdown()
    records = export(tmp_path / "ledger", "obd")
    assert {r["name"] for r in records} == {"Vehicle.Speed", "Vehicle.Powertrain.CombustionEngine.Speed"}
    assert {r["message"] for r in records} == {"OBD"}
