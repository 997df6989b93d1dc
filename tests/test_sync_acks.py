"""Acks through a real mosquitto: only the enrolled collector's signed ack marks blocks (issue 11, holes 4, 7, 11)."""

from __future__ import annotations

import json
import logging

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from broker import (
    Broker,
    Drive,
    all_acked,
    assert_same_ledgers,
    broker,  # noqa: F401 - fixture
    enroll,
    grant,
    mqtt_for,
    require_mosquitto,
    start_collector,
)
from carledger.ledger import SigningKey, Store
from carledger.sync import Ack, Syncer, collector_key, sign_ack, topics
from conftest import wait_until

FAR_FUTURE = 4_000_000_000 * 1e6  # µs: every block is older


def publish(broker, messages: list[tuple[str, bytes]]) -> None:
    """Publish as an outsider would: anyone the broker lets write to the car's ack topic."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="forger")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def marks(store) -> tuple[int, int]:
    """(blocks marked acked, blocks retention could drop as acked) over the store."""
    with Store.open_readonly(store) as s:
        acked = sum(1 for r in s.iter_blocks() if r.acked)
        droppable = sum(len(s.expired(name, FAR_FUTURE, acked_only=True)) for name in s.streams())
    return acked, droppable


def sealed_car(tmp_path, ticks: int = 10) -> tuple:
    """A car with `ticks` blocks in each of speed and gps, its policy sending both, paired with a collector dir."""
    store = tmp_path / "car"
    drive = Drive(store)
    for _ in range(ticks):
        drive.tick()
    grant(store)
    enroll(tmp_path / "collected", "car-1", store)
    return store, drive


def ignored(sync: Syncer) -> int:
    return sum(getattr(sync.stats, "acks_ignored", {}).values())


def test_forged_acks_mark_nothing_and_a_real_collectors_ack_does(broker, tmp_path):
    store, drive = sealed_car(tmp_path)
    with Store.open_readonly(store) as s:
        digest9 = s.digest_at("speed", 9)
        gps9 = s.digest_at("gps", 9)
    genuine = collector_key(tmp_path / "collected")
    sync = Syncer(store, "car-1", mqtt_for(broker))
    sync.start()
    try:
        wait_until(lambda: sync.stats.published >= 8, timeout=20)
        publish(broker, [
            # the old unsigned JSON ack, well formed, with the right digest (the broker sees every block)
            (topics.ack("car-1", "speed"), json.dumps({"seq": 9, "digest": digest9.hex()}).encode()),
            # signed, but not by the enrolled collector
            (topics.ack("car-1", "speed"), sign_ack(SigningKey.generate(), Ack("car-1", "speed", 9, digest9))),
            # the collector's genuine ack of another stream, replayed on this one
            (topics.ack("car-1", "speed"), sign_ack(genuine, Ack("car-1", "gps", 9, gps9))),
            # and of another vehicle's stream
            (topics.ack("car-1", "gps"), sign_ack(genuine, Ack("car-2", "gps", 9, gps9))),
        ])
        wait_until(lambda: ignored(sync) >= 4 or marks(store)[0] > 0, timeout=20)
        assert marks(store) == (0, 0)  # nothing acked, nothing retention may drop
        # (a reconnect would deliver the retained ones again: at least these, and no other cause)
        assert set(sync.stats.acks_ignored) == {"malformed", "bad-signature", "wrong-subject"}
        assert sync.stats.acks_ignored["wrong-subject"] >= 2
        assert sync.stats.acked_blocks == 0
        collector = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-1"))
        try:
            wait_until(lambda: all_acked(store), timeout=60)
        finally:
            collector.stop()
    finally:
        sync.stop()
        drive.close()
    assert marks(store) == (20, 20)
    assert_same_ledgers(store, tmp_path / "collected", "car-1")


def test_a_huge_seq_is_rejected_and_counted_not_a_traceback(broker, tmp_path, caplog):
    store, drive = sealed_car(tmp_path, ticks=3)
    genuine = collector_key(tmp_path / "collected")
    with Store.open_readonly(store) as s:
        digest = s.digest_at("speed", 2)
    caplog.set_level(logging.DEBUG, logger="carledger")
    sync = Syncer(store, "car-1", mqtt_for(broker))
    sync.start()
    try:
        wait_until(lambda: sync.stats.connects >= 1, timeout=20)
        huge = 1 << 70
        publish(broker, [
            (topics.ack("car-1", "speed"), json.dumps({"seq": huge, "digest": digest.hex()}).encode()),
            (topics.ack("car-1", "speed"), sign_ack(genuine, Ack("car-1", "speed", huge, digest))),
            (topics.ack("car-1", "gps"), sign_ack(genuine, Ack("car-1", "gps", -(1 << 70), digest))),
        ])
        wait_until(lambda: ignored(sync) >= 3 or any(r.exc_info for r in caplog.records), timeout=20)
        assert [r.getMessage() for r in caplog.records if r.exc_info] == []
        assert set(sync.stats.acks_ignored) == {"malformed", "out-of-range"} and sync.stats.acks_ignored["out-of-range"] >= 2
        assert sync.running and marks(store) == (0, 0)
        collector = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-1"))
        try:
            wait_until(lambda: all_acked(store), timeout=60)  # the sync survived, whole
        finally:
            collector.stop()
    finally:
        sync.stop()
        drive.close()
    # each cause is logged once, however often it comes
    logged = [r for r in caplog.records if "ack ignored" in r.getMessage()]
    assert len(logged) == 2


def test_a_small_broker_queue_drains_with_few_resends(tmp_path):
    """mosquitto's max_queued_messages 10 with the default window and ack timeout (64, 30 s): the window adapts."""
    require_mosquitto()
    with Broker(tmp_path / "broker", max_queued=10) as small:
        store, drive = sealed_car(tmp_path, ticks=200)
        drive.close()
        collector = start_collector(tmp_path / "collected", mqtt_for(small, client_id="col-1"))
        sync = Syncer(store, "car-1", mqtt_for(small, window=64, ack_timeout=30.0))
        sync.start()
        try:
            wait_until(lambda: all_acked(store), timeout=240)
        finally:
            sync.stop()
            collector.stop()
    assert_same_ledgers(store, tmp_path / "collected", "car-1")
    assert sync.stats.acked_blocks == 400
    assert sync.stats.resent < 400 / 3, (sync.stats.resent, sync.stats.timeouts)  # issue 11: 883 of ~920


def test_hostile_status_messages_leave_the_owners_wait_with_one_line(broker, tmp_path, capsys):
    """`remote send-policy --wait` reads the car's status from the network: anything there is parsed defensively."""
    from carledger.cli import main

    (tmp_path / "update.cose").write_bytes(b"\xd2\x84@\xa0@@")  # its bytes do not matter here: no car answers
    vehicle_key = bytes(SigningKey.generate().verify_key).hex()
    for payload in (b"[1]", b'{"policy": [1, 2]}', b"[" * 100_000):
        publish(broker, [(topics.status("car-1"), payload)])
        capsys.readouterr()
        code = main(["remote", "send-policy", str(tmp_path / "update.cose"), "--vehicle", "car-1", "--wait", "0.5",
                     "--vehicle-key", vehicle_key, "--host", broker.host, "--port", str(broker.port)])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("carledger remote: no outcome from car-1 within 0.5 s"), (payload[:20], err)
