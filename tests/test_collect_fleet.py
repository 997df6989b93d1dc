"""Workers that scale out: two brokers, three worker processes, one PostgreSQL; and the faults they survive.

Each fault test ends the same way: every block of every car stored exactly
once, every chain intact, every block acked.
"""

from __future__ import annotations

import random
import threading

import paho.mqtt.client as paho
import pytest

from broker import require_mosquitto
from carledger.collect.fleet import broker_for
from carledger.ledger import Store
from carledger.sync import topics
from carledger.sync.wire import BlockPacker
from conftest import wait_until
from fleet import Fleet
from pg import pg_cluster, pg_dsn  # noqa: F401  (fixtures)


def test_broker_assignment_is_a_stable_rendezvous_hash_of_the_vehicle_id():
    brokers = ["mq-a:1883", "mq-b:1883", "mq-c:1883"]
    cars = [f"car-{i}" for i in range(3000)]
    assigned = {c: broker_for(c, brokers) for c in cars}
    assert {c: broker_for(c, list(reversed(brokers))) for c in cars} == assigned  # the set matters, not its order
    counts = {b: sum(1 for a in assigned.values() if a == b) for b in brokers}
    assert all(800 < n < 1200 for n in counts.values()), counts
    grown = {c: broker_for(c, [*brokers, "mq-d:1883"]) for c in cars}
    moved = [c for c in cars if grown[c] != assigned[c]]
    assert all(grown[c] == "mq-d:1883" for c in moved) and 550 < len(moved) < 950  # about 1/4 move, only to the new one


@pytest.fixture
def fleet(tmp_path, pg_dsn):
    require_mosquitto()
    f = Fleet(tmp_path, pg_dsn)
    yield f
    f.close()


def test_three_workers_on_two_brokers_store_every_car_once(fleet):
    assert len({fleet.broker_of(v).port for v in fleet.cars}) == 2  # cars on both brokers
    fleet.drive(30)
    fleet.sync()
    fleet.settle()
    fleet.assert_exactly_once()


def test_a_worker_sigkilled_mid_batch(fleet):
    fleet.sync()
    fleet.drive(20)
    fleet.kill_worker(0)  # blocks are flowing: it dies holding some, received and unacked
    fleet.drive(40)
    fleet.settle()
    fleet.start_worker(0)
    fleet.drive(10)
    fleet.settle()
    fleet.assert_exactly_once()


def test_a_broker_restarted_during_a_drive(fleet):
    fleet.sync()
    fleet.drive(20)
    broker = fleet.brokers[0]
    broker.kill()
    fleet.drive(20)  # the cars go on sealing while it is gone
    broker.start()
    fleet.drive(20)
    fleet.settle()
    fleet.assert_exactly_once()


def test_postgresql_restarted_and_the_workers_reconnect(fleet, pg_cluster):
    fleet.sync()
    fleet.drive(20)
    pg_cluster.restart()
    fleet.drive(20)
    fleet.settle()
    pg_cluster.stop()
    fleet.drive(20)  # sealed, sent and received while the database is down: nothing acked
    wait_until(lambda: any("store is unavailable" in (fleet.tmp / f"worker-{i}.log").read_text() for i in range(3)))
    pg_cluster.start()
    fleet.settle()
    fleet.assert_exactly_once()


def _messages(store, stream: str) -> list[bytes]:
    with Store.open_readonly(store) as s:
        return [s.message(r) for r in s.iter_blocks() if r.stream == stream]


def _publisher(broker) -> paho.Client:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def test_duplicated_and_reordered_blocks(fleet):
    fleet.drive(30)
    packer = BlockPacker(9)
    for vid in fleet.cars:
        client = _publisher(fleet.broker_of(vid))
        for stream in ("speed", "gps"):
            messages = _messages(fleet.tmp / vid, stream)
            shuffled = messages * 2
            random.Random(vid + stream).shuffle(shuffled)
            for m in shuffled:
                client.publish(topics.block(vid, stream), packer.pack(m), qos=1).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()
    fleet.sync()  # the cars send them all again, in order
    fleet.drive(10)
    fleet.settle()
    fleet.assert_exactly_once()


def test_two_workers_receive_the_same_block_at_once(fleet):
    """Every block published to both brokers at the same moment: two workers (one per broker) race on each."""
    fleet.drive(25)
    clients = [_publisher(b) for b in fleet.brokers]
    go = threading.Barrier(2)

    def publish(client) -> None:
        packer = BlockPacker(9)  # one each: a zstd compressor is not to be shared between threads
        go.wait()
        for vid in fleet.cars:
            for stream in ("speed", "gps"):
                for m in _messages(fleet.tmp / vid, stream):
                    client.publish(topics.block(vid, stream), packer.pack(m), qos=1)

    threads = [threading.Thread(target=publish, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fleet.sync()
    fleet.settle()
    for c in clients:
        c.loop_stop()
        c.disconnect()
    fleet.assert_exactly_once()
