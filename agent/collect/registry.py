"""The collector's own database, COLLECTOR/collector.sqlite (docs/collector.md).

Enrolled vehicles and their keys, blocks waiting for a gap to close, fork
evidence, problems and per-stream counters. The accepted chains themselves are
carledger stores (COLLECTOR/vehicles/<vehicle>/), one per vehicle, that
`carledger verify` and `carledger read` open like the agent's own.
Several collector processes may share one directory (WAL, busy timeout).
"""

from __future__ import annotations

import collections
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from carledger.collect.store import CollectorStore
from carledger.ledger import SealedBlock, Store, StoreError, VerifyKey, kid
from carledger.ledger.keys import enrolment_key
from carledger.ledger.files import private_dir, private_file
from carledger.sync import topics

__all__ = ["Registry", "DB_FILE", "VEHICLES_DIR", "RETIRED_DIR", "MAX_PROBLEMS", "MAX_PENDING", "MAX_EVIDENCE"]

DB_FILE = "collector.sqlite"
VEHICLES_DIR = "vehicles"
RETIRED_DIR = "retired"  # the chains of a vehicle's previous key, after a change of owner
MAX_PROBLEMS = 10_000  # distinct problem rows; beyond, problems are counted per kind only
MAX_PENDING = 4096  # blocks held per stream while waiting for a gap to close
MAX_EVIDENCE = 1000  # fork evidence messages kept per stream
# Replicas kept open at once, the most recently used: each holds a SQLite connection (three file descriptors
# with its WAL) and its page cache (~0.2 MB), so 10,000 cars all open would need 30,000 descriptors and ~2 GB.
# Past this, the least recently used replica is closed and opened again (~1 ms) when its car sends.
OPEN_REPLICAS = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vehicles(
  vehicle TEXT PRIMARY KEY, public_key BLOB NOT NULL, kid BLOB NOT NULL, enrolled REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pending(
  vehicle TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL, digest BLOB NOT NULL,
  message BLOB NOT NULL, received REAL NOT NULL, PRIMARY KEY(vehicle, stream, seq));
CREATE TABLE IF NOT EXISTS evidence(
  id INTEGER PRIMARY KEY, vehicle TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL,
  digest BLOB NOT NULL, message BLOB NOT NULL, received REAL NOT NULL, UNIQUE(vehicle, stream, seq, digest));
CREATE TABLE IF NOT EXISTS problems(
  id INTEGER PRIMARY KEY, vehicle TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
  detail TEXT NOT NULL, first REAL NOT NULL, last REAL NOT NULL, count INTEGER NOT NULL,
  UNIQUE(vehicle, stream, seq, kind));
CREATE TABLE IF NOT EXISTS counters(
  vehicle TEXT NOT NULL, stream TEXT NOT NULL, accepted INTEGER NOT NULL DEFAULT 0,
  duplicates INTEGER NOT NULL DEFAULT 0, last REAL, PRIMARY KEY(vehicle, stream));
"""


class Registry(CollectorStore):
    """collector.sqlite, and the replica store of each enrolled vehicle."""

    def __init__(self, path: str | os.PathLike, *, open_replicas: int = OPEN_REPLICAS):
        self.path = Path(path)
        self.open_replicas = max(1, open_replicas)
        try:
            private_dir(self.path / VEHICLES_DIR)  # every car's copies: the collector's alone
            self.conn = sqlite3.connect(private_file(self.path / DB_FILE), isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA busy_timeout=10000")
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.conn.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{self.path}: cannot open the collector database: {exc}") from None
        self._lock = threading.RLock()
        self._replicas: collections.OrderedDict[str, Store] = collections.OrderedDict()  # least recently used first

    # -- vehicles ----------------------------------------------------------------------------

    def enroll(self, vehicle: str, public_key: Any) -> VerifyKey:
        """Enrol (or confirm) a vehicle's Ed25519 public key; refuses to replace a different one."""
        if not topics.valid_vehicle_id(vehicle):
            raise ValueError(f"vehicle id {vehicle!r}: 1-64 of [A-Za-z0-9._:-], alphanumeric first")
        key = enrolment_key(public_key)  # small-order, non-canonical, mixed-order keys: refused (docs/ledger-keys.md)
        raw = bytes(key)
        with self._lock:
            row = self.conn.execute("SELECT public_key FROM vehicles WHERE vehicle = ?", (vehicle,)).fetchone()
            if row is not None and bytes(row[0]) != raw:
                raise ValueError(
                    f"vehicle {vehicle!r} is enrolled with another key (kid {kid(bytes(row[0])).hex()}); "
                    "a vehicle's key changes only with its owner: give the handover the car wrote "
                    "(carledger remote identity --handover FILE) with --handover FILE"
                )
            if row is None:
                self.conn.execute("INSERT INTO vehicles VALUES (?, ?, ?, ?)", (vehicle, raw, kid(raw), time.time()))
        self.replica(vehicle)
        return key

    def key(self, vehicle: str) -> VerifyKey | None:
        with self._lock:
            row = self.conn.execute("SELECT public_key FROM vehicles WHERE vehicle = ?", (vehicle,)).fetchone()
        return VerifyKey(bytes(row[0])) if row else None

    def vehicle_of_kid(self, key_id: bytes) -> tuple[str, VerifyKey] | None:
        with self._lock:
            row = self.conn.execute("SELECT vehicle, public_key FROM vehicles WHERE kid = ?", (key_id,)).fetchone()
        return (row[0], VerifyKey(bytes(row[1]))) if row else None

    def vehicles(self) -> list[tuple[str, bytes, float]]:
        with self._lock:
            return [(v, bytes(k), t) for v, k, t in self.conn.execute("SELECT vehicle, public_key, enrolled FROM vehicles ORDER BY vehicle")]

    def tree_root(self, vehicle: str, stream: str, size: int) -> bytes:
        """The replica's own tree of the stream (stored hashes, as the car keeps them)."""
        with self._lock:
            return self.replica(vehicle).tree_root(stream, size)

    def replica(self, vehicle: str) -> Store:
        """The vehicle's chains as a carledger store (COLLECTOR/vehicles/<vehicle>/), opened if it is not.

        Use it under `self._lock`: past `open_replicas`, opening one closes the
        least recently used, which must not be in use by another thread.
        """
        with self._lock:
            store = self._replicas.get(vehicle)
            key = self.key(vehicle)
            if store is not None and key is not None and store.public_key != bytes(key):
                # Re-keyed by another process (`collect enroll --handover`): this chain was retired.
                self._replicas.pop(vehicle).close()
                store = None
            if store is not None:
                self._replicas.move_to_end(vehicle)
                return store
            if key is None:
                raise StoreError(f"vehicle {vehicle!r} is not enrolled")
            store = Store.open_replica(self.path / VEHICLES_DIR / vehicle, vehicle, bytes(key))
            self._replicas[vehicle] = store
            while len(self._replicas) > self.open_replicas:
                self._replicas.popitem(last=False)[1].close()
            return store

    def stream_head(self, vehicle: str, stream: str) -> tuple[int, bytes] | None:
        with self._lock:
            return self.replica(vehicle).stream_head(stream)

    def stored(self, vehicle: str, stream: str, seq: int) -> tuple[bytes, bytes, bool] | None:
        with self._lock:
            replica = self.replica(vehicle)
            for block_id in replica.block_ids(stream, seq, seq):
                row = replica.get_block(block_id)
                if row is not None:
                    return bytes(row.digest), bytes(row.sign1), row.records is not None
        return None

    def append(self, vehicle: str, blocks: Sequence[SealedBlock], now: float) -> None:
        """The replica's append: BEGIN IMMEDIATE locks the whole file, so every stream in it."""
        with self._lock:
            self.replica(vehicle).append(blocks)

    def append_all(self, batches: Mapping[str, Sequence[SealedBlock]], now: float) -> tuple[set[str], int]:
        """One transaction per vehicle's replica (its own file), then one in collector.sqlite for all counters and
        held blocks: with synchronous=FULL that is one fsync per flush there, not one per vehicle."""
        failed, done = set(), []
        for vehicle, blocks in batches.items():
            try:
                self.append(vehicle, blocks, now)
                done.append((vehicle, blocks))
            except StoreError:
                failed.add(vehicle)
        if done:
            with self._lock:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    for vehicle, blocks in done:
                        self.accepted(vehicle, blocks, now)
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
        return failed, 0

    def streams(self, vehicle: str) -> dict[str, dict]:
        """Read from the replica without opening it for writing (safe while collectors run; {} before any block)."""
        try:
            store = Store.open_readonly(self.path / VEHICLES_DIR / vehicle)
        except StoreError:
            return {}
        try:
            heads = store.heads()
            out = {}
            for name, blocks, records, first, _last, *_ in store.summaries():
                head = heads.get(name, (None, None))
                out[name] = {"blocks": blocks, "records": records or 0, "first_seq": first, "head_seq": head[0],
                             "head": head[1].hex() if isinstance(head[1], bytes) else None}
            return out
        finally:
            store.close()

    def blocks(self, vehicle: str | None = None, stream: str | None = None, t_from: int | None = None,
               t_to: int | None = None) -> Iterator[tuple[str, str, int, bytes]]:
        for vid, _key, _t in self.vehicles():
            if vehicle is not None and vid != vehicle:
                continue
            try:
                store = Store.open_readonly(self.path / VEHICLES_DIR / vid)
            except StoreError:
                continue  # enrolled, nothing received yet
            try:
                for row in store.iter_blocks(stream):
                    if (t_from is None or row.t1 >= t_from) and (t_to is None or row.t0 <= t_to):
                        yield vid, row.stream, row.seq, store.message(row)
            finally:
                store.close()

    def replace_key(self, vehicle: str, key: VerifyKey) -> Path:
        """Enrol `key` in place of the vehicle's key; its chains move to COLLECTOR/retired/VEHICLE-OLDKID/.

        Only after a change of owner, once `carledger.collect.rekey` checked
        the handover the enrolled key signed. Blocks held behind a gap (the
        previous key's) go; the retired replica stays a store `carledger
        verify` checks with the previous key. Returns where it went.
        """
        with self._lock:
            row = self.conn.execute("SELECT public_key FROM vehicles WHERE vehicle = ?", (vehicle,)).fetchone()
            if row is None:
                raise StoreError(f"vehicle {vehicle!r} is not enrolled")
            store = self._replicas.pop(vehicle, None)
            if store is not None:
                store.close()
            retired = self.path / RETIRED_DIR / f"{vehicle}-{kid(bytes(row[0])).hex()}"
            current = self.path / VEHICLES_DIR / vehicle
            if current.exists():  # absent when a re-key that moved it was cut short: finish it
                retired.parent.mkdir(mode=0o700, exist_ok=True)
                os.rename(current, retired)  # never onto an existing directory: that chain is kept as it was
            self.conn.execute("DELETE FROM pending WHERE vehicle = ?", (vehicle,))
            self.conn.execute("DELETE FROM counters WHERE vehicle = ?", (vehicle,))
            self.conn.execute("UPDATE vehicles SET public_key = ?, kid = ?, enrolled = ? WHERE vehicle = ?",
                              (bytes(key), kid(key), time.time(), vehicle))
        self.replica(vehicle)
        return retired

    # -- blocks waiting for a gap ------------------------------------------------------------

    def pending(self, vehicle: str, stream: str, seq: int) -> tuple[bytes, bytes] | None:
        """(digest, message) of the block held for (stream, seq), or None."""
        with self._lock:
            row = self.conn.execute(
                "SELECT digest, message FROM pending WHERE vehicle = ? AND stream = ? AND seq = ?", (vehicle, stream, seq)
            ).fetchone()
        return (bytes(row[0]), bytes(row[1])) if row else None

    def pending_after(self, vehicle: str, stream: str, seq: int) -> list[tuple[int, bytes]]:
        """(seq, message) of the blocks held for `stream` beyond `seq`, by seq."""
        with self._lock:
            return [(q, bytes(m)) for q, m in self.conn.execute(
                "SELECT seq, message FROM pending WHERE vehicle = ? AND stream = ? AND seq > ? ORDER BY seq",
                (vehicle, stream, seq))]

    def replace_pending(self, vehicle: str, stream: str, seq: int, message: bytes) -> None:
        """Put the full copy of a held block in place of its record-less one (same digest: checked by the caller)."""
        with self._lock:
            self.conn.execute(
                "UPDATE pending SET message = ? WHERE vehicle = ? AND stream = ? AND seq = ?", (message, vehicle, stream, seq)
            )

    def hold(self, vehicle: str, stream: str, seq: int, digest: bytes, message: bytes, now: float) -> bool:
        """Keep a verified block that does not link yet; False when the stream already holds MAX_PENDING."""
        with self._lock:
            n = self.conn.execute(
                "SELECT count(*) FROM pending WHERE vehicle = ? AND stream = ?", (vehicle, stream)
            ).fetchone()[0]
            if n >= MAX_PENDING:
                return False
            self.conn.execute(
                "INSERT OR IGNORE INTO pending VALUES (?, ?, ?, ?, ?, ?)", (vehicle, stream, seq, digest, message, now)
            )
        return True

    def release(self, vehicle: str, stream: str, upto_seq: int) -> None:
        """Forget held blocks the chain has reached."""
        with self._lock:
            self.conn.execute(
                "DELETE FROM pending WHERE vehicle = ? AND stream = ? AND seq <= ?", (vehicle, stream, upto_seq)
            )

    def waiting(self) -> list[tuple[str, str, int, int, float, int]]:
        """Per stream with held blocks: (vehicle, stream, lowest seq, highest seq, oldest arrival, count)."""
        with self._lock:
            return self.conn.execute(
                "SELECT vehicle, stream, min(seq), max(seq), min(received), count(*) FROM pending GROUP BY vehicle, stream"
            ).fetchall()

    # -- evidence, problems, counters --------------------------------------------------------

    def keep_evidence(self, vehicle: str, stream: str, seq: int, digest: bytes, message: bytes, now: float) -> bool:
        with self._lock:
            n = self.conn.execute(
                "SELECT count(*) FROM evidence WHERE vehicle = ? AND stream = ?", (vehicle, stream)
            ).fetchone()[0]
            if n >= MAX_EVIDENCE:
                return False
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO evidence(vehicle, stream, seq, digest, message, received) VALUES (?, ?, ?, ?, ?, ?)",
                (vehicle, stream, seq, digest, message, now),
            )
            return cur.rowcount > 0

    def evidence(self, vehicle: str, stream: str, seq: int) -> list[bytes]:
        with self._lock:
            return [bytes(r[0]) for r in self.conn.execute(
                "SELECT message FROM evidence WHERE vehicle = ? AND stream = ? AND seq = ? ORDER BY id", (vehicle, stream, seq))]

    def problem(self, vehicle: str | None, stream: str | None, seq: int | None, kind: str, detail: str, now: float) -> None:
        """Record a problem; the same (vehicle, stream, seq, kind) again only counts up and keeps the last detail."""
        key = (vehicle or "", stream or "", -1 if seq is None else seq, kind)
        with self._lock:
            cur = self.conn.execute(
                "UPDATE problems SET count = count + 1, last = ?, detail = ? "
                "WHERE vehicle = ? AND stream = ? AND seq = ? AND kind = ?", (now, detail[:500], *key))
            if cur.rowcount:
                return
            n = self.conn.execute("SELECT count(*) FROM problems").fetchone()[0]
            if n >= MAX_PROBLEMS:
                key = ("", "", -1, kind)  # a flood: count it under the kind alone
                cur = self.conn.execute(
                    "UPDATE problems SET count = count + 1, last = ?, detail = ? "
                    "WHERE vehicle = ? AND stream = ? AND seq = ? AND kind = ?", (now, detail[:500], *key))
                if cur.rowcount:
                    return
            self.conn.execute(
                "INSERT INTO problems(vehicle, stream, seq, kind, detail, first, last, count) VALUES (?, ?, ?, ?, ?, ?, ?, 1)",
                (*key, detail[:500], now, now))

    def problems(self) -> Iterator[dict]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT vehicle, stream, seq, kind, detail, count, first, last FROM problems ORDER BY first, id").fetchall()
        for v, s, q, k, d, c, f, l in rows:
            yield {"vehicle": v or None, "stream": s or None, "seq": None if q < 0 else q, "kind": k, "detail": d,
                   "count": c, "first": f, "last": l}

    def count(self, vehicle: str, stream: str, *, accepted: int = 0, duplicates: int = 0, now: float) -> None:
        with self._lock:
            self.conn.execute(
                "INSERT INTO counters VALUES (?, ?, ?, ?, ?) ON CONFLICT(vehicle, stream) DO UPDATE SET "
                "accepted = accepted + excluded.accepted, duplicates = duplicates + excluded.duplicates, last = excluded.last",
                (vehicle, stream, accepted, duplicates, now))

    def counters(self) -> dict[tuple[str, str], tuple[int, int, float | None]]:
        with self._lock:
            return {(v, s): (a, d, t) for v, s, a, d, t in self.conn.execute("SELECT * FROM counters")}

    def close(self) -> None:
        with self._lock:
            for store in self._replicas.values():
                store.close()
            self._replicas.clear()
            self.conn.close()
