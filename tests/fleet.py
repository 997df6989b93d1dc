"""A fleet on loopback for the tests: PostgreSQL (tests/pg.py), two mosquitto brokers, three worker processes
(`carledger collect run --dsn`), and cars each syncing to the broker `broker_for` assigns it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from broker import Broker, Drive, all_acked, chains, enroll, mqtt_for
from carledger.collect.fleet import broker_for
from carledger.collect.pgstore import PgStore
from carledger.collect.verify import verify_collected
from carledger.sync import OutboundStream, Syncer
from conftest import REPO, wait_until

OUT = {"speed": OutboundStream("insurer"), "gps": OutboundStream("fleet")}


class Fleet:
    """Everything a fault test needs; `close()` stops it all."""

    def __init__(self, tmp_path: Path, dsn: str, *, cars: int = 3, workers: int = 3):
        self.tmp = tmp_path
        self.dsn = dsn
        self.keydir = tmp_path / "worker"  # what every worker machine holds: the ack key
        self.brokers: list[Broker] = []
        self.cars: dict[str, Drive] = {}
        self.syncers: dict[str, Syncer] = {}
        self.workers: list[subprocess.Popen | None] = []
        try:  # half started (a broker or a worker that would not start): stop what did start
            for i in range(2):
                self.brokers.append(Broker(tmp_path / f"broker-{i}").start())
            store = PgStore(dsn)
            try:
                for vid in self._spread(cars):
                    self.cars[vid] = Drive(tmp_path / vid, vid)
                    enroll(self.keydir, vid, tmp_path / vid, into=store)
            finally:
                store.close()
            for i in range(workers):
                self.start_worker(i)
        except BaseException:
            self.close()
            raise

    def _spread(self, n: int) -> list[str]:
        """n vehicle ids that the assignment rule spreads over both brokers (the ports are random)."""
        names = [f"{b.host}:{b.port}" for b in self.brokers]
        per = {name: 0 for name in names}
        out, i = [], 0
        while len(out) < n:
            vid, i = f"car-{i}", i + 1
            b = broker_for(vid, names)
            if per[b] < -(-n // len(names)):
                per[b] += 1
                out.append(vid)
        return out

    def broker_of(self, vid: str) -> Broker:
        names = [f"{b.host}:{b.port}" for b in self.brokers]
        return self.brokers[names.index(broker_for(vid, names))]

    def start_worker(self, i: int) -> None:
        """Worker i as its own process (`carledger collect run`), waited for until both brokers see it."""
        cmd = [sys.executable, "-m", "carledger", "collect", "run", str(self.keydir), "--dsn", self.dsn,
               "--group", "fleet", "--client-id", f"w{i}", "--gap-wait", "5"]
        for b in self.brokers:
            cmd += ["--broker", f"{b.host}:{b.port}"]
        log = open(self.tmp / f"worker-{i}.log", "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        if i < len(self.workers):
            self.workers[i] = proc
        else:
            self.workers.append(proc)
        for j, b in enumerate(self.brokers):
            wait_until(lambda: f" as w{i}-{j} " in b.log_text() or proc.poll() is not None, timeout=20)
        assert proc.poll() is None, (self.tmp / f"worker-{i}.log").read_text()

    def kill_worker(self, i: int) -> None:
        proc = self.workers[i]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.workers[i] = None

    def sync(self) -> None:
        """Start every car's sync, each to its assigned broker."""
        for vid in self.cars:
            cfg = mqtt_for(self.broker_of(vid), client_id=f"{vid}-sync")
            s = Syncer(self.tmp / vid, vid, cfg, lambda: OUT)
            s.start()
            self.syncers[vid] = s

    def drive(self, ticks: int) -> None:
        for _ in range(ticks):
            for d in self.cars.values():
                d.tick()

    def settle(self, timeout: float = 90) -> None:
        """Wait until every car has every block acked; if not, fail saying where each unacked chain stands."""
        try:
            wait_until(lambda: all(all_acked(self.tmp / vid) for vid in self.cars), timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.where()}") from None

    def where(self) -> str:
        """Each unacked chain: the car's backlog and sync counters, the collector's head, held and evidence rows."""
        import psycopg

        from carledger.ledger import Store

        lines = []
        with psycopg.connect(self.dsn) as conn:
            for vid in self.cars:
                with Store.open_readonly(self.tmp / vid) as s:
                    backlog = s.backlog()
                syncer = self.syncers.get(vid)
                for stream in backlog:
                    head = conn.execute("SELECT seq FROM heads WHERE vehicle = %s AND stream = %s",
                                        (vid, stream)).fetchone()
                    held = [r[0] for r in conn.execute(
                        "SELECT seq FROM pending WHERE vehicle = %s AND stream = %s ORDER BY seq", (vid, stream))]
                    evidence = conn.execute("SELECT count(*) FROM evidence WHERE vehicle = %s AND stream = %s",
                                            (vid, stream)).fetchone()[0]
                    stats = syncer.stats if syncer is not None else None
                    lines.append(
                        f"{vid} {stream} (broker {self.broker_of(vid).port}): car backlog {backlog[stream]}, "
                        f"collector head {head[0] if head else None}, held {held[:10]}{'...' if len(held) > 10 else ''}, "
                        f"evidence {evidence}; syncer published {getattr(stats, 'published', '?')}, "
                        f"resent {getattr(stats, 'resent', '?')}, acks ignored {getattr(stats, 'acks_ignored', '?')}, "
                        f"problems {list(syncer.problems)[-3:] if syncer is not None else None}")
        return "\n".join(lines) or "(every car's backlog is empty now)"

    def assert_exactly_once(self) -> None:
        """Every block of every car stored once, in order, each chain intact (re-verified from the signed bytes)."""
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            for vid in self.cars:
                for stream, blocks in chains(self.tmp / vid).items():
                    stored = [(q, bytes(d)) for q, d in conn.execute(
                        "SELECT seq, digest FROM blocks WHERE vehicle = %s AND stream = %s ORDER BY seq, received",
                        (vid, stream))]
                    assert stored == blocks, f"{vid} {stream}: {len(stored)} rows stored for {len(blocks)} blocks"
        store = PgStore(self.dsn)
        try:
            checks = verify_collected(store)
        finally:
            store.close()
        assert checks and all(c.ok for c in checks), [c.problems for c in checks if not c.ok]
        assert {c.vehicle for c in checks} == set(self.cars)

    def close(self) -> None:
        for s in self.syncers.values():
            s.stop()
        for i, proc in enumerate(self.workers):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for d in self.cars.values():
            d.close()
        for b in self.brokers:
            b.stop()
