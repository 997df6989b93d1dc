"""Location off at every ignition until the owner allows it ("default no collection, each time").

Simulated drives with several ignition cycles run through the whole agent;
every assertion reads what the recipient's chain or the owner's audit holds
(`carledger log export`, `carledger verify`), never the agent's internals.
"""

from __future__ import annotations

import json
import sqlite3
import textwrap
import threading
import time
from pathlib import Path

import can

from carledger.cli import main
from carledger.config import load_config
from carledger.dbc import path as dbc_path
from carledger.owner import OwnerState
from carledger.pipeline import Pipeline
from carledger.policy.classes import LOCATION, default_class
from carledger_sim.cycles import drive_starts, ignition_cycles
from conftest import wait_until
from test_owner_policy import START, consent, events, export, replay_bus, samples, verify, write_agent

DRIVE_S = 20.0
PARKED_S = 60.0  # over the policy's 30 s of silence

POLICY = """
    version = 1
    [ignition]
    each_drive = ["location"]
    silence = "30s"
    SIGNAL
    [[stream]]
    name = "fleet"
    recipient = "Fleet Ops"
    purpose = "tracking"
    signals = ["Vehicle.Speed", "Vehicle.CurrentLocation.*"]
    allow = ["location"]
    CONSENT
""".replace("CONSENT", consent())


def record(path: Path, drives: int, start: float, *, seed: int, awake_s: float = 2.0, after: float = 0.0) -> Path:
    """`drives` drives of the city scenario, parked between them; only the frames from `after` on."""
    with can.Logger(str(path)) as logger:
        for msg in ignition_cycles("city", [DRIVE_S] * drives, seed=seed, start=start, parked_s=PARKED_S, awake_s=awake_s):
            if msg.timestamp >= after:
                logger.on_message_received(msg)
    return path


def run(folder: Path, log: Path, signal: str = "") -> Path:
    config = write_agent(folder, replay_bus(log), POLICY.replace("SIGNAL", signal))
    Pipeline(load_config(config)).run()
    return folder / "ledger"


def location_in(records: list[dict], start: float, end: float) -> bool:
    return any(default_class(r["name"]) == LOCATION for r in samples(records) if start <= r["t"] < end)


def speed_in(records: list[dict], start: float, end: float) -> bool:
    return any(r["name"] == "Vehicle.Speed" for r in samples(records) if start <= r["t"] < end)


def audit(store: Path, kind: str) -> list[dict]:
    return [e for e in events(export(store, "audit")) if e["event"] == kind]


def consent_cmd(store: Path, *args: str) -> int:
    return main(["consent", *args, "--store", str(store)])


def test_location_is_off_after_each_ignition_until_allowed_for_that_drive_or_for_good(tmp_path, capsys):
    folder = tmp_path / "car"
    # Run 1: two drives, the bus asleep between them. Location is off in both; speed flows.
    one = drive_starts([DRIVE_S] * 2, START, PARKED_S)
    store = run(folder, record(tmp_path / "1.log", 2, START, seed=1))
    fleet = export(store, "fleet")
    for t0 in one:
        assert speed_in(fleet, t0, t0 + DRIVE_S)
        assert not location_in(fleet, t0, t0 + DRIVE_S)
    ignitions = audit(store, "ignition")
    assert [(e["detail"]["cycle"], e["detail"]["cause"]) for e in ignitions] == [(1, "first-frame"), (2, "bus-woke")]
    assert all(e["detail"]["classes_off"] == [LOCATION] for e in ignitions)
    assert one[0] <= ignitions[0]["t"] < one[0] + 0.1 and one[1] <= ignitions[1]["t"] < one[1] + 0.1
    started = events(fleet)[0]
    assert started["event"] == "stream-started" and started["detail"]["classes_off"] == [LOCATION]

    # The owner allows location for this drive (cycle 2), with the agent stopped.
    assert consent_cmd(store, "allow", "location", "--this-drive") == 0
    # Run 2: drive 2 goes on 5 s after the last frame (the same cycle), then parked, then drive 3.
    last = OwnerState.load(store).ignition.last_seen
    two = drive_starts([DRIVE_S] * 2, last + 5.0, PARKED_S)
    run(folder, record(tmp_path / "2.log", 2, two[0], seed=3))
    fleet = export(store, "fleet")
    assert location_in(fleet, two[0], two[0] + DRIVE_S), "allowed for this drive: location is recorded"
    assert speed_in(fleet, two[1], two[1] + DRIVE_S)
    assert not location_in(fleet, two[1], two[1] + DRIVE_S), "a new ignition: the allowance is over"
    allowed = audit(store, "class-allowed")
    assert [(e["detail"]["class"], e["detail"]["scope"], e["detail"]["cycle"]) for e in allowed] == [(LOCATION, "this-drive", 2)]
    switches = [e for e in events(fleet) if e["event"] == "classes"]
    on, off = switches[-2:]
    assert (on["detail"]["on"], on["detail"]["allowance"], on["detail"]["cycle"]) == ([LOCATION], {LOCATION: "this-drive"}, 2)
    assert (off["detail"]["off"], off["detail"]["cycle"]) == ([LOCATION], 3)
    assert two[1] <= off["t"] < two[1] + 0.1
    assert not location_in(fleet, off["t"], float("inf"))

    # A standing allowance: location at every drive from now on, until withdrawn.
    assert consent_cmd(store, "allow", "location", "--standing") == 0
    last = OwnerState.load(store).ignition.last_seen
    three = drive_starts([DRIVE_S] * 2, last + PARKED_S, PARKED_S)
    run(folder, record(tmp_path / "3.log", 2, three[0], seed=5))
    fleet = export(store, "fleet")
    for t0 in three:
        assert location_in(fleet, t0, t0 + DRIVE_S)
    assert [e["detail"]["cycle"] for e in audit(store, "ignition")][-2:] == [4, 5]
    assert audit(store, "ignition")[-1]["detail"]["classes_off"] == []
    assert audit(store, "ignition")[-1]["detail"]["standing"] == [LOCATION]

    # Withdrawn: off at once (the agent is stopped: the next start says so in the chain).
    assert consent_cmd(store, "withdraw", "location") == 0
    assert audit(store, "class-withdrawn")[-1]["detail"] == {"class": LOCATION, "scope": "standing", "cycle": 5}
    capsys.readouterr()
    assert main(["consent", "list", "--store", str(store), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert (listed["each_drive"], listed["ignition_cycle"]) == ({LOCATION: "off"}, 5)
    verify(store, capsys)


def test_the_ignition_signal_starts_a_cycle_while_the_bus_stays_awake(tmp_path, capsys):
    """Parked for 60 s with the body module awake (IgnitionState OFF every second): no silence, the signal says it."""
    signal = 'signal = "Vehicle.LowVoltageSystemState"'
    starts = drive_starts([DRIVE_S] * 2, START, PARKED_S)
    folder = tmp_path / "car"
    # Drive 1 alone, then the owner allows location for it.
    config = write_agent(folder, replay_bus(record(tmp_path / "1.log", 1, START, seed=1)), POLICY.replace("SIGNAL", signal))
    Pipeline(load_config(config)).run()
    store = folder / "ledger"
    assert consent_cmd(store, "allow", "location", "--this-drive") == 0
    # Then on from where it stopped: parked (awake) and drive 2.
    log = record(tmp_path / "2.log", 2, START, seed=1, awake_s=PARKED_S, after=START + DRIVE_S)
    config = write_agent(folder, replay_bus(log), POLICY.replace("SIGNAL", signal))
    Pipeline(load_config(config)).run()
    fleet = export(store, "fleet")
    assert not location_in(fleet, starts[1], starts[1] + DRIVE_S)
    assert speed_in(fleet, starts[1], starts[1] + DRIVE_S)
    ignition = audit(store, "ignition")[-1]
    assert ignition["detail"]["cause"] == "ignition-signal"
    assert ignition["detail"]["signal"] == "BCM_STATUS.IgnitionState" and ignition["detail"]["value"] == "ON"
    assert starts[1] <= ignition["t"] < starts[1] + 0.2
    verify(store, capsys)


def test_policy_check_explains_ignition_mistakes(tmp_path, capsys):
    path = tmp_path / "policy.toml"
    path.write_text(textwrap.dedent("""\
        version = 1
        [ignition]
        each_drive = ["technical", "locaton"]
        signal = "Vehicle.LowVoltageSystemStat"
        silence = "0s"
        on = [true]
        wake = 3
    """))
    capsys.readouterr()
    assert main(["policy", "check", str(path)]) == 1
    out = capsys.readouterr().out
    for expected in (
        f"{path}:3: ignition.each_drive[0]: technical signals cannot be switched off per drive",
        f"{path}:3: ignition.each_drive[1]: unknown class 'locaton'",
        f"{path}:4: ignition.signal: unknown signal pattern 'Vehicle.LowVoltageSystemStat'",
        f"{path}:5: ignition.silence: must be longer than 0",
        f"{path}:6: ignition.on[0]: expected a value name",
        f"{path}:7: ignition.wake: unknown field",
    ):
        assert expected in out, out


def test_allowing_location_for_this_drive_reaches_the_running_agent(tmp_path, capsys):
    """The owner's command while the car runs (a live simulated bus): positions from the allowance on, none before."""
    config = write_agent(tmp_path, f"""
        [seal]
        max_age = 0.2
        [[bus]]
        name = "car"
        interface = "carledger-sim"
        channel = "city"
        options = {{ seed = 5, speed = 1, start_time = {time.time()} }}
        dbc = ["{dbc_path('carledger_demo.dbc')}"]
    """, POLICY.replace("SIGNAL", ""))
    store = tmp_path / "ledger"
    pipeline = Pipeline(load_config(config))
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: blocks(store, "fleet") >= 3)
        capsys.readouterr()
        assert consent_cmd(store, "allow", "location", "--this-drive") == 0
        assert "by the running agent" in capsys.readouterr().out
        then = blocks(store, "fleet")
        wait_until(lambda: blocks(store, "fleet") >= then + 5)
    finally:
        pipeline.stop()
        thread.join(15)
    fleet = export(store, "fleet")
    switched = [e for e in events(fleet) if e["event"] == "classes"]
    assert [(e["detail"]["on"], e["detail"]["allowance"]) for e in switched] == [([LOCATION], {LOCATION: "this-drive"})]
    at = switched[0]["t"]
    assert not location_in(fleet, 0, at) and location_in(fleet, at, float("inf"))
    assert audit(store, "class-allowed")[0]["detail"] == {"class": LOCATION, "scope": "this-drive", "cycle": 1}
    verify(store, capsys)


def blocks(store: Path, stream: str) -> int:
    if not (store / "ledger.sqlite").exists():
        return 0
    db = sqlite3.connect(f"file:{store / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM blocks WHERE stream = ?", (stream,)).fetchone()[0]
    finally:
        db.close()


def test_the_simulator_records_drives_as_ignition_cycles(tmp_path, capsys):
    """`carledger-sim record --drives 2`: each drive's frames are the scenario's own, moved; the agent sees two cycles."""
    from carledger_sim.car import SimulatedCar
    from carledger_sim.cli import main as sim

    log = tmp_path / "two.log"
    assert sim(["record", "--drives", "2", "--duration", "10", "--parked", "45", "--awake", "3", "--seed", "4",
                "--start-time", str(START), "-o", str(log)]) == 0
    frames = list(can.LogReader(str(log)))
    second = SimulatedCar("city", seed=5, duration=10.0, start_time=START + 55.0).frames()
    assert [(m.timestamp, m.arbitration_id, bytes(m.data)) for m in frames if m.timestamp >= START + 55.0] == \
        [(m.timestamp, m.arbitration_id, bytes(m.data)) for m in second]
    off = [m for m in frames if START + 10.0 <= m.timestamp < START + 55.0]
    assert [(m.arbitration_id, m.data[0]) for m in off] == [(672, 0)] * 3  # IgnitionState OFF, then the bus sleeps
    store = run(tmp_path / "car", log)
    assert [e["detail"]["cause"] for e in audit(store, "ignition")] == ["first-frame", "bus-woke"]
    capsys.readouterr()
    assert consent_cmd(store, "allow", "personal", "--this-drive") == 1  # the policy does not switch personal off
    assert "'personal' is not switched off at each ignition" in capsys.readouterr().err


def test_an_ignition_amid_busy_traffic_switches_off_at_its_very_frame(tmp_path, capsys):
    """Ignition off for a second and on again while every ECU keeps sending: no position after the new cycle's first frame."""
    from carledger_sim.car import SimulatedCar

    frames = list(SimulatedCar("city", seed=1, duration=30.0, start_time=START).frames())
    for msg in frames:  # the body module says OFF from 10 s to 11 s; the rest of the bus stays busy
        if msg.arbitration_id == 672 and START + 10.0 <= msg.timestamp < START + 11.0:
            msg.data = bytearray([0]) + msg.data[1:]

    def write(path: Path, keep) -> Path:
        with can.Logger(str(path)) as logger:
            for msg in frames:
                if keep(msg.timestamp - START):
                    logger.on_message_received(msg)
        return path

    signal = 'signal = "Vehicle.LowVoltageSystemState"'
    folder = tmp_path / "car"
    config = write_agent(folder, replay_bus(write(tmp_path / "1.log", lambda t: t < 5.0)), POLICY.replace("SIGNAL", signal))
    Pipeline(load_config(config)).run()
    store = folder / "ledger"
    assert consent_cmd(store, "allow", "location", "--this-drive") == 0
    config = write_agent(folder, replay_bus(write(tmp_path / "2.log", lambda t: t >= 5.0)), POLICY.replace("SIGNAL", signal))
    Pipeline(load_config(config)).run()
    fleet = export(store, "fleet")
    ignition = audit(store, "ignition")[-1]
    assert (ignition["detail"]["cycle"], ignition["detail"]["cause"]) == (2, "ignition-signal")
    assert START + 11.0 <= ignition["t"] < START + 11.2
    assert location_in(fleet, START + 5.0, START + 10.0)
    assert not location_in(fleet, ignition["t"], float("inf"))
    verify(store, capsys)
