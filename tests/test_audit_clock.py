"""Each stream is sealed by the clock its own records carry, so a kill -9 during a replay with sync keeps the audit.

The data streams of a replayed log run on the log's clock (years in the past
here); the owner's audit records the collector's acks on the wall clock. The
audit must therefore be judged due by the wall clock too, or its disclosures
wait for a clean stop that a SIGKILL never gives.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone

import can

from broker import broker, enroll, mqtt_for, start_collector  # noqa: F401 - fixture
from carledger.dbc import path as dbc_path
from carledger.ledger import Store
from carledger.owner.audit import audit_store
from carledger_sim.car import SimulatedCar
from conftest import wait_until



def _acked(store) -> dict[str, set[int]]:
    """seqs the collector acked, per data stream (health and audit never leave the car)."""
    with Store.open_readonly(store) as s:
        out: dict[str, set[int]] = {}
        for row in s.iter_blocks():
            if row.acked and row.stream not in ("audit", "health"):
                out.setdefault(row.stream, set()).add(row.seq)
        return out


def _disclosed(store) -> dict[str, set[int]]:
    """seqs the sealed audit says were disclosed, per stream."""
    out: dict[str, set[int]] = {}
    for decision in audit_store(str(store)).decisions:
        if decision.kind == "disclosure":
            for first, last in decision.detail["seqs"]:
                out.setdefault(decision.detail["stream"], set()).update(range(first, last + 1))
    return out


def _covered(acked: dict[str, set[int]], disclosed: dict[str, set[int]]) -> bool:
    return all(seqs <= disclosed.get(stream, set()) for stream, seqs in acked.items())


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def test_a_kill_during_a_replay_of_an_old_log_with_sync_keeps_the_disclosures_in_the_audit(broker, tmp_path):
    now = time.time()
    drive = tmp_path / "drive.log"
    with can.Logger(str(drive)) as logger:  # yesterday's drive: its clock is a day behind the wall clock
        for msg in SimulatedCar("city", seed=4, duration=600.0, start_time=now - 86400).frames():
            logger.on_message_received(msg)
    (tmp_path / "policy.toml").write_text(textwrap.dedent(f"""
        version = 1
        [[stream]]
        name = "fleet"
        recipient = "Fleet Ops"
        purpose = "maintenance"
        signals = ["Vehicle.Speed"]
        consent = {{ granted = {_iso(now - 30 * 86400)}, expires = {_iso(now + 30 * 86400)} }}
    """))
    (tmp_path / "agent.toml").write_text(textwrap.dedent(f"""
        [agent]
        store = "ledger"
        vehicle = "car-5"
        policy = "policy.toml"
        [seal]
        max_age = 0.5
        [mqtt]
        host = "127.0.0.1"
        port = {broker.port}
        [[bus]]
        name = "car"
        replay = "{drive}"
        speed = 1
        dbc = ["{dbc_path('carledger_demo.dbc')}"]
    """))
    store = tmp_path / "ledger"
    collector = None
    agent = subprocess.Popen([sys.executable, "-m", "carledger", "run", "-c", str(tmp_path / "agent.toml")],
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "agent.err", "w"))
    try:
        wait_until(lambda: (store / "keys" / "vehicle.pub").exists(), timeout=30)
        # The recipient named outright: when vehicle.pub appears the agent may not have stored the policy yet.
        enroll(tmp_path / "collected", "car-5", store, recipients=("Fleet Ops",))
        collector = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-5"))
        wait_until(lambda: agent.poll() is not None or sum(map(len, _acked(store).values())) >= 6, timeout=60)
        assert agent.poll() is None, (tmp_path / "agent.err").read_text()
        acked_then = _acked(store)
        # The audit seals its disclosures by the wall clock it writes them with: within a seal interval or two.
        wait_until(lambda: _covered(acked_then, _disclosed(store)), timeout=20, interval=0.1)
        assert agent.poll() is None, "the replay must still be running when it is killed"
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
        if collector is not None:
            collector.stop()
    acked, disclosed = _acked(store), _disclosed(store)
    assert _covered(acked_then, disclosed)
    for stream, seqs in acked.items():
        missing = seqs - disclosed.get(stream, set())
        # Only the acks of the last seal interval before the kill may be missing: the newest blocks.
        assert not missing or min(missing) > max(acked_then[stream]), (stream, sorted(missing))
