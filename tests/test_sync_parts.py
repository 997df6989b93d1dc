"""The sync's parts without a broker: configuration, topics, payloads, store marks, retention and quota, policy signatures."""

from __future__ import annotations

import random
import sqlite3
import textwrap
from pathlib import Path

import pytest

from carledger.config import ConfigError
from carledger.ledger import Ledger, SigningKey, Store, StoreError, decode_record
from carledger.sync import (
    Backoff,
    MqttConfig,
    PolicyRejected,
    enroll_owner,
    load_owner_key,
    mqtt_config_from_table,
    open_policy,
    plan_eviction,
    seq_ranges,
    sign_policy,
    topics,
)
from carledger.sync.policy_update import PolicyHandler
from carledger.sync.ack import Ack, AckRejected, open_ack, sign_ack
from carledger.sync.wire import BlockPacker, unpack_block
from carledger.tomlfile import read_toml

T0 = 1_700_000_000.0


def mqtt(tmp_path: Path, text: str) -> MqttConfig:
    path = tmp_path / "agent.toml"
    path.write_text(textwrap.dedent(text))
    doc = read_toml(path)
    return mqtt_config_from_table(doc, doc.data["mqtt"], "mqtt")


def test_mqtt_table(tmp_path):
    (tmp_path / "ca.crt").write_text("x")
    (tmp_path / "car.crt").write_text("x")
    (tmp_path / "car.key").write_text("x")
    (tmp_path / "pass").write_text("s3cret\n")
    cfg = mqtt(tmp_path, """
        [mqtt]
        host = "broker.example"
        protocol = "3.1.1"
        username = "car-1"
        password_file = "pass"
        window = 16
        bandwidth = 20000
        ack_timeout = 5
        [mqtt.tls]
        ca = "ca.crt"
        cert = "car.crt"
        key = "car.key"
    """)
    assert (cfg.host, cfg.protocol, cfg.password, cfg.window, cfg.bandwidth, cfg.ack_timeout) == (
        "broker.example", "3.1.1", "s3cret", 16, 20000, 5.0)
    assert cfg.uses_tls and cfg.effective_port == 8883 and cfg.tls_ca == str(tmp_path / "ca.crt")
    assert mqtt(tmp_path, "[mqtt]\n").effective_port == 1883


@pytest.mark.parametrize("body, line, field, message", [
    ('hots = "x"', 3, "mqtt.hots", "unknown key"),
    ('port = 0', 3, "mqtt.port", "between 1 and 65535"),
    ('protocol = "4"', 3, "mqtt.protocol", '"5" or "3.1.1"'),
    ('window = "big"', 3, "mqtt.window", "expected an integer"),
    ('keepalive = true', 3, "mqtt.keepalive", "expected an integer"),
    ('ack_timeout = 0', 3, "mqtt.ack_timeout", "at least"),
    ('ack_timeout = nan', 3, "mqtt.ack_timeout", "not a finite number"),
    ('password = "a"\npassword_file = "nope"', 4, "mqtt.password_file", "no such readable file"),
    ('[mqtt.tls]\nca = "missing.crt"', 4, "mqtt.tls.ca", "no such readable file"),
    ('backoff_initial = 10\nbackoff_max = 1', 4, "mqtt.backoff_max", "backoff_initial"),
])
def test_mqtt_table_errors_name_the_line(tmp_path, body, line, field, message):
    with pytest.raises(ConfigError) as err:
        mqtt(tmp_path, "# agent\n[mqtt]\n" + body + "\n")
    assert (err.value.line, err.value.field) == (line, field) and message in err.value.message, str(err.value)
    assert str(err.value).startswith(f"{tmp_path / 'agent.toml'}:{line}: {field}: ")


def test_topics_round_trip_and_refuse_what_is_not_ours():
    assert topics.parse(topics.block("car-1", "insurer")) == topics.Topic("car-1", "insurer", "block")
    assert topics.parse(topics.ack("car-1", "s")) == topics.Topic("car-1", "s", "ack")
    assert topics.parse(topics.status("car-1")) == topics.Topic("car-1", None, "status")
    assert topics.parse(topics.policy("car-1")) == topics.Topic("car-1", None, "policy")
    for bad in ("carledger/v1/car-1", "carledger/v2/car-1/s/block", "carledger/v1/car 1/s/block",
                "carledger/v1/car-1/s/blocks", "carledger/v1/car-1/s/x/block", "carledger/v1//s/block"):
        assert topics.parse(bad) is None, bad


def test_payloads_and_acks():
    message = open_block_message()
    packer = BlockPacker(9)
    packed = packer.pack(message)
    assert len(packed) < len(message) and unpack_block(packed) == message
    assert BlockPacker(0).pack(message) == message and unpack_block(message) == message
    key, other = SigningKey(bytes(32)), SigningKey(bytes([1]) * 32)
    ack = Ack("car-1", "speed", 7, bytes(range(32)))
    assert open_ack(sign_ack(key, ack), key.verify_key, "car-1", "speed") == ack
    cases = {  # payload -> the cause the car ignores it for
        b"": "malformed",
        b'{"seq": 7, "digest": "' + b"00" * 32 + b'"}': "malformed",  # the old unsigned JSON ack
        sign_ack(other, ack): "bad-signature",
        sign_ack(key, ack._replace(seq=1 << 70)): "out-of-range",
        sign_ack(key, ack._replace(seq=-1)): "out-of-range",
        sign_ack(key, ack._replace(vehicle="car-2")): "wrong-subject",
        sign_ack(key, ack._replace(stream="gps")): "wrong-subject",
        sign_ack(key, ack._replace(digest=b"\0" * 31)): "malformed",
        b"x" * 2000: "malformed",
    }
    for payload, cause in cases.items():
        with pytest.raises(AckRejected) as caught:
            open_ack(payload, key.verify_key, "car-1", "speed")
        assert caught.value.cause == cause, payload[:40]
    with pytest.raises(AckRejected) as caught:
        open_ack(sign_ack(key, ack), None, "car-1", "speed")
    assert caught.value.cause == "no-collector-key"


def open_block_message() -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d, Ledger.open(d, "car-1") as ledger:
        w = ledger.writer("s")
        for i in range(200):
            w.add_sample(T0 + i / 100, "Vehicle.Speed", float(i % 10))
        return ledger.seal()[0].message()


def test_backoff_grows_with_jitter_and_resets():
    b = Backoff(1.0, 8.0, random.Random(1))
    delays = [b.next() for _ in range(6)]
    for d, step in zip(delays, (1, 2, 4, 8, 8, 8)):
        assert step / 2 <= d <= step
    assert len(set(delays)) == 6  # jitter: a fleet does not come back in step
    b.reset()
    assert b.next() <= 1.0


def seal(ledger: Ledger, stream: str, n: int, start: float = 0.0, per: int = 20) -> None:
    w = ledger.writer(stream)
    for b in range(n):
        for i in range(per):
            w.add_sample(T0 + start + b + i / per, "Vehicle.Speed", float(i))
        ledger.seal([w])


def test_the_sync_connection_reads_blocks_and_writes_only_marks(tmp_path):
    ledger = Ledger.open(tmp_path / "s", "car-1")
    seal(ledger, "a", 5)
    seal(ledger, "b", 3)
    marks = Store.open_marks(tmp_path / "s")  # beside the writer, which holds the lock
    assert [r.seq for r in marks.unacked_blocks("a", 1, 3)] == [1, 2, 3]
    assert marks.acked_seq("a") is None
    marks.mark_synced([r.id for r in marks.unacked_blocks("a", 0, 10)])
    assert marks.mark_acked("a", 2) == 3
    assert marks.acked_seq("a") == 2 and [r.seq for r in marks.unacked_blocks("a")] == [3, 4]
    assert marks.digest_at("a", 4) == ledger.writer("a").head[1]
    assert set(marks.backlog()) == {"a", "b"} and marks.backlog()["a"][0] == 2
    with pytest.raises(StoreError, match="delivery marks only"):
        marks.append([])
    with pytest.raises(StoreError, match="delivery marks only"):
        marks.drop_records([1])
    seal(ledger, "a", 1, start=5)  # the writer goes on while the sync connection is open
    assert marks.unacked_blocks("a", 5)[0].seq == 5
    marks.mark_acked("a", 5)
    assert marks.acked_seq("a") == 5 and "a" not in marks.backlog()
    marks.close()
    ledger.close()


def test_an_old_store_gets_the_index_and_keeps_working(tmp_path):
    with Ledger.open(tmp_path / "s", "car-1") as ledger:
        seal(ledger, "a", 2)
    conn = sqlite3.connect(tmp_path / "s" / "ledger.sqlite")
    conn.execute("DROP INDEX blocks_unacked")  # as a store written before this version
    conn.commit()
    conn.close()
    with Store.open_readonly(tmp_path / "s") as old:
        assert [r.seq for r in old.unacked_blocks("a")] == [0, 1]  # works without the index too
    with Ledger.open(tmp_path / "s") as ledger:
        seal(ledger, "a", 1, start=2)
    conn = sqlite3.connect(tmp_path / "s" / "ledger.sqlite")
    plan = " ".join(r[-1] for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM blocks WHERE stream = 'a' AND acked = 0 AND seq >= 0 ORDER BY seq"))
    conn.close()
    assert "blocks_unacked" in plan


def test_retention_of_an_outbound_stream_takes_only_acked_blocks(tmp_path):
    with Ledger.open(tmp_path / "s", "car-1") as ledger:
        seal(ledger, "a", 6)
        store = ledger.store
        store.mark_acked("a", 1)
        everything = [seq for _, seq, _ in store.expired("a", int((T0 + 100) * 1e6))]
        acked = [seq for _, seq, _ in store.expired("a", int((T0 + 100) * 1e6), acked_only=True)]
        assert everything == [0, 1, 2, 3, 4, 5] and acked == [0, 1]
        assert [seq for _, seq, _ in store.expired("a", int((T0 + 1.5) * 1e6), acked_only=True)] == [0]


def verify_ok(path: Path) -> bool:
    from carledger.verify import verify_store

    report = verify_store(path)
    return report.ok or print(report.problems)


def test_quota_evicts_acked_first_then_unacked_declared_never_crash_or_audit(tmp_path):
    with Ledger.open(tmp_path / "s", "car-1") as ledger:
        for k in range(4):
            seal(ledger, "crash", 1, start=k * 10, per=50)
            seal(ledger, "audit", 1, start=k * 10, per=50)
            seal(ledger, "a", 2, start=k * 10, per=50)
            seal(ledger, "b", 2, start=k * 10, per=50)
        store = ledger.store
        store.mark_acked("a", 3)
        total = store.stored_bytes()
        assert not plan_eviction(store, total)  # under quota: nothing to do
        plan = plan_eviction(store, total // 2)
        assert plan.freed >= total - int(total // 2 * 0.9)
        rows = {r.id: r for r in store.iter_blocks()}
        assert {rows[i].stream for i in plan.acked} == {"a"} and len(plan.acked) == 4  # every acked block first
        assert {rows[i].stream for i in plan.unacked} <= {"a", "b"}
        assert not any(rows[i].stream in ("crash", "audit") for i in plan.acked + plan.unacked)
        oldest_unacked = sorted(plan.unacked)
        assert [rows[i].seq for i in oldest_unacked if rows[i].stream == "b"][:2] == [0, 1]
        declared = dict(plan.events)
        assert set(declared) == {rows[i].stream for i in plan.acked + plan.unacked}
        for stream, detail in declared.items():
            evicted = sorted((rows[i] for i in plan.acked + plan.unacked if rows[i].stream == stream), key=lambda r: r.seq)
            assert detail == {"reason": "disk-quota", "stream": stream, "seqs": seq_ranges(r.seq for r in evicted),
                              "blocks": len(evicted), "records": sum(r.count for r in evicted),
                              "unacked": sum(1 for r in evicted if r.id in plan.unacked)}
        for stream, detail in plan.events:  # what the pipeline does: declare, seal, then drop
            ledger.writer(stream).add_event(T0 + 100, "eviction", detail)
        ledger.seal()
        plan.apply(store)
        assert store.stored_bytes() <= total // 2
        for stream in declared:
            last = list(store.iter_blocks(stream))[-1]
            assert decode_record(store.records(last)[-1]).kind == "eviction"
        assert not plan_eviction(store, 0, locked=["a", "b"])  # what is left is crash, audit and locked streams
        rows = {r.id: r for r in store.iter_blocks()}
        assert {rows[i].stream for i in plan_eviction(store, 0).unacked} == {"a", "b"}
    assert verify_ok(tmp_path / "s")


def test_policy_updates_open_only_with_the_enrolled_owner_key(tmp_path):
    owner, other = SigningKey.generate(), SigningKey.generate()
    document = b'version = 4\n[[stream]]\nname = "x"\n'
    signed = sign_policy(document, owner)
    assert open_policy(signed, owner.verify_key) == document
    with pytest.raises(PolicyRejected, match="another key"):
        open_policy(signed, other.verify_key)
    with pytest.raises(PolicyRejected, match="does not verify"):
        tampered = signed.replace(b"version = 4", b"version = 9")
        open_policy(tampered, owner.verify_key)
    with pytest.raises(PolicyRejected, match="not a COSE_Sign1"):
        open_policy(b"version = 9", owner.verify_key)
    block = open_block_message()  # a vehicle block is not a policy, even with the right signature
    with pytest.raises(PolicyRejected, match="content type"):
        open_policy(block, owner.verify_key)

    applied = []
    handler = PolicyHandler(tmp_path, lambda doc: applied.append(doc) or {"ok": True, "version": 4})
    assert handler.receive(signed)["error"].startswith("no owner key enrolled")
    enroll_owner(tmp_path, bytes(owner.verify_key).hex())
    assert load_owner_key(tmp_path) == owner.verify_key
    handler = PolicyHandler(tmp_path, lambda doc: applied.append(doc) or {"ok": True, "version": 4})
    outcome = handler.receive(signed)
    assert outcome["ok"] and outcome["version"] == 4 and applied == [document]
    assert handler.receive(signed) is None and applied == [document]  # the same document again: once is enough
    for n in range(1000):  # junk from whoever may publish on the topic: refused, and not remembered without end
        assert handler.receive(b"junk %d" % n)["ok"] is False
    assert len(handler._seen) <= 64
    assert handler.receive(b"junk 999") is None  # the latest are still known
    assert handler.receive(sign_policy(document, other))["ok"] is False
    failing = PolicyHandler(tmp_path, lambda doc: {"ok": False, "error": "version 4 is not higher than 4"})
    assert failing.receive(signed) == {**failing.last, "ok": False, "error": "version 4 is not higher than 4"}


def test_the_window_grows_on_progress_and_shrinks_on_a_timeout_like_tcp():
    from carledger.sync.window import INITIAL_RTO, INITIAL_WINDOW, MIN_RTO, Window

    w = Window(MqttConfig(window=64, ack_timeout=30.0))
    assert w.room(0) == INITIAL_WINDOW and w.timeout == INITIAL_RTO
    w.progressed(4, 0.05, resending=False)  # slow start: one more per block acked
    assert w.room(0) == 8 and w.timeout == MIN_RTO  # 50 ms measured: the floor
    for _ in range(10):
        w.progressed(int(w.cwnd), 0.05, resending=False)
    assert w.room(0) == 64  # never past `window`
    w.timed_out(inflight=40)
    assert w.room(0) == 1 and w.ssthresh == 20 and w.timeout == 2 * MIN_RTO
    w.timed_out(inflight=1)
    assert w.timeout == 4 * MIN_RTO and w.ssthresh == 2
    w.progressed(30, None, resending=True)  # an ack that jumped over held blocks while sending again: by one
    assert w.room(0) == 2 and w.timeout == MIN_RTO  # progress returns the timeout to the measure
    w.progressed(2, 2.0, resending=False)  # above the threshold: about one per round trip
    assert 2 < w.cwnd < 4 and MIN_RTO < w.timeout <= 30.0
    slow = Window(MqttConfig(window=64, ack_timeout=5.0))
    for _ in range(6):
        slow.progressed(1, 60.0, resending=False)  # a collector slower than ack_timeout: the timeout caps there
    assert slow.timeout == 5.0
    for _ in range(10):
        slow.timed_out(inflight=1)
    assert slow.timeout == 16 * 5.0
