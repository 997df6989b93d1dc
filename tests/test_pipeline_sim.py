"""Integration: the agent and the simulated car on python-can buses, several buses at once, failing buses."""

from __future__ import annotations

import json
import textwrap
import threading
import time
import uuid
from pathlib import Path

import can
import pytest

from carledger.cli import main
from carledger.config import load_config
from carledger.dbc import path as dbc_path
from carledger.pipeline import Pipeline
from carledger_sim.car import SimulatedCar
from conftest import wait_until

START = 1_700_000_000.0


def write_config(tmp_path: Path, buses: str, streams: str) -> Path:
    """An agent configuration, and a policy of local streams (every class allowed) from `streams`."""
    local = '[[stream]]\nlocal = true\nallow = ["location", "personal"]'
    (tmp_path / "policy.toml").write_text("version = 1\n" + textwrap.dedent(streams).replace("[[stream]]", local))
    path = tmp_path / "agent.toml"
    path.write_text(textwrap.dedent(f"""
        [agent]
        store = "ledger"
        vehicle = "test-car"
        policy = "policy.toml"
        {textwrap.dedent(buses)}
    """))
    return path


def export(store: Path, stream: str, capsys) -> list[dict]:
    capsys.readouterr()
    assert main(["log", "export", str(store), "--stream", stream, "--events"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def run_in_thread(pipeline: Pipeline) -> threading.Thread:
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()
    return thread


def test_agent_reads_the_simulated_car_in_process_and_values_track_the_model(tmp_path, capsys):
    duration = 20.0
    config = write_config(tmp_path, f"""
        [[bus]]
        name = "sim"
        interface = "carledger-sim"
        channel = "harsh_brake"
        options = {{ seed = 3, speed = 0, duration = {duration}, start_time = {START} }}
        dbc = ["{dbc_path('carledger_demo.dbc')}"]
        """, """
        [[stream]]
        name = "driving"
        signals = ["Vehicle.Speed", "Vehicle.Acceleration.Longitudinal"]
        """)
    pipeline = Pipeline(load_config(config))
    thread = run_in_thread(pipeline)
    wait_until(lambda: (pipeline._last_t or 0) >= START + duration - 0.02)
    pipeline.stop()
    thread.join(10)
    store = tmp_path / "ledger"
    capsys.readouterr()
    assert main(["verify", str(store)]) == 0

    rows = [r for r in export(store, "driving", capsys) if "name" in r]
    assert {r["name"] for r in rows} == {"Vehicle.Speed", "Vehicle.Acceleration.Longitudinal"}
    assert {r["message"] for r in rows} == {"ABS_SPEED", "ABS_ACCEL"}
    car = SimulatedCar("harsh_brake", seed=3, duration=duration, start_time=START)
    speeds = [r for r in rows if r["name"] == "Vehicle.Speed"]
    assert len(speeds) > 100
    for row in speeds:
        expected = car.state_at(row["t"] - START).speed_kmh
        assert abs(row["value"] - expected) <= 0.02, (row, expected)


def test_two_buses_virtual_and_replay_at_once(tmp_path, capsys):
    channel = f"carledger-test-{uuid.uuid4().hex[:8]}"
    drive = tmp_path / "drive.log"
    car = SimulatedCar("city", seed=5, duration=15.0, start_time=START)
    with can.Logger(str(drive)) as logger:
        for msg in car.frames():
            logger.on_message_received(msg)
    config = write_config(tmp_path, f"""
        [[bus]]
        name = "live"
        interface = "virtual"
        channel = "{channel}"
        dbc = ["{dbc_path('carledger_demo.dbc')}"]

        [[bus]]
        name = "recorded"
        replay = "{drive}"
        speed = 0
        dbc = ["{dbc_path('carledger_demo.dbc')}"]
        """, """
        [[stream]]
        name = "speed"
        signals = ["Vehicle.Speed"]

        [[stream]]
        name = "location"
        signals = ["Vehicle.CurrentLocation.*"]
        """)
    pipeline = Pipeline(load_config(config))
    live, recorded = pipeline.sources
    thread = run_in_thread(pipeline)
    wait_until(live.opened.is_set)
    sender = can.Bus(interface="virtual", channel=channel)
    highway = SimulatedCar("highway", seed=6, duration=10.0, start_time=START + 100)
    highway.run(sender, realtime_factor=0)
    sender.shutdown()
    wanted = pipeline.buses[0].frame_filter
    expected = sum(1 for m in highway.frames() if wanted.matches(m.arbitration_id | (m.is_extended_id << 31)))
    wait_until(lambda: pipeline.buses[0].stats.frames == expected and recorded.frames_read > 0)
    wait_until(lambda: pipeline.buses[1].stats.frames == recorded.frames_read)
    pipeline.stop()
    thread.join(10)

    capsys.readouterr()
    assert main(["verify", str(tmp_path / "ledger")]) == 0
    speeds = [r for r in export(tmp_path / "ledger", "speed", capsys) if "name" in r]
    assert any(r["t"] < START + 20 for r in speeds), "the replayed city drive is missing"
    assert any(r["t"] > START + 100 for r in speeds), "the live highway drive is missing"
    assert max(r["value"] for r in speeds if r["t"] > START + 100) > 30  # accelerating onto the highway
    assert len([r for r in export(tmp_path / "ledger", "location", capsys) if "name" in r]) >= 4


class FlakyBus(can.BusABC):
    """A bus whose first incarnation dies after a few frames; the next one works. Counts openings."""

    opened = 0

    def __init__(self, channel=None, **kwargs):
        super().__init__(channel=channel, **kwargs)
        FlakyBus.opened += 1
        self.incarnation = FlakyBus.opened
        self.sent = 0

    def _recv_internal(self, timeout):
        if self.incarnation == 1 and self.sent >= 50:
            raise can.CanOperationError("adapter unplugged")
        if self.sent >= 100:
            time.sleep(min(timeout or 0, 0.05))
            return None, False
        self.sent += 1
        t = START + self.incarnation * 10 + self.sent * 0.01
        data = int(self.incarnation * 1000 + self.sent).to_bytes(2, "little") + bytes(6)
        return can.Message(timestamp=t, arbitration_id=0x0B4, data=data, is_extended_id=False), False

    def send(self, msg, timeout=None):
        raise can.CanOperationError("read-only")


class DeadBus(can.BusABC):
    """An adapter that is not there: it never opens."""

    def __init__(self, channel=None, **kwargs):
        raise can.CanInitializationError(f"no adapter on {channel}")

    def send(self, msg, timeout=None):  # pragma: no cover - never opened
        raise can.CanOperationError("read-only")


def test_a_failing_bus_is_reopened_and_a_dead_bus_stops_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(can.interfaces.BACKENDS, "flaky", (__name__, "FlakyBus"))
    monkeypatch.setitem(can.interfaces.BACKENDS, "dead-adapter", (__name__, "DeadBus"))
    monkeypatch.setattr(can.util, "VALID_INTERFACES", can.util.VALID_INTERFACES | {"flaky", "dead-adapter"})
    FlakyBus.opened = 0
    channel = f"carledger-test-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path, f"""
        [[bus]]
        name = "flaky"
        interface = "flaky"
        channel = "x"
        dbc = ["{dbc_path('carledger_demo.dbc')}"]

        [[bus]]
        name = "dead"
        interface = "dead-adapter"
        channel = "can9"
        dbc = ["{dbc_path('carledger_demo.dbc')}"]

        [[bus]]
        name = "good"
        interface = "virtual"
        channel = "{channel}"
        dbc = ["{dbc_path('carledger_demo.dbc')}"]
        """, """
        [[stream]]
        name = "raw"
        signals = ["ABS_SPEED.*"]
        """)
    pipeline = Pipeline(load_config(config))
    flaky, dead, good = pipeline.sources
    thread = run_in_thread(pipeline)
    wait_until(lambda: flaky.reopens >= 1 and pipeline.buses[0].stats.frames >= 150)
    wait_until(good.opened.is_set)
    sender = can.Bus(interface="virtual", channel=channel)
    city = SimulatedCar("city", seed=1, duration=2.0, start_time=START + 50)
    city.run(sender, realtime_factor=0)
    sender.shutdown()
    expected = sum(1 for m in city.frames() if m.arbitration_id == 0x0B4)
    wait_until(lambda: pipeline.buses[2].stats.frames == expected)
    pipeline.stop()
    thread.join(10)

    assert FlakyBus.opened == 2
    events = [r for r in export(tmp_path / "ledger", "health", capsys) if "event" in r]
    kinds = [(e["event"], e["detail"].get("bus")) for e in events]
    assert ("bus-error", "flaky") in kinds and ("bus-reopened", "flaky") in kinds
    assert ("bus-error", "dead") in kinds
    assert "no adapter on can9" in next(e["detail"]["error"] for e in events if e["detail"].get("bus") == "dead")
    samples = [r for r in export(tmp_path / "ledger", "raw", capsys) if "name" in r]
    times = [r["t"] for r in samples]
    assert any(START + 10 < t < START + 11 for t in times) and any(START + 20 < t < START + 21 for t in times)
    assert any(t > START + 50 for t in times)


def test_a_stream_exports_as_candump_that_decodes_to_the_recorded_values(tmp_path, capsys):
    import cantools

    from carledger.sources.candump import read_candump_file

    drive = tmp_path / "drive.log"
    with can.Logger(str(drive)) as logger:
        for msg in SimulatedCar("city", seed=8, duration=30.0, start_time=START).frames():
            logger.on_message_received(msg)
    store = tmp_path / "ledger"
    dbc = dbc_path("carledger_demo.dbc")
    assert main(["run", "--replay", str(drive), "--dbc", dbc, "--store", str(store), "--fast",
                 "--stream", "drive=ABS_SPEED.VehicleSpeed,ECM_ENGINE.*,GPS_POSITION.*"]) == 0
    recorded = [r for r in export(store, "drive", capsys) if "name" in r]
    out = tmp_path / "drive-export.log"
    assert main(["log", "export", str(store), "--stream", "drive", "--format", "candump", "--dbc", dbc, "-o", str(out)]) == 0
    frames = list(read_candump_file(str(out)))
    assert len(frames) >= len({(r["t"], r["message"]) for r in recorded}) > 100
    assert sum(1 for _ in can.CanutilsLogReader(str(out))) == len(frames)  # candump format python-can reads too
    db = cantools.database.load_file(dbc)
    decoded = {}
    for t, key, data in frames:
        message = db.get_message_by_frame_id(key & 0x1FFFFFFF)
        for signal, value in message.decode(data, decode_choices=False).items():
            decoded[(round(t, 6), f"{message.name}.{signal}")] = value
    for r in recorded:
        assert decoded[(round(r["t"], 6), f"{r['message']}.{r['signal']}")] == pytest.approx(r["value"], abs=1e-6)
