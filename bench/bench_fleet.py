"""A simulated fleet against the collector's workers: PostgreSQL and SQLite, 1 to 3 workers, two brokers.

    python bench/bench_fleet.py [--vehicles 200] [--blocks 10] [--records 50] [--rate 0] [--workers 1,2,3]

K vehicles, each with its own Ed25519 key, publish pre-signed blocks of one
stream (--records samples each) to the broker `broker_for` assigns them (two
mosquitto on loopback), at --rate blocks/s in total (0: as fast as the
brokers take them). `carledger collect run` workers (own processes) on both
brokers store them in PostgreSQL (tests/pg.py's cluster) or in one shared
collector directory (SQLite). Reported per run: blocks and records stored and
acked per second in total and per worker, PostgreSQL transactions per block
(pg_stat_database: every autocommit statement is one, so this bounds the
round trips from below), and the p50/p99 latency from publish to the ack that
covers the block.

Not a test: nothing here passes or fails. Not measured here: memory over a
10-minute run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import paho.mqtt.client as paho  # noqa: E402

from broker import Broker, require_mosquitto  # noqa: E402,F401
from carledger.collect.fleet import broker_for  # noqa: E402
from carledger.ledger import ZERO_DIGEST, encode_sample, seal_block  # noqa: E402
from carledger.ledger.keys import SigningKey  # noqa: E402
from carledger.sync import collector_key, topics  # noqa: E402
from carledger.sync.ack import open_ack  # noqa: E402
from carledger.sync.wire import BlockPacker  # noqa: E402
from conftest import wait_until  # noqa: E402
from pg import PgCluster, pg_bin  # noqa: E402

T0_US = 1_700_000_000_000_000
STREAM = "fleet"


def make_fleet(k: int, blocks: int, records: int) -> tuple[dict[str, bytes], dict[str, list[bytes]]]:
    """(vehicle -> raw public key, vehicle -> its packed block payloads in seq order), signed before the clock starts."""
    packer = BlockPacker(9)
    keys, messages = {}, {}
    for v in range(k):
        vid = f"car-{v:05d}"
        sk = SigningKey.generate()
        keys[vid] = bytes(sk.verify_key)
        prev, out = ZERO_DIGEST, []
        for b in range(blocks):
            t = T0_US + b * 10_000_000
            recs = [encode_sample(t + i * 1000, "Vehicle.Speed", float(i % 90)) for i in range(records)]
            blk = seal_block(vid=vid, stream=STREAM, seq=b, prev=prev, t0=t, t1=t + (records - 1) * 1000,
                             policy=bytes(32), records=recs, signing_key=sk)
            prev = blk.digest
            out.append(packer.pack(blk.message()))
        messages[vid] = out
    return keys, messages


class Acks:
    """Publish times per (vehicle, seq), and the latency of each block once an ack covers it."""

    def __init__(self, ack_key, messages: dict[str, list[bytes]]):
        self.ack_key = ack_key
        self.sent: dict[str, list[float]] = {v: [0.0] * len(m) for v, m in messages.items()}
        self.next = {v: 0 for v in messages}
        self.latency: list[float] = []
        self.acked = 0
        self.last = 0.0
        self.lock = threading.Lock()

    def on_ack(self, _c, _u, msg) -> None:
        now = time.monotonic()
        t = topics.parse(msg.topic)
        if t is None or t.vehicle not in self.next:
            return
        ack = open_ack(msg.payload, self.ack_key, t.vehicle, t.stream)
        with self.lock:
            while self.next[t.vehicle] <= ack.seq:
                self.latency.append(now - self.sent[t.vehicle][self.next[t.vehicle]])
                self.next[t.vehicle] += 1
                self.acked += 1
                self.last = now


def client_for(b: Broker, acks: Acks, name: str) -> paho.Client:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.on_message = acks.on_ack
    c.connect(b.host, b.port)
    c.subscribe(f"{topics.PREFIX}/+/+/ack", qos=1)
    c.loop_start()
    return c


def run(backend: str, workers: int, keys, messages, rate: float, tmp: Path, cluster: PgCluster | None) -> dict:
    brokers = [Broker(tmp / f"{backend}-{workers}-broker-{i}", max_queued=1_000_000).start() for i in range(2)]
    names = [f"{b.host}:{b.port}" for b in brokers]
    keydir = tmp / f"{backend}-{workers}-collector"
    dsn = None
    if backend == "postgresql":
        from carledger.collect.pgstore import PgStore

        dsn = cluster.new_database()
        store = PgStore(dsn)
    else:
        from carledger.collect.registry import Registry

        store = Registry(keydir)
    for vid, pub in keys.items():
        store.enroll(vid, pub.hex())
    store.close()
    ack_key = collector_key(keydir).verify_key
    procs = []
    for i in range(workers):
        cmd = [sys.executable, "-m", "carledger", "collect", "run", str(keydir), "--group", "bench", "--client-id", f"w{i}"]
        cmd += ["--dsn", dsn] if dsn else []
        for n in names:
            cmd += ["--broker", n]
        # stderr to a file: a pipe nobody reads fills up with the workers' warnings and stalls them
        with open(tmp / f"{backend}-{workers}-w{i}.log", "w") as log:
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log))
    for i in range(workers):
        for j, b in enumerate(brokers):
            wait_until(lambda: f" as w{i}-{j} " in b.log_text(), timeout=30)
    acks = Acks(ack_key, messages)
    clients = {n: client_for(b, acks, f"fleet-{n}") for n, b in zip(names, brokers)}
    assigned = {vid: clients[broker_for(vid, names)] for vid in messages}
    xacts0 = _xacts(dsn)
    total = sum(len(m) for m in messages.values())
    start = time.monotonic()
    sent = 0
    for seq in range(max(len(m) for m in messages.values())):
        for vid, msgs in messages.items():
            if rate:
                delay = start + sent / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            acks.sent[vid][seq] = time.monotonic()
            assigned[vid].publish(topics.block(vid, STREAM), msgs[seq], qos=1)
            sent += 1
    wait_until(lambda: acks.acked >= total, timeout=600, interval=0.05)
    elapsed = acks.last - start
    xacts = _xacts(dsn) - xacts0 if dsn else None
    per_worker = []
    for i, p in enumerate(procs):
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        m = re.search(r"accepted (\d+)", (tmp / f"{backend}-{workers}-w{i}.log").read_text())
        per_worker.append(int(m.group(1)) if m else None)
    for c in clients.values():
        c.loop_stop()
        c.disconnect()
    for b in brokers:
        b.stop()
    lat = sorted(acks.latency)
    return {
        "backend": backend, "workers": workers, "blocks": total, "seconds": round(elapsed, 2),
        "blocks_per_s": round(total / elapsed), "per_worker_blocks_per_s": [round(n / elapsed) if n is not None else None
                                                                          for n in per_worker],
        "transactions_per_block": round(xacts / total, 2) if xacts is not None else None,
        "ack_p50_s": round(statistics.median(lat), 3), "ack_p99_s": round(lat[int(len(lat) * 0.99) - 1], 3),
    }


def _xacts(dsn: str | None) -> int:
    if not dsn:
        return 0
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
                            ).fetchone()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vehicles", type=int, default=200)
    parser.add_argument("--blocks", type=int, default=10, help="blocks per vehicle")
    parser.add_argument("--records", type=int, default=50, help="samples per block (fleet streams: tens; full: ~280)")
    parser.add_argument("--rate", type=float, default=0, help="blocks/s published in total (0: as fast as possible)")
    parser.add_argument("--workers", default="1,2,3", help="worker counts to run (default 1,2,3)")
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if pg_bin() is None:
        print("bench_fleet: PostgreSQL is not installed (scripts/setup)", file=sys.stderr)
        return 2
    keys, messages = make_fleet(args.vehicles, args.blocks, args.records)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        cluster = PgCluster(pg_bin()).start() if "postgresql" in args.backends else None
        try:
            for backend in args.backends.split(","):
                for w in (int(x) for x in args.workers.split(",")):
                    r = run(backend, w, keys, messages, args.rate, Path(tmp), cluster)
                    r["records_per_s"] = r["blocks_per_s"] * args.records
                    r["records_per_block"] = args.records
                    results.append(r)
                    if not args.json:
                        print(f"{backend:<10} {w} worker(s): {r['blocks_per_s']:>6} blocks/s ({r['records_per_s']} "
                              f"records/s; per worker {r['per_worker_blocks_per_s']}), "
                              f"tx/block {r['transactions_per_block']}, ack p50 {r['ack_p50_s']} s p99 {r['ack_p99_s']} s",
                              flush=True)
        finally:
            if cluster is not None:
                cluster.close()
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
