"""The collector's PostgreSQL store against a real cluster (tests/pg.py): schema, exactly-once, forks, command line."""

from __future__ import annotations

import json
import threading

import pytest

from carledger.cli import main
from carledger.collect import Collector
from carledger.collect.pgstore import MIGRATIONS, PgStore, partition_name
from carledger.ledger import StoreError, open_block
from carledger.sync import topics
from pg import pg_cluster, pg_dsn  # noqa: F401  (fixtures)
from test_collect import T0, Clock, make_blocks, open_header, send


@pytest.fixture
def fleet(tmp_path, pg_dsn):
    """(messages of 6 blocks of car-1's `speed`, car-1's store, the DSN with car-1 enrolled)."""
    store = tmp_path / "car-1"
    messages = make_blocks(store, "car-1", "speed", 6)
    pg = PgStore(pg_dsn)
    pg.enroll("car-1", store / "keys" / "vehicle.pub")
    pg.close()
    return messages, store, pg_dsn


def test_migrations_are_versioned_and_applied_once(pg_dsn):
    first = PgStore(pg_dsn)
    second = PgStore(pg_dsn)  # a second worker starting: nothing to apply
    assert first.schema_version() == second.schema_version() == len(MIGRATIONS)
    first.close()
    second.close()


def test_blocks_go_to_the_partition_of_their_arrival_month(fleet):
    messages, _, dsn = fleet
    collector = Collector(fleet[1].parent / "keydir", store=dsn, clock=Clock())
    send(collector, messages)
    name, start, end = partition_name(T0)
    assert name == "blocks_2023_11" and start <= T0 < end
    rows = collector.registry._q(f"SELECT count(*) FROM {name}").fetchone()[0]
    default = collector.registry._q("SELECT count(*) FROM blocks_default").fetchone()[0]
    assert (rows, default) == (6, 0)
    collector.close()


def test_two_workers_racing_on_the_same_blocks_store_each_once(fleet, tmp_path):
    """Two collectors (two connections) get the same 6 blocks at once: one stores each, the other counts duplicates."""
    messages, _, dsn = fleet
    workers = [Collector(tmp_path / "keydir", store=dsn, clock=Clock()) for _ in range(2)]
    barrier = threading.Barrier(2)
    acks: list[list] = [[], []]

    def work(i: int) -> None:
        barrier.wait()
        for m in messages:  # one flush per block: the most interleaving
            acks[i] += send(workers[i], [m])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pg = workers[0].registry
    assert pg.block_count("car-1", "speed") == (6, 6)
    assert pg.stream_head("car-1", "speed")[0] == 5
    assert sum(w.stats.accepted for w in workers) == 6
    assert [p["kind"] for p in pg.problems()] == []
    for w in workers:
        w.close()


def test_a_different_block_at_a_stored_seq_is_a_fork_kept_as_evidence_not_an_overwrite(fleet, tmp_path):
    from carledger.ledger import Store, seal_block

    messages, store, dsn = fleet
    collector = Collector(tmp_path / "keydir", store=dsn, clock=Clock())
    send(collector, messages[:3])
    with Store.open(store) as s:
        key = s.signing_key
    h = open_header(messages[2])
    fork = seal_block(vid="car-1", stream="speed", seq=2, prev=h.prev, t0=h.t0, t1=h.t1 + 1, policy=h.policy,
                      records=[], signing_key=key).message()
    send(collector, [fork])
    assert [p["kind"] for p in collector.registry.problems()] == ["fork"]
    assert collector.registry.evidence("car-1", "speed", 2) == [fork]
    assert collector.registry.block_count("car-1", "speed") == (3, 3)
    assert collector.registry.stored("car-1", "speed", 2)[0] == open_block(messages[2], collector.registry.key("car-1")).digest
    with pytest.raises(StoreError):  # the store itself refuses a block that does not continue the head
        collector.registry.append("car-1", [open_block(messages[4], collector.registry.key("car-1"))], T0)
    collector.close()


def test_the_command_line_enrols_shows_and_verifies_with_a_dsn(fleet, tmp_path, capsys):
    messages, store, dsn = fleet
    collector = Collector(tmp_path / "keydir", store=dsn, clock=Clock())
    send(collector, messages)
    collector.close()
    assert main(["collect", "enroll", "--dsn", dsn, "car-1", str(store / "keys" / "vehicle.pub")]) == 0
    assert main(["collect", "status", "--dsn", dsn, "--json"]) == 0
    state = json.loads(capsys.readouterr().out.splitlines()[-1])
    speed = state["vehicles"]["car-1"]["streams"]["speed"]
    assert (speed["blocks"], speed["records"], speed["head_seq"]) == (6, 60, 5)
    assert main(["collect", "verify", "--dsn", dsn]) == 0
    assert "car-1 speed: 6 blocks, 60 records: intact" in capsys.readouterr().out
    assert main(["collect", "key", str(tmp_path / "keydir")]) == 0  # a worker's directory holds only the ack key
    capsys.readouterr()
    bad = dsn.replace("dbname=", "dbname=nosuch")
    assert main(["collect", "status", "--dsn", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("carledger collect: PostgreSQL: cannot connect")


def test_a_tampered_row_fails_collect_verify(fleet, tmp_path, capsys):
    messages, _, dsn = fleet
    collector = Collector(tmp_path / "keydir", store=dsn, clock=Clock())
    send(collector, messages)
    collector.registry._q("UPDATE blocks SET message = %s WHERE seq = 3", (messages[4],))
    collector.close()
    assert main(["collect", "verify", "--dsn", dsn]) == 1
    assert "seq 3" in capsys.readouterr().out


def test_blocks_are_read_in_keyset_pages_in_chain_order(fleet, tmp_path):
    messages, _, dsn = fleet
    collector = Collector(tmp_path / "keydir", store=dsn, clock=Clock())
    send(collector, messages)
    pages = list(collector.registry.blocks(batch=4))  # 6 blocks: a full page of 4, then 2
    assert [(v, s, q) for v, s, q, _ in pages] == [("car-1", "speed", q) for q in range(6)]
    assert [m for *_, m in pages] == messages
    collector.close()


def test_a_flush_of_many_vehicles_is_a_few_round_trips_and_one_transaction(tmp_path, pg_dsn):
    """Prefetch, then the chains' locks and heads, then the rows and the commit: not one transaction per vehicle."""
    pg = PgStore(pg_dsn)
    messages = {}
    for v in range(5):
        vid = f"car-{v}"
        messages[vid] = make_blocks(tmp_path / vid, vid, "speed", 3)
        pg.enroll(vid, tmp_path / vid / "keys" / "vehicle.pub")
    pg.close()
    collector = Collector(tmp_path / "keydir", store=pg_dsn, clock=Clock())
    collector.registry._partition(T0)  # the month's partition: made once, by the first flush of the month
    xacts = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    before, trips = collector.registry._q(xacts).fetchone()[0], collector.registry.round_trips
    for vid, ms in messages.items():
        for m in ms:
            collector.receive(topics.block(vid, "speed"), m)
    acks = collector.flush()
    assert collector.registry.round_trips - trips == 3
    collector.registry._q("SELECT pg_stat_clear_snapshot()")
    assert collector.registry._q(xacts).fetchone()[0] - before <= 4  # the flush's one, its reads' and these queries'
    assert len(acks) == 5 and collector.stats.accepted == 15
    assert collector.registry.counters()[("car-0", "speed")][0] == 3
    collector.close()


def test_receipts_cosign_the_stored_tree_root_also_for_chains_stored_before_migration_2(fleet, tmp_path):
    """Each block row keeps its tree's root and the head its frontier; a chain stored without them gets them once."""
    from carledger.collect.store import CollectorStore
    from carledger.ledger import merkle
    from carledger.ledger.block import split_records

    messages, _, dsn = fleet
    collector = Collector(tmp_path / "keydir", store=dsn, clock=Clock())
    pg = collector.registry
    send(collector, messages[:3])
    pg._q("UPDATE heads SET frontier = NULL")  # as migration 2 leaves a chain stored before it
    pg._q("UPDATE blocks SET root = NULL")
    pg._roots.clear()
    send(collector, messages[3:])
    leaves = [merkle.leaf_hash(split_records(m)[0]) for m in messages]
    for size in range(1, 7):
        assert pg.tree_root("car-1", "speed", size) == merkle.root_from_hashes(leaves[:size])
        assert CollectorStore.tree_root(pg, "car-1", "speed", size) == merkle.root_from_hashes(leaves[:size])
    stored = [r[0] for r in pg._q("SELECT root FROM blocks ORDER BY seq").fetchall()]
    assert stored[:3] == [None] * 3 and [bytes(r) for r in stored[3:]] == [merkle.root_from_hashes(leaves[:n]) for n in (4, 5, 6)]
    collector.close()


def test_blocks_another_worker_stored_up_to_the_head_are_left_out_not_a_failed_batch(fleet, tmp_path):
    """Two workers linking the same held blocks: the loser's batch up to the moved head is dropped in its transaction."""
    messages, _, dsn = fleet
    collector = Collector(tmp_path / "keydir", store=dsn, clock=Clock())
    send(collector, messages[:3])
    pg = collector.registry
    blocks = [open_block(m, pg.key("car-1")) for m in messages]
    assert pg.append_all({"car-1": blocks[1:4]}, T0) == (set(), 2)  # seq 1-2 stored already, seq 3 appended
    assert pg.stream_head("car-1", "speed")[0] == 3 and pg.block_count("car-1", "speed") == (4, 4)
    assert pg.append_all({"car-1": blocks[2:4]}, T0) == (set(), 2)  # all of it stored already: nothing to write
    assert pg.append_all({"car-1": blocks[1:3]}, T0) == ({"car-1"}, 0)  # the head is past the batch: not provable here
    assert pg.counters()[("car-1", "speed")][0] == 4
    collector.close()
