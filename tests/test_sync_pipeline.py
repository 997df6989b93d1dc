"""End to end: the simulated car through the pipeline, synced while it drives, collected, verified, read back."""

from __future__ import annotations

import json
import threading

import can

from broker import assert_same_ledgers, broker, enroll, mqtt_for, replica, start_collector  # noqa: F401 - fixture
from carledger.cli import main
from carledger.config import replay_config
from carledger.dbc import path as dbc_path
from carledger.ledger import Store
from carledger.pipeline import Pipeline
from carledger.sync import OutboundStream, Syncer
from carledger_sim.car import SimulatedCar
from conftest import wait_until

STREAMS = {"driving": ["Vehicle.Speed", "Vehicle.Chassis.*"], "engine": ["Vehicle.Powertrain.*"]}


def stream_policy(path, streams: dict[str, list[str]], recipient: str, now: float) -> str:
    """A policy file sending each of `streams` to `recipient` under a consent from yesterday to tomorrow."""
    from carledger.owner.state import iso

    lines = ["version = 1"]
    for name, signals in streams.items():
        lines += ["[[stream]]", f'name = "{name}"', f'recipient = "{recipient}"', 'purpose = "test"',
                  f"signals = {json.dumps(signals)}",
                  f"consent = {{ granted = {iso(now - 86400)}, expires = {iso(now + 86400)} }}"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_simulated_drive_is_synced_while_it_runs_and_the_collector_has_it_all(broker, tmp_path, capsys):
    import time

    now = time.time()
    drive = tmp_path / "drive.log"
    with can.Logger(str(drive)) as logger:
        for msg in SimulatedCar("city", seed=2, duration=6.0, start_time=now - 60).frames():
            logger.on_message_received(msg)
    store = tmp_path / "ledger"
    policy = stream_policy(tmp_path / "policy.toml", STREAMS, "demo", now)
    pipeline = Pipeline(replay_config(str(drive), [dbc_path("carledger_demo.dbc")], str(store), policy=policy,
                                      vehicle="car-1"))  # at the log's own pace: a drive, not a batch
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    wait_until(lambda: (store / "keys" / "vehicle.pub").exists(), timeout=20)
    enroll(tmp_path / "collected", "car-1", store, recipients=("demo",))  # the policy may not be stored yet
    collector = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-1"))
    sync = Syncer(store, "car-1", mqtt_for(broker), lambda: {name: OutboundStream("demo") for name in STREAMS})
    sync.start()
    try:
        wait_until(lambda: sync.stats.acked_blocks >= 3, timeout=30)  # blocks leave while the car still drives
        assert runner.is_alive()
        runner.join(60)

        def drained() -> bool:
            with Store.open_readonly(store) as s:
                return not set(s.backlog()) & set(STREAMS)

        wait_until(drained, timeout=30)
    finally:
        sync.stop()
        collector.stop()
    assert_same_ledgers(store, tmp_path / "collected", "car-1", set(STREAMS))
    copy = replica(tmp_path / "collected", store, "driving")  # under the pseudonym the recipient knows the car by
    for name in STREAMS:
        capsys.readouterr()
        assert main(["log", "export", str(store), "--stream", name]) == 0
        local = capsys.readouterr().out.splitlines()
        assert main(["read", str(copy), "--stream", name]) == 0
        remote = capsys.readouterr().out.splitlines()
        assert len(local) > 50
        assert [json.loads(line) for line in remote] == [json.loads(line) for line in local]  # the same columns


def test_the_agent_syncs_what_the_policy_sends_encrypted_and_audits_the_disclosure(broker, tmp_path, capsys):
    """[mqtt] in the agent's configuration: outbound streams leave (encrypted where the policy says), local ones never."""
    import textwrap
    import time
    from datetime import datetime, timezone

    from carledger.config import load_config
    from carledger.ledger.encrypt import create_private_key

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")

    now = time.time()
    key = create_private_key(tmp_path / "insurer.key")
    drive = tmp_path / "drive.log"
    with can.Logger(str(drive)) as logger:
        for msg in SimulatedCar("city", seed=3, duration=20.0, start_time=now - 60).frames():
            logger.on_message_received(msg)
    (tmp_path / "policy.toml").write_text(textwrap.dedent(f"""
        version = 1
        [[stream]]
        name = "fleet"
        recipient = "Fleet Ops"
        purpose = "maintenance"
        signals = ["Vehicle.Speed"]
        encrypt_to = "{bytes(key.public_key).hex()}"
        consent = {{ granted = {iso(now - 86400)}, expires = {iso(now + 86400)} }}
        [[stream]]
        name = "vault"
        local = true
        signals = ["Vehicle.*"]
    """))
    (tmp_path / "agent.toml").write_text(textwrap.dedent(f"""
        [agent]
        store = "ledger"
        vehicle = "car-2"
        policy = "policy.toml"
        [mqtt]
        host = "127.0.0.1"
        port = {broker.port}
        [[bus]]
        name = "car"
        replay = "{drive}"
        speed = 0
        dbc = ["{dbc_path('carledger_demo.dbc')}"]
    """))
    store = tmp_path / "ledger"
    pipeline = Pipeline(load_config(tmp_path / "agent.toml"))
    enroll(tmp_path / "collected", "car-2", store)
    collector = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-2"))
    try:
        runner = threading.Thread(target=pipeline.run, daemon=True)
        runner.start()

        def acked() -> bool:
            with Store.open_readonly(store) as s:
                return "fleet" in s.streams() and not s.backlog().get("fleet")

        wait_until(lambda: not runner.is_alive(), timeout=60)
        # The car parked: the next start (a live bus with nothing on it) drains what is left.
        config = (tmp_path / "agent.toml").read_text()
        live = f'interface = "virtual"\nchannel = "parked-{time.time_ns()}"'
        (tmp_path / "agent.toml").write_text(config.replace(f'replay = "{drive}"\nspeed = 0', live))
        assert live in (tmp_path / "agent.toml").read_text()
        pipeline2 = Pipeline(load_config(tmp_path / "agent.toml"))
        runner = threading.Thread(target=pipeline2.run, daemon=True)
        runner.start()
        wait_until(acked, timeout=30)
        pipeline2.stop()
        runner.join(20)
    finally:
        collector.stop()
    stats = collector.collector.stats  # every message it received was a fleet block: nothing else left the car
    assert stats.received == stats.accepted + stats.duplicates and stats.rejected == 0
    assert_same_ledgers(store, tmp_path / "collected", "car-2", {"fleet"})
    copy = replica(tmp_path / "collected", store, "fleet")
    with Store.open_readonly(copy) as s:
        assert set(s.streams()) == {"fleet"}  # the vault, health and audit never leave the car
    capsys.readouterr()
    assert main(["read", str(copy), "--stream", "fleet"]) != 0  # encrypted: unreadable without the key
    capsys.readouterr()
    assert main(["read", str(copy), "--stream", "fleet", "--key", str(tmp_path / "insurer.key")]) == 0
    speeds = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(speeds) > 20 and {r["name"] for r in speeds if "name" in r} == {"Vehicle.Speed"}
    capsys.readouterr()
    assert main(["audit", str(store), "--json"]) == 0
    disclosures = [d for d in json.loads(capsys.readouterr().out)["decisions"] if d["kind"] == "disclosure"]
    assert disclosures and {d["detail"]["recipient"] for d in disclosures} == {"Fleet Ops"}
