"""End to end: the simulated car through the pipeline, synced while it drives, collected, verified, read back."""

from __future__ import annotations

import json
import threading

import can

from broker import assert_same_ledgers, broker, enroll, mqtt_for, start_collector  # noqa: F401 - fixture
from carledger.cli import main
from carledger.config import replay_config
from carledger.dbc import path as dbc_path
from carledger.ledger import Store
from carledger.pipeline import Pipeline
from carledger.sync import OutboundStream, Syncer
from carledger_sim.car import SimulatedCar
from conftest import wait_until

STREAMS = {"driving": ["Vehicle.Speed", "Vehicle.Chassis.*"], "engine": ["Vehicle.Powertrain.*"]}


def test_a_simulated_drive_is_synced_while_it_runs_and_the_collector_has_it_all(broker, tmp_path, capsys):
    drive = tmp_path / "drive.log"
    with can.Logger(str(drive)) as logger:
        for msg in SimulatedCar("city", seed=2, duration=6.0, start_time=1_700_000_000.0).frames():
            logger.on_message_received(msg)
    store = tmp_path / "ledger"
    pipeline = Pipeline(replay_config(str(drive), [dbc_path("carledger_demo.dbc")], str(store), STREAMS,
                                      vehicle="car-1"))  # at the log's own pace: a drive, not a batch
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    wait_until(lambda: (store / "keys" / "vehicle.pub").exists(), timeout=20)
    enroll(tmp_path / "collected", "car-1", store)
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
    copy = tmp_path / "collected" / "vehicles" / "car-1"
    for name in STREAMS:
        capsys.readouterr()
        assert main(["log", "export", str(store), "--stream", name]) == 0
        local = capsys.readouterr().out.splitlines()
        assert main(["read", str(copy), "--stream", name]) == 0
        remote = capsys.readouterr().out.splitlines()
        assert len(local) > 50
        assert [{k: v for k, v in json.loads(line).items() if k not in ("stream", "seq")} for line in remote] == \
            [json.loads(line) for line in local]
