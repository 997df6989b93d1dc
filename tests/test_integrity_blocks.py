"""Issue 11, holes 1, 8 and 10: a block message carries exactly what its signature commits to.

Hole 1: a block whose records label was relabelled, or whose records were
stripped, must never be stored or acked by the collector, nor stop the genuine
block (checked through a real mosquitto). Hole 8: stream names breaking the
rule are refused wherever a name is read. Hole 10: `carledger log export
--format cose` and its verification with pycose alone (.venv-verifier).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from broker import (  # noqa: F401 - `broker` is a fixture
    Drive,
    broker,
    enroll,
    mqtt_for,
    start_collector,
)
from carledger.ledger import Ledger, MalformedBlock, Store, open_block, split_records
from carledger.sync import topics
from carledger.ledger import cbor, cose


def decode_ack(payload: bytes) -> tuple[int, bytes]:
    """The (seq, digest) a collector's signed ack names. Its signature is test_sync_acks' business: here
    only which block the collector acked matters."""
    body = cbor.decode(cose.decode_sign1(bytes(payload)).payload, what="ack payload")
    return body["seq"], body["digest"]
from carledger.verify import verify_store
from conftest import REPO, wait_until

RECORDS_LABEL = b"\x3a\x00\x01\x00\x00"  # -65537, the records label
RELABELLED = b"\x3a\x00\x01\x01\x00"  # one bit flipped: -65793
VERIFIER = Path(os.environ.get("CARLEDGER_VERIFIER_PYTHON", REPO / ".venv-verifier" / "bin" / "python"))
SCRIPT = REPO / "docs" / "third_party_verify.py"


def genuine_blocks(store: Path, n: int, streams: tuple[str, ...] = ("speed",)) -> dict[str, list[bytes]]:
    """n blocks per stream of car-1, as the agent publishes them (with their records), by stream."""
    drive = Drive(store, streams=streams, per_block=10)
    try:
        for _ in range(n):
            drive.tick()
    finally:
        drive.close()
    with Store.open_readonly(store) as s:
        return {name: [s.message(row) for row in s.iter_blocks(name)] for name in streams}


def relabel(message: bytes) -> bytes:
    assert message.count(RECORDS_LABEL) == 1
    return message.replace(RECORDS_LABEL, RELABELLED)


def bare(message: bytes) -> bytes:
    return split_records(message)[0]


class Car:
    """An MQTT client publishing as car-1 (or as anyone who can write to its topics), and hearing its acks."""

    def __init__(self, broker) -> None:
        self.acks: list[tuple[str, int]] = []
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="car-1-tester")
        self.client.on_message = lambda _c, _u, m: self.acks.append((m.topic, decode_ack(m.payload)[0]))
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(f"{topics.PREFIX}/car-1/+/ack", qos=1)
        self.client.loop_start()

    def publish(self, stream: str, messages: list[bytes]) -> None:
        for m in messages:
            self.client.publish(topics.block("car-1", stream), m, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@contextmanager
def collecting(broker, tmp_path: Path, store: Path):
    enroll(tmp_path / "collected", "car-1", store)
    service = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-1"))
    car = Car(broker)
    try:
        yield service.collector, car
    finally:
        car.close()
        service.stop()


def problems(collector) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in collector.registry.problems():
        out[p["kind"]] = out.get(p["kind"], 0) + p["count"]
    return out


def stored_records(collected: Path) -> dict[int, list[bytes] | None]:
    """seq -> the records the collector stored for car-1's stream `speed` (None: stored without them)."""
    with Store.open_readonly(collected / "vehicles" / "car-1") as s:
        return {row.seq: (s.records(row) if row.records is not None else None) for row in s.iter_blocks("speed")}


def expect_genuine_stored(collected: Path, store: Path, messages: list[bytes]) -> None:
    key = store / "keys" / "vehicle.pub"
    want = {open_block(m, _key(store)).seq: open_block(m, _key(store)).records for m in messages}
    assert stored_records(collected) == want
    report = verify_store(collected / "vehicles" / "car-1", key=key)
    assert report.ok, report.problems


def _key(store: Path):
    with Store.open_readonly(store) as s:
        return s.verify_key


# -- hole 1: relabelled and stripped blocks, through a real mosquitto -------------------------------


def test_a_relabelled_block_is_reported_and_the_genuine_one_is_stored(broker, tmp_path):
    store = tmp_path / "car"
    messages = genuine_blocks(store, 4)["speed"]
    with collecting(broker, tmp_path, store) as (collector, car):
        car.publish("speed", [relabel(m) for m in messages])
        wait_until(lambda: collector.stats.rejected == 4, timeout=30)
        assert car.acks == [] and collector.stats.accepted == 0
        car.publish("speed", messages)
        wait_until(lambda: collector.stats.accepted == 4, timeout=30)
        wait_until(lambda: ("carledger/v1/car-1/speed/ack", 3) in car.acks, timeout=30)
        assert collector.stats.duplicates == 0
        assert problems(collector) == {"malformed": 4}
    expect_genuine_stored(tmp_path / "collected", store, messages)


def test_bare_headers_first_are_never_stored_nor_acked_and_do_not_stop_the_genuine_blocks(broker, tmp_path):
    store = tmp_path / "car"
    messages = genuine_blocks(store, 4)["speed"]
    with collecting(broker, tmp_path, store) as (collector, car):
        car.publish("speed", [bare(m) for m in messages])
        wait_until(lambda: collector.stats.held + collector.stats.rejected == 4, timeout=30)
        assert car.acks == [] and collector.stats.accepted == 0
        car.publish("speed", messages)
        wait_until(lambda: collector.stats.accepted == 4, timeout=30)
        wait_until(lambda: ("carledger/v1/car-1/speed/ack", 3) in car.acks, timeout=30)
        assert collector.stats.duplicates == 0
        found = problems(collector)
        assert found == {"stripped": 4}, found  # each stripped copy is reported when the genuine one replaces it
        # and a stripped copy arriving after the genuine block is reported too, never counted as a duplicate
        car.publish("speed", [bare(messages[1])])
        wait_until(lambda: problems(collector) == {"stripped": 5}, timeout=30)
        assert collector.stats.duplicates == 0 and collector.stats.accepted == 4
    expect_genuine_stored(tmp_path / "collected", store, messages)


def test_random_bit_flips_never_get_a_block_stored_with_wrong_or_missing_records(broker, tmp_path):
    store = tmp_path / "car"
    messages = genuine_blocks(store, 6)["speed"]
    rng = random.Random(11)
    flipped = []
    for _ in range(1500):
        m = bytearray(rng.choice(messages))
        bit = rng.randrange(len(m) * 8)
        m[bit // 8] ^= 1 << (bit % 8)
        flipped.append(bytes(m))
    with collecting(broker, tmp_path, store) as (collector, car):
        for n in range(0, 1500, 250):  # the broker's queue for the collector holds 1000: no more in flight
            car.publish("speed", flipped[n:n + 250])
            wait_until(lambda: collector.stats.rejected == n + 250, timeout=60)
        assert collector.stats.accepted == 0 and car.acks == []
        car.publish("speed", messages)
        wait_until(lambda: collector.stats.accepted == 6, timeout=30)
        assert collector.stats.duplicates == 0 and collector.stats.rejected == 1500
    expect_genuine_stored(tmp_path / "collected", store, messages)


def test_open_block_accepts_exactly_the_committed_records(tmp_path):
    store = tmp_path / "car"
    messages = genuine_blocks(store, 2)["speed"]
    key = _key(store)
    assert len(open_block(messages[0], key).records) == 10
    for bad, why in ((relabel(messages[0]), "unknown"), (bare(messages[0]), "without its records")):
        with pytest.raises(MalformedBlock, match=why):
            open_block(bad, key)
    # a record-less block is read only where it is declared: a store whose records were dropped
    blk = open_block(bare(messages[0]), key, allow_bare=True)
    assert blk.records == [] and blk.bare


# -- hole 1 and 10: a third party with pycose alone -----------------------------------------------


def third_party(tmp: Path, key_hex: str, export: Path) -> tuple[int, dict]:
    if not VERIFIER.exists():
        pytest.skip(f"no third-party verifier environment at {VERIFIER} (scripts/setup makes it)")
    out = subprocess.run([str(VERIFIER), "-I", str(SCRIPT), key_hex, str(export)], capture_output=True, text=True)
    assert out.stdout, out.stderr
    return out.returncode, json.loads(out.stdout)


def cbor_sequence(messages: list[bytes], path: Path) -> Path:
    path.write_bytes(b"".join(messages))
    return path


def test_third_party_verify_rejects_relabelled_and_stripped_blocks(tmp_path):
    store = tmp_path / "car"
    messages = genuine_blocks(store, 4)["speed"]
    key_hex = bytes(_key(store)).hex()
    code, result = third_party(tmp_path, key_hex, cbor_sequence(messages, tmp_path / "ok.cose"))
    assert code == 0 and result["ok"] and result["blocks"] == 4 and result["records"] == 40, result
    for name, bad, kind in (("relabelled", relabel(messages[2]), "malformed"), ("stripped", bare(messages[2]), "undeclared-drop")):
        export = cbor_sequence(messages[:2] + [bad] + messages[3:], tmp_path / f"{name}.cose")
        code, result = third_party(tmp_path, key_hex, export)
        assert code == 1 and not result["ok"], (name, result)
        assert (result["problems"][0]["block"], result["problems"][0]["kind"]) == (2, kind), (name, result)


def evicted_store(store: Path) -> list[bytes]:
    """A car that dropped the records of its oldest unacked blocks (disk quota), declared: its stream's messages."""
    from carledger.sync import plan_eviction

    genuine_blocks(store, 6)
    with Ledger.open(store, "car-1") as ledger:
        plan = plan_eviction(ledger.store, ledger.store.stored_bytes() // 2)
        assert plan.unacked and dict(plan.events)["speed"]["seqs"][0][0] == 0
        for stream, detail in plan.events:
            ledger.writer(stream).add_event(1_700_000_100.0, "eviction", detail)
        ledger.seal()
        plan.apply(ledger.store)
        return [ledger.store.message(row) for row in ledger.store.iter_blocks("speed")]


def test_a_declared_eviction_is_stored_record_less_and_an_undeclared_bare_header_is_reported(tmp_path):
    """The legitimate bare header: the car dropped unacked records by a signed eviction event, then syncs."""
    from carledger.collect import Collector
    from carledger.sync.wire import BlockPacker

    store = tmp_path / "car"
    messages = evicted_store(store)
    evicted = [m for m in messages if not split_records(m)[1]]
    assert evicted and len(messages) == 7
    now = [1_700_000_000.0]
    collector = Collector(tmp_path / "collected", gap_wait=30.0, clock=lambda: now[0])
    collector.registry.enroll("car-1", store / "keys" / "vehicle.pub")
    packer = BlockPacker(9)
    try:
        # an undeclared bare header alone: held, never stored nor acked; reported once it has waited gap_wait
        collector.receive(topics.block("car-1", "speed"), packer.pack(messages[0]))
        assert collector.flush() == [] and collector.stats.held == 1
        assert collector.check_gaps() == [] and problems(collector) == {}
        now[0] += 31
        assert collector.check_gaps() == [] and problems(collector) == {"stripped": 1}
        # the rest of the chain, with the block that declares the drop: all stored, the head acked
        for m in messages[1:]:
            collector.receive(topics.block("car-1", "speed"), packer.pack(m))
        acks = collector.flush()
        assert [decode_ack(p)[0] for _, p in acks] == [6] and collector.stats.accepted == 7
    finally:
        collector.close()
    with Store.open_readonly(tmp_path / "collected" / "vehicles" / "car-1") as s:
        assert sum(row.records is None for row in s.iter_blocks("speed")) == len(evicted)
    report = verify_store(tmp_path / "collected" / "vehicles" / "car-1", key=store / "keys" / "vehicle.pub")
    assert report.ok, report.problems
    # the declaring block first (what a sync sends when the evicted run is longer than its window), then the rest
    other = Collector(tmp_path / "other", clock=lambda: now[0])
    other.registry.enroll("car-1", store / "keys" / "vehicle.pub")
    try:
        for batch in ([messages[-1]], messages[:1], messages[1:-1]):
            for m in batch:
                other.receive(topics.block("car-1", "speed"), m)
            other.flush()
        assert other.stats.accepted == 7 and problems(other) == {}
    finally:
        other.close()


def test_log_export_cose_verifies_with_pycose_alone_even_with_declared_drops(tmp_path):
    from carledger.cli import main

    store = tmp_path / "car"
    messages = evicted_store(store)
    export = tmp_path / "speed.cose"
    assert main(["log", "export", str(store), "--stream", "speed", "--format", "cose", "-o", str(export)]) == 0
    assert export.read_bytes() == b"".join(messages)
    code, result = third_party(tmp_path, bytes(_key(store)).hex(), export)
    assert code == 0 and result["ok"] and result["blocks"] == 7, result
    # without the block that declares the drop, the record-less blocks are undeclared
    code, result = third_party(tmp_path, bytes(_key(store)).hex(), cbor_sequence(messages[:-1], tmp_path / "cut.cose"))
    assert code == 1 and {p["kind"] for p in result["problems"]} == {"undeclared-drop"}, result
    assert main(["log", "export", str(store), "--stream", "nope", "--format", "cose", "-o", str(export)]) == 1


# -- hole 8: stream names, on every path that reads one -------------------------------------------

BAD_NAMES = ["a/b", "$share", "fleet\n", "s" * 99]


def signed_block_named(stream: str, signing_key) -> bytes:
    """A block message of car-1 whose signed header names `stream` (what a buggy or hostile signer could make)."""
    from carledger.ledger import ZERO_DIGEST, cbor, cose, encode_sample, merkle, protected_header, with_records

    records = [encode_sample(1_700_000_000_000_000, "Vehicle.Speed", 1.0)]
    header = {"v": 1, "vid": "car-1", "stream": stream, "seq": 0, "prev": ZERO_DIGEST, "t0": 1_700_000_000_000_000,
              "t1": 1_700_000_000_000_000, "policy": ZERO_DIGEST, "count": 1, "root": merkle.root(records)}
    sign1 = cose.sign1(cbor.encode(header), signing_key, protected_header(signing_key.verify_key), {})
    return with_records(sign1, records)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_bad_stream_name_is_refused_on_every_path(name, tmp_path, capsys):
    from carledger.cli import main
    from carledger.collect import Collector
    from carledger.ledger import ZERO_DIGEST, Header, SealedBlock, StoreError, merkle, valid_stream_name
    from carledger.policy import check_policy

    assert not valid_stream_name(name)
    store = tmp_path / "car"
    genuine_blocks(store, 1)
    with Store.open(store) as s:
        signing_key = s.signing_key
    message = signed_block_named(name, signing_key)
    assert open_block(signed_block_named("speed", signing_key), signing_key.verify_key).stream == "speed"
    # the signed header
    with pytest.raises(MalformedBlock, match="'stream'"):
        open_block(message, signing_key.verify_key)
    # topics
    assert topics.parse(f"{topics.PREFIX}/car-1/{name}/block") is None
    assert topics.parse(f"{topics.PREFIX}/car-1/{name}/ack") is None
    # the collector: under the topic of a good stream and under its own name
    collector = Collector(tmp_path / "collected")
    collector.registry.enroll("car-1", store / "keys" / "vehicle.pub")
    try:
        collector.receive(topics.block("car-1", "speed"), message)
        collector.receive(f"{topics.PREFIX}/car-1/{name}/block", message)
        assert collector.flush() == [] and collector.stats.accepted == 0
        assert problems(collector) == {"malformed": 2}
    finally:
        collector.close()
    # the store, appending a header that skipped validation
    header = Header(1, "car-1", name, 0, ZERO_DIGEST, 0, 0, ZERO_DIGEST, 0, merkle.root([]))
    with Store.open(store) as s, pytest.raises(StoreError, match="stream name"):
        s.append([SealedBlock(header, b"", bytes(32), b"", [])])
    # the owner's policy
    policy = tmp_path / "policy.toml"
    policy.write_text(f'version = 1\n[[stream]]\nname = {json.dumps(name)}\nlocal = true\nsignals = ["Vehicle.Speed"]\n')
    assert [p.field for p in check_policy(policy)] == ["stream[0].name"]
    policy.write_text('version = 1\n[[stream]]\nname = "fleet:1.a-b"\nlocal = true\nsignals = ["Vehicle.Speed"]\n')
    assert check_policy(policy) == []
    # the command line
    for argv in (["log", "show", str(store), "--stream", name], ["log", "export", str(store), "--stream", name],
                 ["read", str(store), "--stream", name]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert "is not a stream name" in capsys.readouterr().err
    assert main(["sync", str(store), "--vehicle", "car-1", "--stream", f"{name}=insurer"]) == 2
    assert "is not a stream name" in capsys.readouterr().err
    log = tmp_path / "one.log"
    log.write_text("(1700000000.000000) can0 123#00\n")  # a readable log: an empty one is refused first
    from carledger.dbc import path as dbc_path

    assert main(["run", "--replay", str(log), "--dbc", str(dbc_path("carledger_demo.dbc")), "--store",
                 str(tmp_path / "replayed"), "--stream", f"{name}=Vehicle.Speed"]) == 2
    assert "not a valid stream name" in capsys.readouterr().err
