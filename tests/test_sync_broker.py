"""The agent's sync and the collector through a real mosquitto: restarts, pauses, backlog, shared subscription."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tracemalloc
from contextlib import contextmanager

import paho.mqtt.client as paho

from broker import (
    Broker,
    Drive,
    all_acked,
    assert_same_ledgers,
    broker,  # noqa: F401 - fixture
    chains,
    enroll,
    grant,
    mqtt_for,
    require_mosquitto,
    start_collector,
)
from carledger.ledger import Ledger, Store, seal_block
from carledger.ledger.block import ZERO_DIGEST
from carledger.sync import OutboundStream, Syncer, topics
from conftest import REPO, wait_until

OUT = {"speed": OutboundStream("insurer"), "gps": OutboundStream("fleet")}


def syncer(store, cfg, streams=OUT, **kw) -> Syncer:
    s = Syncer(store, "car-1", cfg, lambda: streams, **kw)
    s.start()
    return s


@contextmanager
def driving(broker, tmp_path):
    """A car sealing 2 streams every 20 ms, its sync, and a collector, all stopped at the end."""
    drive = Drive(tmp_path / "car")
    enroll(tmp_path / "collected", "car-1", tmp_path / "car")
    collector = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-1"))
    sync = syncer(tmp_path / "car", mqtt_for(broker))
    try:
        drive.start(0.02)
        yield drive, sync
        drive.stop()
        wait_until(lambda: all_acked(tmp_path / "car"), timeout=60)
    finally:
        broker.resume()
        sync.stop()
        collector.stop()
        drive.close()


def test_a_drive_syncs_completely_and_every_block_is_marked(broker, tmp_path):
    with driving(broker, tmp_path) as (drive, sync):
        wait_until(lambda: drive.blocks >= 60, timeout=30)
    assert_same_ledgers(tmp_path / "car", tmp_path / "collected", "car-1")
    with Store.open_readonly(tmp_path / "car") as s:
        assert all(r.synced and r.acked for r in s.iter_blocks())
    assert sync.stats.records == drive.blocks * 2 * 20 and sync.stats.acked_blocks == drive.blocks * 2
    assert sync.stats.wire_bytes > sync.stats.payload_bytes > 0


def test_broker_killed_and_restarted_twice_mid_drive(broker, tmp_path):
    with driving(broker, tmp_path) as (drive, sync):
        for _ in range(2):
            acked = sync.stats.acked_blocks
            wait_until(lambda: sync.stats.acked_blocks > acked + 20, timeout=30)
            broker.kill()
            time.sleep(0.5)  # the car goes on sealing while the broker is gone
            broker.start()
        wait_until(lambda: sync.stats.acked_blocks > acked + 40, timeout=30)
    assert sync.stats.connects >= 3
    assert_same_ledgers(tmp_path / "car", tmp_path / "collected", "car-1")


def test_network_flapping_sigstop_sigcont(broker, tmp_path):
    with driving(broker, tmp_path) as (drive, sync):
        for pause in (0.5, 3.0, 1.0, 8.0):  # shorter and longer than the keepalive
            acked = sync.stats.acked_blocks
            wait_until(lambda: sync.stats.acked_blocks > acked + 5, timeout=30)
            broker.pause()
            time.sleep(pause)  # a dead network path: the broker neither answers nor closes
            broker.resume()
    assert_same_ledgers(tmp_path / "car", tmp_path / "collected", "car-1")


def offline_hour(store, streams=("speed", "gps"), seconds=3600, per_block=50) -> int:
    """Seal one simulated hour (a block a second per stream) straight into the store, fast; returns its bytes."""
    with Ledger.open(store, "car-1") as ledger:
        grant(store)
        key, batch = ledger.signing_key, []
        heads = {s: (-1, ZERO_DIGEST) for s in streams}
        from carledger.ledger import encode_sample

        for k in range(seconds):
            for s in streams:
                recs = [encode_sample(int((1_700_000_000 + k + i / per_block) * 1e6), f"Vehicle.{s}", float((k + i) % 90))
                        for i in range(per_block)]
                seq, prev = heads[s][0] + 1, heads[s][1]
                blk = seal_block(vid="car-1", stream=s, seq=seq, prev=prev, t0=int((1_700_000_000 + k) * 1e6),
                                 t1=int((1_700_000_000 + k + (per_block - 1) / per_block) * 1e6), policy=ZERO_DIGEST,
                                 records=recs, signing_key=key)
                heads[s] = (seq, blk.digest)
                batch.append(blk)
            if len(batch) >= 1000:
                ledger.store.append(batch)
                batch = []
        ledger.store.append(batch)
        return sum(b for _, b in ledger.store.backlog().values())


def test_an_hour_offline_drains_completely_with_bounded_memory(broker, tmp_path):
    backlog = offline_hour(tmp_path / "car")
    enroll(tmp_path / "collected", "car-1", tmp_path / "car")
    # the collector in its own process (the real command), so what is traced here is the agent's sync alone
    collector = subprocess.Popen(
        [sys.executable, "-m", "carledger", "collect", "run", str(tmp_path / "collected"), "--host", broker.host,
         "--port", str(broker.port), "--client-id", "col-1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        tracemalloc.start()
        sync = syncer(tmp_path / "car", mqtt_for(broker, window=32))
        try:
            wait_until(lambda: all_acked(tmp_path / "car"), timeout=240, interval=0.2)
        finally:
            sync.stop()
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    finally:
        collector.terminate()
        err = collector.communicate(timeout=20)[1].decode()
    assert "accepted 7200" in err, err
    assert sync.stats.acked_blocks == 7200 and sync.stats.records == 7200 * 50
    assert backlog > 10_000_000
    print(f"backlog {backlog} bytes, peak traced {peak} bytes")
    assert peak < backlog / 10, f"peak {peak} bytes traced while draining a {backlog}-byte backlog"
    assert_same_ledgers(tmp_path / "car", tmp_path / "collected", "car-1")


def test_two_collectors_on_a_shared_subscription_store_every_block_once(broker, tmp_path):
    drive = Drive(tmp_path / "car")
    for _ in range(150):
        drive.tick()
    enroll(tmp_path / "collected", "car-1", tmp_path / "car")
    one = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-1"), group="fleet")
    two = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-2"), group="fleet")
    sync = syncer(tmp_path / "car", mqtt_for(broker))
    try:
        wait_until(lambda: all_acked(tmp_path / "car"), timeout=60)
    finally:
        sync.stop()
        one.stop()
        two.stop()
        drive.close()
    a, b = one.collector.stats, two.collector.stats
    assert a.accepted > 0 and b.accepted > 0, (a, b)  # the broker split the stream between them
    assert a.accepted + b.accepted == 300
    assert_same_ledgers(tmp_path / "car", tmp_path / "collected", "car-1")


def test_mqtt_3_1_1_and_a_broker_that_drops_what_its_queue_cannot_hold(tmp_path):
    """mosquitto drops QoS 1 messages beyond a subscriber's max_queued_messages: only the collector's ack counts."""
    require_mosquitto()
    with Broker(tmp_path / "broker", max_queued=5) as small:
        v311 = mqtt_for(small, protocol="3.1.1")
        drive = Drive(tmp_path / "car")
        for _ in range(40):
            drive.tick()
        enroll(tmp_path / "collected", "car-1", tmp_path / "car")
        collector = start_collector(tmp_path / "collected", v311.with_(client_id="col-1"))
        collector.stop()  # its session stays, with a queue of 5
        sync = syncer(tmp_path / "car", v311.with_(ack_timeout=1.0))
        try:
            wait_until(lambda: sync.stats.published >= 8, timeout=30)  # the first windows: more than a queue of 5
            collector = start_collector(tmp_path / "collected", v311.with_(client_id="col-1"))
            wait_until(lambda: all_acked(tmp_path / "car"), timeout=90)
        finally:
            sync.stop()
            collector.stop()
            drive.close()
        assert "Outgoing messages are being dropped" in small.log_text()
        assert sync.stats.resent > 0
        assert_same_ledgers(tmp_path / "car", tmp_path / "collected", "car-1")


def test_only_outbound_streams_leave_and_consent_end_is_respected(broker, tmp_path):
    drive = Drive(tmp_path / "car", streams=("speed", "gps", "vault", "health"))
    for _ in range(20):
        drive.tick()
    enroll(tmp_path / "collected", "car-1", tmp_path / "car")
    collector = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-1"))
    until = 1_700_000_000 + 10.5  # consent for gps ended during its block 10
    streams = {"speed": OutboundStream("insurer"), "gps": OutboundStream("fleet", until=until),
               "vault": OutboundStream("insurer"), "health": OutboundStream("insurer")}  # asked, but the policy refuses
    sync = syncer(tmp_path / "car", mqtt_for(broker), streams)
    try:
        wait_until(lambda: len(chains(tmp_path / "collected" / "vehicles" / "car-1").get("speed", [])) == 20, timeout=30)
        wait_until(lambda: len(chains(tmp_path / "collected" / "vehicles" / "car-1").get("gps", [])) == 10, timeout=30)
        time.sleep(0.5)
    finally:
        sync.stop()
        collector.stop()
        drive.close()
    copy = chains(tmp_path / "collected" / "vehicles" / "car-1")
    assert set(copy) == {"speed", "gps"} and len(copy["gps"]) == 10
    assert set(sync.stats.refused) == {"vault", "health"}


def watch_status(broker, client_id: str) -> tuple[paho.Client, list[dict]]:
    """A client collecting car-1's status messages (retained ones first)."""
    statuses: list[dict] = []
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.on_message = lambda _c, _u, m: statuses.append(json.loads(m.payload))
    client.connect(broker.host, broker.port)
    client.subscribe(topics.status("car-1"), qos=1)
    client.loop_start()
    return client, statuses


def test_status_is_retained_with_backlog_and_a_last_will(broker, tmp_path):
    drive = Drive(tmp_path / "car")
    for _ in range(5):
        drive.tick()
    drive.close()
    watcher, statuses = watch_status(broker, "watcher")
    script = (
        "import sys, time\n"
        "from carledger.sync import Syncer, OutboundStream, MqttConfig\n"
        f"cfg = MqttConfig(host='{broker.host}', port={broker.port}, keepalive=5, status_interval=0.5)\n"
        f"Syncer('{tmp_path / 'car'}', 'car-1', cfg, lambda: {{'speed': OutboundStream('insurer')}}).start()\n"
        "time.sleep(60)\n"
    )
    agent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        wait_until(lambda: any(s["state"] == "online" for s in statuses), timeout=20)
        online = [s for s in statuses if s["state"] == "online"][-1]
        assert online["vehicle"] == "car-1" and online["backlog"]["streams"] == {"speed": 5}
        assert online["backlog"]["blocks"] == 10 and online["last_sync"] is None  # no collector: nothing acked
        agent.kill()  # no goodbye: the broker sends the will
        wait_until(lambda: statuses[-1]["state"] == "offline", timeout=20)
        assert statuses[-1]["reason"] == "connection lost"
    finally:
        agent.kill()
        agent.wait()
        watcher.loop_stop()
        watcher.disconnect()
    late, retained = watch_status(broker, "late")
    try:
        wait_until(lambda: retained, timeout=10)
    finally:
        late.loop_stop()
        late.disconnect()
    assert retained[0]["state"] == "offline"


def test_carledger_sync_drains_the_named_streams_from_the_command_line(broker, tmp_path):
    drive = Drive(tmp_path / "car")
    for _ in range(12):
        drive.tick()
    enroll(tmp_path / "collected", "car-1", tmp_path / "car")
    collector = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-1"))
    try:
        from carledger.cli import main

        code = main(["sync", str(tmp_path / "car"), "--vehicle", "car-1", "--stream", "speed=insurer", "--drain",
                     "--host", broker.host, "--port", str(broker.port)])
    finally:
        collector.stop()
        drive.close()
    assert code == 0
    assert set(chains(tmp_path / "collected" / "vehicles" / "car-1")) == {"speed"}  # gps was not named
    assert_same_ledgers(tmp_path / "car", tmp_path / "collected", "car-1", {"speed"})
