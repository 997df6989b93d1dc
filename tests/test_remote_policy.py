"""Owner-signed remote policy updates, end to end: `carledger remote` against a running agent through a real mosquitto."""

from __future__ import annotations

import hashlib
import json
import textwrap
import threading
import time
from pathlib import Path

from broker import broker  # noqa: F401 - fixture
from carledger.cli import main
from carledger.config import load_config
from carledger.dbc import path as dbc_path
from carledger.pipeline import Pipeline
from conftest import wait_until

POLICY = """\
version = {version}
[[stream]]
name = "vault"
local = true
signals = [{signals}]
"""


def running_agent(tmp_path: Path, broker, vehicle: str = "car-1") -> tuple[Pipeline, threading.Thread]:
    """The agent as the daemon runs it: a policy, [mqtt], a live (silent) virtual bus; started in a thread."""
    (tmp_path / "policy.toml").write_text(POLICY.format(version=1, signals='"Vehicle.Speed"'))
    (tmp_path / "agent.toml").write_text(textwrap.dedent(f"""
        [agent]
        store = "ledger"
        vehicle = "{vehicle}"
        policy = "policy.toml"
        [mqtt]
        host = "127.0.0.1"
        port = {broker.port}
        [[bus]]
        name = "car"
        interface = "virtual"
        channel = "remote-{time.time_ns()}"
        dbc = ["{dbc_path('carledger_demo.dbc')}"]
    """))
    pipeline = Pipeline(load_config(tmp_path / "agent.toml"))
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    wait_until(lambda: pipeline.sync.syncer is not None and pipeline.sync.syncer.stats.connected, timeout=20)
    return pipeline, runner


def test_send_policy_wait_reports_an_applied_update(broker, tmp_path, capsys):
    """Issue 11 hole 12: the outcome's `digest` (the update's SHA-256) is what --wait matches, applied or not."""
    assert main(["keygen", "owner", "-o", str(tmp_path / "owner.key")]) == 0
    pipeline, runner = running_agent(tmp_path, broker)
    store = tmp_path / "ledger"
    try:
        assert main(["remote", "enroll-owner", str(tmp_path / "owner.key"), "--store", str(store)]) == 0
        update = tmp_path / "v2.toml"
        update.write_text(POLICY.format(version=2, signals='"Vehicle.Speed", "Vehicle.Chassis.*"'))
        signed = tmp_path / "v2.cose"
        assert main(["remote", "sign-policy", str(update), "--key", str(tmp_path / "owner.key"), "-o", str(signed)]) == 0
        capsys.readouterr()
        broker_args = ["--host", broker.host, "--port", str(broker.port)]
        vehicle_key = ["--vehicle-key", str(store / "keys" / "vehicle.pub")]  # only what the car signed counts
        assert main(["remote", "send-policy", str(signed), "--vehicle", "car-1", "--wait", "30", *broker_args, *vehicle_key]) == 0
        outcome = json.loads(capsys.readouterr().out)
        assert outcome["ok"] is True and outcome["version"] == 2 and outcome["changed"] is True
        assert outcome["digest"] == hashlib.sha256(signed.read_bytes()).hexdigest()  # the update's
        assert (store / "owner" / "policy.toml").read_text() == update.read_text()
        assert outcome["policy_digest"] != outcome["digest"] and len(outcome["policy_digest"]) == 64  # the policy's
        # Another policy under the same version is refused, and --wait sees that too.
        again = tmp_path / "v2-again.cose"
        update.write_text(POLICY.format(version=2, signals='"Vehicle.*"'))
        assert main(["remote", "sign-policy", str(update), "--key", str(tmp_path / "owner.key"), "-o", str(again)]) == 0
        capsys.readouterr()
        assert main(["remote", "send-policy", str(again), "--vehicle", "car-1", "--wait", "30", *broker_args, *vehicle_key]) == 1
        outcome = json.loads(capsys.readouterr().out)
        assert outcome["ok"] is False and outcome["digest"] == hashlib.sha256(again.read_bytes()).hexdigest()
    finally:
        pipeline.stop()
        runner.join(30)
    assert not runner.is_alive()
