"""The collector's checks, without a broker: chains, duplicates, gaps, forks, replays and junk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import zstandard

from carledger.cli import main
from carledger.collect import REPLAY, UNKNOWN_VEHICLE, Collector, Registry, collector_state
from carledger.ledger import Ledger, Store, cose, seal_block
from carledger.ledger.keys import SigningKey
from carledger.sync import topics
from carledger.sync.ack import open_ack
from carledger.sync.wire import BlockPacker
from carledger.collect.verify import verify_collected
from pg import pg_cluster, pg_dsn  # noqa: F401  (fixtures)

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def make_blocks(store: Path, vid: str, stream: str, n: int, start: int = 0) -> list[bytes]:
    """Seal n blocks of `stream` and return their messages (what the agent publishes), in order."""
    with Ledger.open(store, vid) as ledger:
        w = ledger.writer(stream)
        out = []
        for b in range(start, start + n):
            for i in range(10):
                w.add_sample(T0 + b + i / 10, "Vehicle.Speed", float(i))
            out.append(ledger.seal()[0].message())
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def car(request, tmp_path):
    """(messages of 6 blocks of stream `speed` of car-1, its store, a collector with car-1 enrolled, its clock).

    Once per backend: the checks must not know which store they write.
    """
    store = tmp_path / "car-1"
    messages = make_blocks(store, "car-1", "speed", 6)
    clock = Clock()
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgresql" else None
    collector = Collector(tmp_path / "collected", gap_wait=30.0, clock=clock, store=dsn)
    collector.registry.enroll("car-1", store / "keys" / "vehicle.pub")
    yield messages, store, collector, clock
    collector.close()


def send(collector: Collector, messages, vid: str = "car-1", stream: str = "speed", pack: bool = True):
    packer = BlockPacker(9 if pack else 0)
    for m in messages:
        collector.receive(topics.block(vid, stream), packer.pack(m))
    return collector.flush()


def ack_of(collector: Collector, ack: tuple[str, bytes]) -> tuple[int, bytes]:
    """(seq, digest) of an ack the collector published, checked against its own key as a car would."""
    topic = topics.parse(ack[0])
    opened = open_ack(ack[1], collector.ack_key.verify_key, topic.vehicle, topic.stream)
    return opened.seq, opened.digest


def kinds(collector: Collector) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in collector.registry.problems():
        out[p["kind"]] = out.get(p["kind"], 0) + p["count"]
    return out


def test_a_chain_is_stored_acked_and_verifies_as_a_store(car, tmp_path):
    messages, store, collector, _ = car
    acks = send(collector, messages[:4]) + send(collector, messages[4:], pack=False)
    assert [t for t, _ in acks] == [topics.ack("car-1", "speed")] * 2
    seq, digest = ack_of(collector, acks[-1])
    with Store.open_readonly(store) as agent:
        assert (seq, digest) == agent.stream_head("speed")
    [check] = verify_collected(collector.registry, "car-1")
    assert (check.ok, check.stream, check.blocks, check.records) == (True, "speed", 6, 60), check.problems
    assert collector.stats.accepted == 6 and kinds(collector) == {}
    # the ack is a receipt on either backend: a cosignature of the car's own log of 6 blocks (issue 14)
    from carledger.ledger.checkpoints import origin_for
    from carledger.sync.ack import check_receipt
    from carledger.transparency.checkpoint import Checkpoint

    topic = topics.parse(acks[-1][0])
    line = open_ack(acks[-1][1], collector.ack_key.verify_key, topic.vehicle, topic.stream).cosignature
    with Store.open_readonly(store) as agent:
        text = Checkpoint(origin_for(agent.stream_key("speed"), "speed"), 6,
                          agent.tree_root("speed", 6, derived=True)).text()
    assert line is not None and check_receipt(collector.ack_key.verify_key, text, line) > 0


def test_duplicates_are_idempotent_and_acked_again(car):
    messages, _, collector, _ = car
    send(collector, messages)
    acks = send(collector, [messages[2], messages[5], messages[5]])
    assert collector.stats.accepted == 6 and collector.stats.duplicates == 3
    assert ack_of(collector, acks[0])[0] == 5  # said again: the vehicle may have missed it
    assert kinds(collector) == {}
    state = collector_state(collector.registry)
    assert state["vehicles"]["car-1"]["streams"]["speed"]["duplicates"] == 3


def test_a_gap_waits_then_is_reported_and_closes_when_the_block_comes(car):
    messages, _, collector, clock = car
    acks = send(collector, [messages[0], messages[1], messages[3], messages[4]])
    assert ack_of(collector, acks[0])[0] == 1 and collector.stats.held == 2
    assert collector.check_gaps() == [] and kinds(collector) == {}  # not yet: it may be on its way
    clock.t += 31
    collector.check_gaps()
    gap = [p for p in collector.registry.problems() if p["kind"] == "gap"]
    assert len(gap) == 1 and gap[0]["seq"] == 2 and "missing seq 2" in gap[0]["detail"]
    state = collector_state(collector.registry)["vehicles"]["car-1"]["streams"]["speed"]
    assert state["waiting"] == {"blocks": 2, "first_seq": 3, "last_seq": 4} and state["head_seq"] == 1
    acks = send(collector, [messages[2]])
    assert ack_of(collector, acks[0])[0] == 4  # the held blocks linked behind it
    send(collector, [messages[5]])
    state = collector_state(collector.registry)["vehicles"]["car-1"]["streams"]["speed"]
    assert state["head_seq"] == 5 and "waiting" not in state


def test_a_fleet_larger_than_the_open_replicas_is_stored_with_a_bounded_number_of_open_files(tmp_path):
    """SQLite backend: each car's replica is its own database; only the most recently used stay open."""
    collector = Collector(tmp_path / "collected", gap_wait=30.0, clock=Clock())
    collector.registry.open_replicas = 2
    vehicles_dir = (tmp_path / "collected" / "vehicles").resolve()

    def open_replica_files() -> int:
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                count += os.readlink(f"/proc/self/fd/{fd}").startswith(str(vehicles_dir))
            except FileNotFoundError:  # the listing's own descriptor, closed since
                pass
        return count

    cars = {f"car-{n}": make_blocks(tmp_path / f"car-{n}", f"car-{n}", "speed", 3) for n in range(5)}
    try:
        for vid in cars:
            collector.registry.enroll(vid, tmp_path / vid / "keys" / "vehicle.pub")
        most = 0
        for seq in range(3):  # round robin: every car's replica is evicted before its next block
            for vid, messages in cars.items():
                [ack] = send(collector, [messages[seq]], vid=vid)
                assert ack_of(collector, ack)[0] == seq
                most = max(most, open_replica_files())
        assert 0 < most <= 2 * 3  # two replicas open at a time: database, WAL and shared memory each
        assert collector.stats.accepted == 15 and kinds(collector) == {}
        for vid in cars:
            [check] = verify_collected(collector.registry, vid)
            assert (check.ok, check.blocks, check.records) == (True, 3, 30), check.problems
    finally:
        collector.close()
    assert open_replica_files() == 0


def test_forged_signatures_forks_and_replays_are_rejected_kept_and_reported(car, tmp_path):
    messages, store, collector, _ = car
    send(collector, messages[:3])
    # a forged block: right format, someone else's key, claiming to be car-1's seq 3
    forger = SigningKey.generate()
    header = open_header(messages[3])
    forged = seal_block(vid="car-1", stream="speed", seq=3, prev=header.prev, t0=header.t0, t1=header.t1,
                        policy=header.policy, records=[], signing_key=forger).message()
    # equivocation: car-1's own key signs a different block 2 (its store restored from an old backup, say)
    with Store.open(store) as s:
        key = s.signing_key
    h2 = open_header(messages[2])
    fork = seal_block(vid="car-1", stream="speed", seq=2, prev=h2.prev, t0=h2.t0, t1=h2.t1 + 1, policy=h2.policy,
                      records=[], signing_key=key).message()
    # replays: car-2's valid block under car-1's topic; car-1's block of stream speed published as gps
    car2 = make_blocks(tmp_path / "car-2", "car-2", "speed", 1)
    collector.registry.enroll("car-2", tmp_path / "car-2" / "keys" / "vehicle.pub")
    send(collector, [forged, fork])
    send(collector, car2, vid="car-1")
    send(collector, [messages[3]], stream="gps")
    found = kinds(collector)
    assert found == {"bad-signature": 1, "fork": 1, REPLAY: 2}, found
    assert collector.registry.evidence("car-1", "speed", 2) == [fork]
    # nothing of it was stored; the real chain goes on
    send(collector, messages[3:])
    [check] = verify_collected(collector.registry, "car-1")
    assert check.ok and check.blocks == 6


def test_junk_truncated_and_unknown_vehicles_never_stop_the_collector(car):
    messages, _, collector, _ = car
    rng = os.urandom
    junk = [b"", rng(1), rng(300), messages[0][: len(messages[0]) // 2], messages[1][:-1] + bytes([messages[1][-1] ^ 1]),
            b"\x28\xb5\x2f\xfd" + rng(40), zstandard.ZstdCompressor().compress(bytes(100 << 20)),
            zstandard.ZstdCompressor().compress(b"\xd2\x84" + rng(50))]
    for payload in junk:
        collector.receive(topics.block("car-1", "speed"), payload)
    collector.receive("carledger/v1/car-1/speed/other", messages[0])
    collector.receive("carledger/v1/car+1/speed/block", messages[0])
    collector.receive(topics.block("car-9", "speed"), messages[0])
    collector.receive(topics.block("car-9", "speed"), messages[1])
    assert collector.flush() == []
    found = kinds(collector)
    assert found.get(UNKNOWN_VEHICLE) == 2 and found.get("malformed", 0) + found.get("bad-signature", 0) + found.get("bad-merkle-root", 0) == len(junk) + 2, found
    send(collector, messages)
    assert collector.stats.accepted == 6


def test_enrolment_and_status_on_the_command_line(car, tmp_path, capsys):
    messages, store, collector, _ = car
    if not isinstance(collector.registry, Registry):
        pytest.skip("the directory's command line; the DSN's: test_collect_pg.py")
    send(collector, messages)
    collector.close()
    where = str(tmp_path / "collected")
    assert main(["collect", "enroll", where, "car-1", str(store / "keys" / "vehicle.pub")]) == 0  # same key: fine
    other = bytes(SigningKey.generate().verify_key).hex()  # a usable key, only not car-1's
    assert main(["collect", "enroll", where, "car-1", other]) == 1
    assert "enrolled with another key" in capsys.readouterr().err
    assert main(["collect", "enroll", where, "car/1", "00" * 32]) == 1
    assert main(["collect", "status", where, "--json"]) == 0
    state = json.loads(capsys.readouterr().out.splitlines()[-1])
    speed = state["vehicles"]["car-1"]["streams"]["speed"]
    with Store.open_readonly(store) as agent:
        assert (speed["head_seq"], bytes.fromhex(speed["head"])) == agent.stream_head("speed")
    assert speed["blocks"] == 6 and speed["records"] == 60 and state["problems"] == []
    assert main(["collect", "status", where]) == 0
    assert "speed" in capsys.readouterr().out
    assert main(["verify", where + "/vehicles/car-1"]) == 0


def open_header(message: bytes):
    from carledger.ledger import Header, split_records

    bare, _ = split_records(message)
    return Header.decode(cose.decode_sign1(bare).payload)


def test_export_streams_samples_of_one_stream_or_a_time_range(car, tmp_path, capsys):
    """collect export: jsonl and csv with `vehicle` first, a time range, each block checked again (both backends)."""
    messages, _, collector, _ = car
    send(collector, messages)
    collector.close()
    where = (["--dsn", collector.registry.dsn] if not isinstance(collector.registry, Registry)
             else [str(tmp_path / "collected")])
    assert main(["collect", "export", *where, "--vehicle", "car-1", "--stream", "speed"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 60 and rows[0]["vehicle"] == "car-1" and rows[0]["t"] == T0 and rows[-1]["seq"] == 5
    # blocks 2 and 3 hold T0+2 .. T0+3.9: a range inside them, in ISO and in epoch seconds
    since, until = "2023-11-14T22:13:22Z", str(T0 + 3.45)
    assert main(["collect", "export", *where, "--since", since, "--until", until, "--format", "csv",
                 "-o", str(tmp_path / "out.csv")]) == 0
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "vehicle,t,stream,seq,name,message,signal,value" and len(lines) == 1 + 15
    assert {line.split(",")[3] for line in lines[1:]} == {"2", "3"}
    assert main(["collect", "export", *where, "--since", "yesterday"]) == 2
    assert "--since 'yesterday': neither ISO 8601" in capsys.readouterr().err
