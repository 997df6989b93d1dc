"""The owner's controls end to end, the way a user runs them.

The simulated car (firmware-sim, the `carledger-sim` python-can interface)
drives under `carledger run` with an owner's policy; the agent syncs through
a real mosquitto (tests/broker.py) to the real collector; the assertions read
the collector's copy with `carledger read`, as the recipient would.

The MQTT 5 tests (item 11) drive the agent's Syncer on a store the test seals
(tests/broker.py's Drive), against a real mosquitto and collector: they need to
stop and restart the car's connection at chosen moments.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest

from broker import Broker, broker, enroll, mqtt_for, require_mosquitto, start_collector  # noqa: F401 - fixture
from carledger.cli import main
from carledger.dbc import path as dbc_path
from carledger.ledger import Ledger, Store
from conftest import wait_until

NOW = time.time()
SPEED = "Vehicle.Speed"


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


CONSENT = f"consent = {{ granted = {iso(NOW - 86400)}, expires = {iso(NOW + 86400)} }}"


@dataclass
class Run:
    """What one `carledger run` of a simulated drive left: the car's store and the collector's copy."""

    store: Path
    copy: Path  # the copy of the streams that carry the vehicle id (COLLECTOR/vehicles/VEHICLE)
    start: float  # the drive's first timestamp
    duration: float

    def copy_of(self, stream: str) -> Path:
        """The collector's copy holding `stream`: under the pseudonym its recipient knows the car by."""
        from broker import replica

        return replica(self.copy.parent.parent, self.store, stream)


def run_drive(folder: Path, broker: Broker, policy: str, recipients: tuple[str, ...], outbound: set[str], *,
              scenario: str = "city", seed: int = 2, duration: float = 60.0, settle: float = 2.0,
              vehicle: str = "car-e2e") -> Run:
    """`carledger run` on the simulated car (as fast as it goes), synced to a collector until every outbound
    stream is acked up to `settle` seconds before the end of the drive; then SIGTERM, as systemd stops it."""
    folder.mkdir(parents=True, exist_ok=True)
    start = float(int(NOW) - 600)
    (folder / "policy.toml").write_text(policy)
    config = folder / "agent.toml"
    config.write_text(textwrap.dedent(f"""
        [agent]
        store = "ledger"
        vehicle = "{vehicle}"
        policy = "policy.toml"
        [mqtt]
        host = "127.0.0.1"
        port = {broker.port}
        [[bus]]
        name = "car"
        interface = "carledger-sim"
        channel = "{scenario}"
        options = {{ seed = {seed}, speed = 0, duration = {duration}, start_time = {start} }}
        dbc = ["{dbc_path('carledger_demo.dbc')}"]
    """))
    store = folder / "ledger"
    Ledger.open(store, vehicle_id=vehicle).close()  # the vehicle key, to enroll before the first drive
    collected = folder / "collected"
    enroll(collected, vehicle, store, recipients)
    collector = start_collector(collected, mqtt_for(broker, client_id=f"collector-{vehicle}"))
    proc = subprocess.Popen([sys.executable, "-m", "carledger", "run", "-c", str(config)],
                            stderr=subprocess.PIPE, text=True)
    end = start + duration - settle
    seen: dict = {}

    def delivered() -> bool:
        assert proc.poll() is None, proc.stderr.read()
        with Store.open_readonly(store) as s:
            last = {}
            for row in s.iter_blocks():
                if row.stream in outbound:
                    last[row.stream] = max(last.get(row.stream, 0), row.t1 / 1e6)
            backlog = set(s.backlog())
        seen.update(last=last, backlog=backlog)
        return set(last) == outbound and min(last.values()) >= end and not backlog & outbound

    try:
        try:
            wait_until(delivered, timeout=240, interval=0.2)
        except AssertionError as e:
            raise AssertionError(f"{e}: drive ends {start + duration}, the car's store: {seen}") from None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            collector.stop()
    assert proc.returncode == 0, err
    return Run(store, collected / "vehicles" / vehicle, start, duration)


def read_copy(copy: Path, stream: str, capsys) -> list[dict]:
    """The stream as its recipient reads it from the collector's copy (every block verified first)."""
    capsys.readouterr()
    assert main(["read", str(copy), "--stream", stream]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def samples(rows: list[dict], name: str) -> list[tuple[float, float]]:
    return [(r["t"], r["value"]) for r in rows if r.get("name") == name]


@pytest.fixture(scope="module")
def owner_drive(tmp_path_factory) -> Run:
    """One city drive under a policy with two rates of the same signal and an aggregates-only stream."""
    require_mosquitto()
    folder = tmp_path_factory.mktemp("owner")
    policy = textwrap.dedent(f"""
        version = 1
        [[stream]]
        name = "insurer"
        recipient = "Insurer"
        purpose = "pay as you drive"
        signals = ["{SPEED}"]
        min_interval = "1s"
        {CONSENT}
        [[stream]]
        name = "fleet"
        recipient = "Fleet Ops"
        purpose = "maintenance"
        signals = ["{SPEED}"]
        min_interval = "200ms"
        {CONSENT}
        [[stream]]
        name = "scores"
        recipient = "Insurer"
        purpose = "risk score"
        raw = false
        signals = []
        {CONSENT}
        [[stream.aggregate]]
        signals = ["{SPEED}", "Vehicle.Powertrain.CombustionEngine.Speed"]
        window = "10s"
        functions = ["min", "max", "mean", "count"]
    """)
    broker = Broker(folder / "broker").start()
    try:
        yield run_drive(folder, broker, policy, ("Insurer", "Fleet Ops"), {"insurer", "fleet", "scores"},
                        duration=40.0, settle=12.0)  # an aggregate window closes with the first sample after it
    finally:
        broker.stop()


# -- item 4: per-recipient rates -------------------------------------------------------------


@pytest.mark.parametrize("stream, interval", [("insurer", 1.0), ("fleet", 0.2)])
def test_each_recipient_gets_the_same_signal_at_its_own_rate(owner_drive, capsys, stream, interval):
    """On the collector's copy: never two values closer than the stream's min_interval, and while the speed
    moves, the next value as soon as the interval has passed (the next 10 ms frame, give or take jitter)."""
    speeds = samples(read_copy(owner_drive.copy_of(stream), stream, capsys), SPEED)
    assert len(speeds) > owner_drive.duration / interval / 3, len(speeds)
    gaps = [b[0] - a[0] for a, b in zip(speeds, speeds[1:])]
    assert min(gaps) >= interval - 1e-6
    on_time = [g for g in gaps if g <= interval + 0.025]
    assert len(on_time) >= 0.8 * len(gaps), sorted(gaps)[-10:]  # the rest: the car stood still (no change)
    assert {r["name"] for r in read_copy(owner_drive.copy_of(stream), stream, capsys) if "name" in r} == {SPEED}


def test_the_two_rates_are_two_samplings_of_one_signal(owner_drive, capsys):
    """Every value the slow recipient got lies between the fast recipient's values around it: one signal
    sampled at two rates, not two different signals."""
    import bisect

    slow = samples(read_copy(owner_drive.copy_of("insurer"), "insurer", capsys), SPEED)
    fast = samples(read_copy(owner_drive.copy_of("fleet"), "fleet", capsys), SPEED)
    assert 4 * len(slow) < len(fast) < 6 * len(slow) + 50
    times = [t for t, _ in fast]
    inside = 0
    for t, v in slow:
        i = bisect.bisect_right(times, t)
        around = [fv for _, fv in fast[max(0, i - 1):i + 1]]
        inside += min(around) - 0.011 <= v <= max(around) + 0.011
    assert inside >= 0.9 * len(slow), (inside, len(slow))


# -- item 5: on-board aggregates --------------------------------------------------------------


def test_an_aggregates_only_stream_delivers_windows_and_not_one_raw_sample(owner_drive, capsys):
    rows = read_copy(owner_drive.copy_of("scores"), "scores", capsys)
    names = {r["name"] for r in rows if "name" in r}
    signals = (SPEED, "Vehicle.Powertrain.CombustionEngine.Speed")
    assert names == {f"{s}.{f}" for s in signals for f in ("min", "max", "mean", "count")}
    assert not names & set(signals)  # not one raw sample
    windows: dict[float, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if "name" in r:
            windows[r["t"]][r["name"]] = r["value"]
    ends = sorted(windows)
    assert len(ends) >= owner_drive.duration / 10 - 2
    assert all(b - a == pytest.approx(10.0) for a, b in zip(ends, ends[1:]))  # tumbling 10 s windows
    for w in windows.values():
        assert w[f"{SPEED}.min"] <= w[f"{SPEED}.mean"] <= w[f"{SPEED}.max"]
        assert w[f"{SPEED}.count"] >= 1
    # The fast raw stream of another recipient lies inside each window's [min, max]: the aggregates
    # summarise the same signal the car saw.
    fast = samples(read_copy(owner_drive.copy_of("fleet"), "fleet", capsys), SPEED)
    checked = 0
    for t, v in fast:
        end = (t // 10.0 + 1) * 10.0
        w = windows.get(end)
        if w is not None:
            assert w[f"{SPEED}.min"] - 1e-9 <= v <= w[f"{SPEED}.max"] + 1e-9, (t, v, w)
            checked += 1
    assert checked > len(fast) // 2
    with Store.open_readonly(owner_drive.copy_of("insurer")) as s:
        assert {"insurer", "scores"} == set(s.streams())  # what the Insurer knows under its pseudonym
    with Store.open_readonly(owner_drive.copy_of("fleet")) as s:
        assert {"fleet"} == set(s.streams())  # and Fleet Ops under its own


# -- item 11: MQTT 5 as it is meant to be used ------------------------------------------------


def _drive_and_sync(tmp_path, broker: Broker, blocks: int = 30, **mqtt):
    """A car store with `blocks` ticks sealed, its collector enrolled and running, and a Syncer for it."""
    from broker import Drive
    from carledger.sync import OutboundStream, Syncer

    store = tmp_path / "ledger"
    car = Drive(store)
    for _ in range(blocks):
        car.tick()
    enroll(tmp_path / "collected", "car-1", store)
    collector = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-1"), group=None)
    sync = Syncer(store, "car-1", mqtt_for(broker, **mqtt),
                  lambda: {"speed": OutboundStream("insurer"), "gps": OutboundStream("fleet")})
    return store, car, collector, sync


def test_the_agent_keeps_to_the_brokers_receive_maximum(tmp_path):
    """mosquitto with max_inflight_messages 2 announces Receive Maximum 2 in its CONNACK; the agent never has
    more than 2 QoS 1 publishes waiting for a PUBACK, and still delivers everything."""
    from broker import all_acked, assert_same_ledgers

    from mqtt_wire import WireProxy

    require_mosquitto()
    broker = Broker(tmp_path / "broker", extra="max_inflight_messages 2\n").start()
    wire = WireProxy(broker.host, broker.port)  # the car talks to the broker through it: what it counts is the wire
    store, car, collector, sync = _drive_and_sync(tmp_path, broker, port=wire.port)
    sync.start()
    try:
        wait_until(lambda: all_acked(store), timeout=60)
    finally:
        sync.stop()
        collector.stop()
        car.close()
        wire.close()
        broker.stop()
    assert_same_ledgers(store, tmp_path / "collected", "car-1")
    with Store.open_readonly(store) as s:
        blocks = sum(1 for _ in s.iter_blocks())
    assert wire.published >= blocks > 2  # every block crossed the wire, many more than the window...
    assert wire.in_flight_max == 2  # ...and never more than the broker's Receive Maximum awaited a PUBACK at once


def test_an_online_status_expires_and_the_offline_one_stays(broker, tmp_path):
    """The retained status carries a Message Expiry of 3 status intervals while online (its backlog and policy
    outcome are stale after that); the offline status of a clean stop has none."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    store, car, collector, sync = _drive_and_sync(tmp_path, broker, blocks=2)
    seen: list[tuple[dict, int | None]] = []
    reader = paho.Client(CallbackAPIVersion.VERSION2, client_id="reader", protocol=MQTTProtocolVersion.MQTTv5)
    reader.on_message = lambda _c, _u, msg: seen.append(
        (json.loads(msg.payload), getattr(msg.properties, "MessageExpiryInterval", None)))
    reader.connect(broker.host, broker.port)
    reader.subscribe("carledger/v1/car-1/status", qos=1)
    reader.loop_start()
    sync.start()
    try:
        wait_until(lambda: any(s["state"] == "online" for s, _ in seen), timeout=20)
        sync.stop()
        wait_until(lambda: seen[-1][0]["state"] == "offline", timeout=20)
    finally:
        sync.stop()
        reader.loop_stop()
        reader.disconnect()
        collector.stop()
        car.close()
    assert {e for s, e in seen if s["state"] == "online"} == {3}  # status_interval 1 s in the tests
    assert seen[-1][1] is None and seen[-1][0]["reason"] == "stopped"


def test_a_car_away_longer_than_its_session_resumes_from_the_retained_ack(broker, tmp_path):
    """The car sends blocks and leaves before the collector acks them; its session (1 s) expires while it
    is away, so the broker keeps nothing for it. On its return the retained ack alone tells it where the
    collector is: every block is acked, and the collector's copy is the car's."""
    from broker import all_acked, assert_same_ledgers, copies

    store, car, collector, sync = _drive_and_sync(tmp_path, broker, blocks=20, session_expiry=1,
                                                  ack_timeout=60.0)  # sends each block once while away
    collector.stop()  # its persistent session queues what the car sends while it is down
    sync.start()
    try:
        # Without acks each stream's window stays at its first 4 blocks: the broker has those (PUBACK).
        wait_until(lambda: _synced(store) >= 8, timeout=30)
    finally:
        sync.stop()
    with Store.open_readonly(store) as s:
        assert not any(row.acked for row in s.iter_blocks())  # it left before any ack
        sent = {(row.stream, row.seq) for row in s.iter_blocks() if row.synced}
    # The collector comes up, takes what its session queued, acks it (retained) and goes away again.
    collector = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-1"), group=None)
    def collected() -> bool:
        return {(name, seq) for name, blocks in copies(tmp_path / "collected", store).items() for seq, _ in blocks} == sent

    wait_until(lambda: collected() and collector.collector.stats.acks >= 2, timeout=30)
    collector.stop()
    left = time.monotonic()
    from carledger.sync import OutboundStream, Syncer

    def acked() -> set:
        with Store.open_readonly(store) as s:
            return {(row.stream, row.seq) for row in s.iter_blocks() if row.acked}

    wait_until(lambda: time.monotonic() > left + 2.5, timeout=10)  # away longer than its session expiry (1 s)
    back = Syncer(store, "car-1", mqtt_for(broker, session_expiry=1),
                  lambda: {"speed": OutboundStream("insurer"), "gps": OutboundStream("fleet")})
    back.start()
    try:
        # No collector is connected: only the retained acks can tell the car what it holds.
        wait_until(lambda: acked() == sent, timeout=30)
        collector = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-1"), group=None)
        try:
            wait_until(lambda: all_acked(store), timeout=30)
        finally:
            collector.stop()
    finally:
        back.stop()
        car.close()
    assert_same_ledgers(store, tmp_path / "collected", "car-1")
    assert collector.collector.stats.rejected == 0


def _synced(store: Path) -> int:
    with Store.open_readonly(store) as s:
        return sum(1 for row in s.iter_blocks() if row.synced)


# -- item 9: crash capture on the airbag alone --------------------------------------------------


def test_a_parked_car_hit_from_the_side_is_captured_and_the_capture_reaches_its_recipient(tmp_path, capsys):
    """side_impact: airbags deploy, the speed never changes. `carledger run` captures it and sends the capture
    to the recipient [edr] names; the collector's copy opens with the owner's key."""
    from carledger.ledger.encrypt import create_private_key

    require_mosquitto()
    owner = create_private_key(tmp_path / "owner.key")
    policy = textwrap.dedent(f"""
        version = 1
        [edr]
        keys = {{ owner = "{bytes(owner.public_key).hex()}" }}
        recipient = "Investigator"
        purpose = "crash reconstruction"
        {CONSENT}
    """)
    broker = Broker(tmp_path / "broker").start()
    try:
        run = run_drive(tmp_path / "car", broker, policy, ("Investigator",), {"crash"}, scenario="side_impact",
                        seed=1, duration=35.0, settle=8.0)
    finally:
        broker.stop()
    capsys.readouterr()
    assert main(["edr", "export", str(run.copy), "--key", str(tmp_path / "owner.key")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["capture"]["deployment"] is True and doc["capture"]["trigger"]["kind"] == "airbag"
    speeds = {s["value"] for s in doc["samples"] if s["name"] == SPEED}
    assert speeds == {0}
