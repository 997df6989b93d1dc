"""The collector's store on PostgreSQL: many stateless workers, one database (docs/collector.md, "PostgreSQL").

Exactly once: a block is inserted only when it continues its stream's head
(seq = head + 1, prev = head digest), and the head row moves in the same
transaction, under `pg_advisory_xact_lock` of (vehicle, stream). The advisory
lock, not a row lock, because a stream's first block has no head row to lock
yet. Two workers holding the same block: the second waits for the lock, then
sees the head already past it and counts a duplicate (or keeps a fork).

`blocks` is range-partitioned by arrival time, one partition per month, made
on first use: dropping a month is `DROP TABLE`, not a DELETE. A partitioned
table cannot carry a unique index without its partition key, so uniqueness
of (vehicle, stream, seq) is the head rule above, which every insert obeys.

Schema changes are numbered migrations (MIGRATIONS), applied in order under
an advisory lock by the first worker to start; `schema_version` records them.

Round trips, not CPU, bound a worker: a flush reads what its checks need in
one pipelined round trip (`prefetch`), then stores every vehicle's blocks in
ONE transaction (`append_all`): the chains' locks and heads in one round
trip, the rows as arrays through `unnest` and the commit in another. The
tree a receipt cosigns is kept as it grows: each head row carries its tree's
frontier (merkle.frontier_push) and each block row the root of the tree
ending with it, so a receipt costs O(log n) to extend and one lookup to read,
never a pass over the chain.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import struct
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

from carledger.collect.registry import MAX_EVIDENCE, MAX_PENDING, MAX_PROBLEMS
from carledger.collect.store import CollectorStore, Prefetch, StoreUnavailable
from carledger.ledger import ZERO_DIGEST, SealedBlock, StoreError, VerifyKey, kid, merkle
from carledger.ledger.keys import enrolment_key
from carledger.sync import topics

__all__ = ["PgStore", "MIGRATIONS", "partition_name"]

_MIGRATE_LOCK = 0x6361726C65646772  # pg_advisory_lock key while migrating ("carledgr")
_PARTITION_LOCK = _MIGRATE_LOCK + 1  # while creating a month's partition

MIGRATIONS: list[str] = [
    # 1: the first schema.
    """
    CREATE TABLE vehicles(
      vehicle text PRIMARY KEY, public_key bytea NOT NULL, kid bytea NOT NULL, enrolled double precision NOT NULL);
    CREATE INDEX vehicles_kid ON vehicles(kid);
    CREATE TABLE heads(
      vehicle text NOT NULL, stream text NOT NULL, seq bigint NOT NULL, digest bytea NOT NULL,
      first_seq bigint NOT NULL, blocks bigint NOT NULL, records bigint NOT NULL, PRIMARY KEY(vehicle, stream));
    CREATE TABLE blocks(
      vehicle text NOT NULL, stream text NOT NULL, seq bigint NOT NULL, digest bytea NOT NULL, prev bytea NOT NULL,
      t0 bigint NOT NULL, t1 bigint NOT NULL, count integer NOT NULL, sign1 bytea NOT NULL, message bytea NOT NULL,
      bare boolean NOT NULL, received double precision NOT NULL
    ) PARTITION BY RANGE (received);
    CREATE TABLE blocks_default PARTITION OF blocks DEFAULT;
    CREATE INDEX blocks_chain ON blocks(vehicle, stream, seq);
    CREATE TABLE pending(
      vehicle text NOT NULL, stream text NOT NULL, seq bigint NOT NULL, digest bytea NOT NULL,
      message bytea NOT NULL, received double precision NOT NULL, PRIMARY KEY(vehicle, stream, seq));
    CREATE TABLE evidence(
      id bigserial PRIMARY KEY, vehicle text NOT NULL, stream text NOT NULL, seq bigint NOT NULL,
      digest bytea NOT NULL, message bytea NOT NULL, received double precision NOT NULL,
      UNIQUE(vehicle, stream, seq, digest));
    CREATE TABLE problems(
      id bigserial PRIMARY KEY, vehicle text NOT NULL, stream text NOT NULL, seq bigint NOT NULL, kind text NOT NULL,
      detail text NOT NULL, first double precision NOT NULL, last double precision NOT NULL, count bigint NOT NULL,
      UNIQUE(vehicle, stream, seq, kind));
    CREATE TABLE counters(
      vehicle text NOT NULL, stream text NOT NULL, accepted bigint NOT NULL DEFAULT 0,
      duplicates bigint NOT NULL DEFAULT 0, last double precision, PRIMARY KEY(vehicle, stream));
    """,
    # 2: stored tree hashes, so a receipt is O(log n): the head's frontier, each block's tree root.
    # NULL for chains stored before it: derived once from their blocks at their next append.
    """
    ALTER TABLE heads ADD COLUMN frontier bytea;
    ALTER TABLE blocks ADD COLUMN root bytea;
    """,
    # 3: a change of owner (replace_key): the previous key's chains, kept apart from the enrolled key's.
    """
    CREATE TABLE retired(
      id bigserial PRIMARY KEY, vehicle text NOT NULL, public_key bytea NOT NULL, kid bytea NOT NULL,
      enrolled double precision NOT NULL, retired double precision NOT NULL);
    CREATE TABLE retired_blocks(
      retired bigint NOT NULL REFERENCES retired(id), stream text NOT NULL, seq bigint NOT NULL, digest bytea NOT NULL,
      prev bytea NOT NULL, t0 bigint NOT NULL, t1 bigint NOT NULL, count integer NOT NULL, sign1 bytea NOT NULL,
      message bytea NOT NULL, bare boolean NOT NULL, received double precision NOT NULL,
      PRIMARY KEY(retired, stream, seq));
    """,
]

T = TypeVar("T")


def chain_lock(vehicle: str, stream: str) -> int:
    """The pg_advisory_xact_lock key of one chain: the first 8 bytes of SHA-256(vehicle "/" stream), signed.

    Computed here, so a batch takes its chains' locks in one order (ascending
    key) whatever the database's collation: two workers cannot deadlock.
    """
    return int.from_bytes(hashlib.sha256(f"{vehicle}/{stream}".encode()).digest()[:8], "big", signed=True)


def partition_name(t: float) -> tuple[str, float, float]:
    """(table name, start, end) of the month partition holding arrival time `t` (UTC)."""
    tm = time.gmtime(t)
    year, month = tm.tm_year, tm.tm_mon
    nyear, nmonth = (year + 1, 1) if month == 12 else (year, month + 1)
    start = float(_timegm(year, month))
    end = float(_timegm(nyear, nmonth))
    return f"blocks_{year:04d}_{month:02d}", start, end


def _timegm(year: int, month: int) -> int:
    import calendar

    return calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0))


class _Array(bytes):
    """A one-dimensional array parameter already in PostgreSQL's binary array format (array_send): psycopg's own
    array dumper spent several µs of Python per element, a flush's largest cost after the checks."""

    oid = 0


class _TextArray(_Array):
    oid = 1009


class _ByteaArray(_Array):
    oid = 1001


class _Int8Array(_Array):
    oid = 1016


class _Int4Array(_Array):
    oid = 1007


class _BoolArray(_Array):
    oid = 1000


_ELEMENT_OID = {1009: 25, 1001: 17, 1016: 20, 1007: 23, 1000: 16}
_ARRAY_HEAD = struct.Struct("!iiIii")  # ndim 1, no NULLs, element type, length, lower bound 1
_LEN = struct.Struct("!i").pack
_INT8 = struct.Struct("!iq").pack  # length 8, value
_INT4 = struct.Struct("!ii").pack
_BOOL = struct.Struct("!i?").pack


def _array(cls: type[_Array], items: Sequence[bytes | None]) -> _Array:
    oid = _ELEMENT_OID[cls.oid]
    if not items:
        return cls(struct.pack("!iiI", 0, 0, oid))
    nulls = None in items
    body = b"".join([_LEN(-1) if x is None else _LEN(len(x)) + x for x in items] if nulls else
                    [_LEN(len(x)) + x for x in items])
    return cls(_ARRAY_HEAD.pack(1, int(nulls), oid, len(items), 1) + body)


def text_array(values: Sequence[str | None]) -> _Array:
    return _array(_TextArray, [None if v is None else v.encode() for v in values])


def bytea_array(values: Sequence[bytes | None]) -> _Array:
    return _array(_ByteaArray, [None if v is None else bytes(v) for v in values])


def _ints(cls: type[_Array], pack: Callable[..., bytes], size: int, values: Sequence[int]) -> "_Array | list[int]":
    oid = _ELEMENT_OID[cls.oid]
    if not values:
        return cls(struct.pack("!iiI", 0, 0, oid))
    try:
        return cls(_ARRAY_HEAD.pack(1, 0, oid, len(values), 1) + b"".join(map(pack, itertools.repeat(size, len(values)), values)))
    except struct.error:  # out of the column's range (a header allows up to 2^64 - 1): PostgreSQL refuses it, as before
        return list(values)


def int8_array(values: Sequence[int]) -> "_Array | list[int]":
    return _ints(_Int8Array, _INT8, 8, values)


def int4_array(values: Sequence[int]) -> "_Array | list[int]":
    return _ints(_Int4Array, _INT4, 4, values)


def bool_array(values: Sequence[bool]) -> _Array:
    return _ints(_BoolArray, _BOOL, 1, [bool(v) for v in values])


def _register_arrays(conn: Any) -> None:
    from psycopg.adapt import Dumper
    from psycopg.pq import Format

    for cls in (_TextArray, _ByteaArray, _Int8Array, _Int4Array, _BoolArray):
        dumper = type(f"{cls.__name__}Dumper", (Dumper,), {"format": Format.BINARY, "oid": cls.oid,
                                                            "dump": lambda self, obj: obj})
        conn.adapters.register_dumper(cls, dumper)


def _db(method: Callable[..., T]) -> Callable[..., T]:
    """A database that went away is a StoreError (the worker reconnects at its next call), never a traceback."""

    @functools.wraps(method)
    def wrapper(self: "PgStore", *args: Any, **kwargs: Any) -> T:
        import psycopg

        with self._lock:
            try:
                return method(self, *args, **kwargs)
            except psycopg.Error as exc:
                detail = f"PostgreSQL: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
                if self._conn is None or self._conn.closed or isinstance(exc, psycopg.OperationalError):
                    if self._conn is not None:
                        self._conn.close()
                        self._conn = None
                    raise StoreUnavailable(detail) from None
                raise StoreError(detail) from None

    return wrapper


class PgStore(CollectorStore):
    """The collector store in one PostgreSQL database named by a DSN (libpq URI or key=value)."""

    def __init__(self, dsn: str, *, connect_timeout: float = 10.0):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise StoreError("the PostgreSQL backend needs psycopg 3: pip install 'carledger[fleet]'") from None
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self._lock = threading.RLock()
        self._conn: Any = None
        self._partitions: set[str] = set()
        self.round_trips = 0  # network round trips (a pipeline's counts once): bench_fleet reports them per block
        self._roots: dict[tuple[str, str], tuple[int, bytes]] = {}  # (size, root) the last append_all stored, per chain
        self._migrate()

    # -- connection and schema ---------------------------------------------------------------

    @property
    def conn(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)))
                _register_arrays(self._conn)
            except psycopg.Error as exc:
                raise StoreUnavailable(f"PostgreSQL: cannot connect: {str(exc).strip().splitlines()[0] if str(exc) else exc}") from None
        return self._conn

    def _q(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self.round_trips += 1
        return self.conn.execute(sql, params)

    @_db
    def _migrate(self) -> None:
        """Apply the migrations this database lacks, one transaction each, under a lock across workers."""
        conn = self.conn
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATE_LOCK,))
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version(version integer PRIMARY KEY, applied double precision NOT NULL)")
            done = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
            if done > len(MIGRATIONS):
                raise StoreError(f"PostgreSQL: schema version {done} is newer than this carledger knows ({len(MIGRATIONS)})")
            for version, sql in enumerate(MIGRATIONS[done:], start=done + 1):
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute("INSERT INTO schema_version VALUES (%s, %s)", (version, time.time()))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATE_LOCK,))

    @_db
    def schema_version(self) -> int:
        return self._q("SELECT max(version) FROM schema_version").fetchone()[0]

    def _partition(self, now: float) -> None:
        """Create the month partition for `now` once (any worker; the lock makes the check-and-create atomic)."""
        name, start, end = partition_name(now)
        if name in self._partitions:
            return
        with self.conn.transaction():
            self._q("SELECT pg_advisory_xact_lock(%s)", (_PARTITION_LOCK,))
            exists = self._q("SELECT to_regclass(%s)", (name,)).fetchone()[0]
            if exists is None:
                self._q(f"CREATE TABLE {name} PARTITION OF blocks FOR VALUES FROM ({start!r}) TO ({end!r})")
        self._partitions.add(name)

    # -- vehicles ----------------------------------------------------------------------------

    @_db
    def enroll(self, vehicle: str, public_key: Any) -> VerifyKey:
        if not topics.valid_vehicle_id(vehicle):
            raise ValueError(f"vehicle id {vehicle!r}: 1-64 of [A-Za-z0-9._:-], alphanumeric first")
        key = enrolment_key(public_key)
        raw = bytes(key)
        self._q("INSERT INTO vehicles VALUES (%s, %s, %s, %s) ON CONFLICT (vehicle) DO NOTHING",
                (vehicle, raw, kid(raw), time.time()))
        row = self._q("SELECT public_key FROM vehicles WHERE vehicle = %s", (vehicle,)).fetchone()
        if bytes(row[0]) != raw:
            raise ValueError(
                f"vehicle {vehicle!r} is enrolled with another key (kid {kid(bytes(row[0])).hex()}); "
                "a vehicle's key changes only with its owner: give the handover the car wrote "
                "(carledger remote identity --handover FILE) with --handover FILE")
        return key

    @_db
    def key(self, vehicle: str) -> VerifyKey | None:
        row = self._q("SELECT public_key FROM vehicles WHERE vehicle = %s", (vehicle,)).fetchone()
        return VerifyKey(bytes(row[0])) if row else None

    @_db
    def vehicle_of_kid(self, key_id: bytes) -> tuple[str, VerifyKey] | None:
        row = self._q("SELECT vehicle, public_key FROM vehicles WHERE kid = %s", (key_id,)).fetchone()
        return (row[0], VerifyKey(bytes(row[1]))) if row else None

    @_db
    def vehicles(self) -> list[tuple[str, bytes, float]]:
        return [(v, bytes(k), t) for v, k, t in self._q("SELECT vehicle, public_key, enrolled FROM vehicles ORDER BY vehicle")]

    @_db
    def replace_key(self, vehicle: str, key: VerifyKey) -> str:
        """The vehicle's blocks move to `retired_blocks` under a new `retired` row (the previous key), in ONE
        transaction with the key's change; returns where they went.

        Every stream of the vehicle is locked as `append` locks it, so a worker's append in flight either
        commits before (and its block moves) or sees no head after (and cannot continue the old chain).
        """
        with self.conn.transaction():
            row = self._q("SELECT public_key, enrolled FROM vehicles WHERE vehicle = %s FOR UPDATE", (vehicle,)).fetchone()
            if row is None:
                raise StoreError(f"vehicle {vehicle!r} is not enrolled")
            old = bytes(row[0])
            streams = [s for (s,) in self._q("SELECT stream FROM heads WHERE vehicle = %s", (vehicle,))]
            # The same keys, in the same ascending order, as append_all: an append in flight finishes first.
            self._q("SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(k, i) ORDER BY i",
                    (sorted({chain_lock(vehicle, s) for s in streams}),))
            retired = self._q("INSERT INTO retired(vehicle, public_key, kid, enrolled, retired) VALUES (%s, %s, %s, %s, %s) "
                              "RETURNING id", (vehicle, old, kid(old), row[1], time.time())).fetchone()[0]
            self._q("INSERT INTO retired_blocks SELECT %s, stream, seq, digest, prev, t0, t1, count, sign1, message, bare, "
                    "received FROM blocks WHERE vehicle = %s", (retired, vehicle))
            for table in ("blocks", "heads", "pending", "counters"):
                self._q(f"DELETE FROM {table} WHERE vehicle = %s", (vehicle,))
            self._q("UPDATE vehicles SET public_key = %s, kid = %s, enrolled = %s WHERE vehicle = %s",
                    (bytes(key), kid(key), time.time(), vehicle))
        return f"retired_blocks (retired = {retired}, kid {kid(old).hex()})"

    @_db
    def retired(self, vehicle: str) -> list[tuple[int, bytes, float]]:
        """(retired id, previous public key, when retired) of the vehicle's retired chains, oldest first."""
        return [(int(i), bytes(k), t) for i, k, t in self._q(
            "SELECT id, public_key, retired FROM retired WHERE vehicle = %s ORDER BY id", (vehicle,))]

    def retired_chain(self, retired: int, stream: str, *, batch: int = 500) -> Iterator[tuple[int, bytes]]:
        """(seq, message) of one retired stream, by seq, in pages like `chain`."""
        last = -1
        while True:
            rows = self._retired_page(retired, stream, last, batch)
            yield from rows
            if len(rows) < batch:
                return
            last = rows[-1][0]

    @_db
    def _retired_page(self, retired: int, stream: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        return [(int(q), bytes(m)) for q, m in self._q(
            "SELECT seq, message FROM retired_blocks WHERE retired = %s AND stream = %s AND seq > %s ORDER BY seq LIMIT %s",
            (retired, stream, after, limit))]

    # -- chains ------------------------------------------------------------------------------

    @_db
    def stream_head(self, vehicle: str, stream: str) -> tuple[int, bytes] | None:
        row = self._q("SELECT seq, digest FROM heads WHERE vehicle = %s AND stream = %s", (vehicle, stream)).fetchone()
        return (int(row[0]), bytes(row[1])) if row else None

    @_db
    def stored(self, vehicle: str, stream: str, seq: int) -> tuple[bytes, bytes, bool] | None:
        row = self._q("SELECT digest, sign1, bare FROM blocks WHERE vehicle = %s AND stream = %s AND seq = %s LIMIT 1",
                      (vehicle, stream, seq)).fetchone()
        return (bytes(row[0]), bytes(row[1]), not row[2]) if row else None

    @_db
    def append(self, vehicle: str, blocks: Sequence[SealedBlock], now: float) -> None:
        if blocks and self._write({vehicle: blocks}, now, counted=False)[0]:
            raise StoreError(f"{vehicle}: the blocks do not continue the stored heads (another collector moved them)")

    @_db
    def append_all(self, batches: Mapping[str, Sequence[SealedBlock]], now: float) -> tuple[set[str], int]:
        return self._write({v: b for v, b in batches.items() if b}, now, counted=True)

    def _write(self, batches: Mapping[str, Sequence[SealedBlock]], now: float, *, counted: bool) -> tuple[set[str], int]:
        """Store the batches in ONE transaction, each chain locked for it alone; the vehicles whose blocks do not
        continue their heads are left out and returned, with the number of blocks found already stored.

        `counted` (append_all): also count the blocks and release held ones;
        and a stream's blocks up to a head another collector moved are
        dropped as already stored when the batch's block at that head's seq
        has the head's digest (the blocks before it link to it by digest, so
        they are the stored ones too): the common race of two workers linking
        the same held blocks costs no round trip.
        """
        if not batches:
            return set(), 0
        self._partition(now)
        chains = sorted({(v, b.stream) for v, blocks in batches.items() for b in blocks})
        conn = self.conn
        failed: set[str] = set()
        with conn.pipeline(), conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(k) FROM unnest(%b::bigint[]) WITH ORDINALITY AS t(k, i) ORDER BY i",
                         (int8_array(sorted({chain_lock(v, s) for v, s in chains})),))
            cur = conn.execute(
                "SELECT h.vehicle, h.stream, h.seq, h.digest, h.first_seq, h.blocks, h.records, h.frontier FROM heads h "
                "JOIN unnest(%b::text[], %b::text[]) AS t(v, s) ON h.vehicle = t.v AND h.stream = t.s",
                (text_array([v for v, _ in chains]), text_array([s for _, s in chains])))
            self.round_trips += 1
            heads = {(v, s): [int(q), bytes(d), int(f), int(n), int(r), None if t is None else bytes(t)]
                     for v, s, q, d, f, n, r, t in cur.fetchall()}
            rows: list[tuple] = []
            roots: dict[tuple[str, str], tuple[int, bytes]] = {}
            skipped = 0
            for vehicle, blocks in batches.items():
                mine = {b.stream: heads.get((vehicle, b.stream)) for b in blocks}
                mine = {s: (list(h) if h else None) for s, h in mine.items()}
                if counted:
                    stored = [b for b in blocks if mine[b.stream] is not None and b.seq <= mine[b.stream][0]]
                    if stored:
                        if any(not any(b.stream == s and b.seq == h[0] and b.digest == h[1] for b in stored)
                               for s, h in mine.items() if h is not None and any(b.stream == s for b in stored)):
                            failed.add(vehicle)
                            continue
                        skipped += len(stored)
                        blocks = [b for b in blocks if b not in stored]
                out = []
                for b in blocks:
                    head = mine[b.stream]
                    seq, digest = (head[0], head[1]) if head else (-1, ZERO_DIGEST)
                    if b.seq != seq + 1 or b.header.prev != digest:
                        failed.add(vehicle)
                        break
                    if head is None:
                        head = mine[b.stream] = [b.seq, b.digest, b.seq, 0, 0, b""]
                    elif head[5] is None:  # a chain stored before migration 2: its frontier, once
                        head[5] = self._frontier(vehicle, b.stream, head[0] + 1)
                    head[5] = merkle.frontier_push(head[5], b.seq, merkle.leaf_hash(b.sign1))
                    head[0], head[1], head[3] = b.seq, b.digest, head[3] + 1
                    head[4] += 0 if b.bare else b.header.count
                    root = merkle.frontier_root(head[5])
                    roots[(vehicle, b.stream)] = (b.seq + 1, root)
                    out.append((vehicle, b, root))
                if vehicle in failed:
                    continue
                rows += out
                heads.update({(vehicle, s): h for s, h in mine.items()})
            done = [(v, s) for v, s in chains if v not in failed]
            if rows:
                headers = [b.header for _, b, _ in rows]
                conn.execute(
                    "INSERT INTO blocks(vehicle, stream, seq, digest, prev, t0, t1, count, sign1, message, bare, root, received) "
                    "SELECT *, %s FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bytea[], %b::bytea[], %b::bigint[], "
                    "%b::bigint[], %b::integer[], %b::bytea[], %b::bytea[], %b::boolean[], %b::bytea[])",
                    (now, text_array([v for v, _, _ in rows]), text_array([h.stream for h in headers]),
                     int8_array([h.seq for h in headers]), bytea_array([b.digest for _, b, _ in rows]),
                     bytea_array([h.prev for h in headers]), int8_array([h.t0 for h in headers]),
                     int8_array([h.t1 for h in headers]), int4_array([h.count for h in headers]),
                     bytea_array([b.sign1 for _, b, _ in rows]), bytea_array([b.message() for _, b, _ in rows]),
                     bool_array([b.bare for _, b, _ in rows]), bytea_array([root for _, _, root in rows])))
                h = [heads[c] for c in done]
                conn.execute(
                    "INSERT INTO heads(vehicle, stream, seq, digest, first_seq, blocks, records, frontier) "
                    "SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bytea[], %b::bigint[], %b::bigint[], "
                    "%b::bigint[], %b::bytea[]) ON CONFLICT (vehicle, stream) DO UPDATE SET seq = excluded.seq, "
                    "digest = excluded.digest, blocks = excluded.blocks, records = excluded.records, "
                    "frontier = excluded.frontier",
                    (text_array([v for v, _ in done]), text_array([s for _, s in done]), int8_array([x[0] for x in h]),
                     bytea_array([x[1] for x in h]), int8_array([x[2] for x in h]), int8_array([x[3] for x in h]),
                     int8_array([x[4] for x in h]), bytea_array([x[5] for x in h])))
                if counted:
                    n: dict[tuple[str, str], int] = {}
                    for v, b, _ in rows:
                        n[(v, b.stream)] = n.get((v, b.stream), 0) + 1
                    conn.execute(
                        "INSERT INTO counters(vehicle, stream, accepted, duplicates, last) "
                        "SELECT v, s, n, 0, %s FROM unnest(%b::text[], %b::text[], %b::bigint[]) AS t(v, s, n) "
                        "ON CONFLICT (vehicle, stream) DO UPDATE SET accepted = counters.accepted + excluded.accepted, "
                        "last = excluded.last", (now, text_array([v for v, _ in n]), text_array([s for _, s in n]),
                                                 int8_array(list(n.values()))))
                    conn.execute(
                        "DELETE FROM pending p USING unnest(%b::text[], %b::text[], %b::bigint[]) AS t(v, s, q) "
                        "WHERE p.vehicle = t.v AND p.stream = t.s AND p.seq <= t.q",
                        (text_array([v for v, _ in done]), text_array([s for _, s in done]),
                         int8_array([heads[c][0] for c in done])))
        self.round_trips += 1
        self._roots = {c: r for c, r in roots.items() if c[0] not in failed}
        return failed, skipped

    def _frontier(self, vehicle: str, stream: str, size: int) -> bytes:
        """The frontier of a chain stored without one (before migration 2), from its blocks: O(n), once per chain."""
        frontier = b""
        for n, (seq, sign1) in enumerate(self._q(
                "SELECT seq, sign1 FROM blocks WHERE vehicle = %s AND stream = %s AND seq < %s ORDER BY seq",
                (vehicle, stream, size)).fetchall()):
            if seq != n:
                raise StoreError(f"{vehicle} {stream}: block {n} is not stored; no tree of {size} blocks")
            frontier = merkle.frontier_push(frontier, n, merkle.leaf_hash(bytes(sign1)))
        return frontier

    @_db
    def tree_root(self, vehicle: str, stream: str, size: int) -> bytes:
        """The root stored with the chain's block size - 1 (the last flush's, from memory); derived when absent."""
        cached = self._roots.get((vehicle, stream))
        if cached is not None and cached[0] == size:
            return cached[1]
        row = self._q("SELECT root FROM blocks WHERE vehicle = %s AND stream = %s AND seq = %s LIMIT 1",
                      (vehicle, stream, size - 1)).fetchone() if size > 0 else None
        if row is not None and row[0] is not None:
            return bytes(row[0])
        return super().tree_root(vehicle, stream, size)

    @_db
    def prefetch(self, vehicles: Sequence[str], chains: Sequence[tuple[str, str]]) -> Prefetch:
        """Keys, heads, and the held blocks of these chains, in one pipelined round trip."""
        conn = self.conn
        vs, ss = text_array([v for v, _ in chains]), text_array([s for _, s in chains])
        with conn.pipeline():
            keys = conn.execute("SELECT vehicle, public_key FROM vehicles WHERE vehicle = ANY(%b::text[])", (text_array(list(vehicles)),))
            heads = conn.execute("SELECT h.vehicle, h.stream, h.seq, h.digest FROM heads h JOIN unnest(%b::text[], "
                                 "%b::text[]) AS t(v, s) ON h.vehicle = t.v AND h.stream = t.s", (vs, ss))
            held = conn.execute("SELECT p.vehicle, p.stream, p.seq, p.message FROM pending p JOIN unnest(%b::text[], "
                                "%b::text[]) AS t(v, s) ON p.vehicle = t.v AND p.stream = t.s ORDER BY 1, 2, 3", (vs, ss))
            self.round_trips += 1
            out = Prefetch({v: VerifyKey(bytes(k)) for v, k in keys.fetchall()})
            found = {(v, s): (int(q), bytes(d)) for v, s, q, d in heads.fetchall()}
            out.heads = {c: found.get(c) for c in chains if c[0] in out.keys}
            for v, s, q, m in held.fetchall():
                out.blocks.setdefault((v, s), []).append((int(q), bytes(m)))
            out.held = set(out.blocks)
        return out

    @_db
    def streams(self, vehicle: str) -> dict[str, dict]:
        return {s: {"blocks": n, "records": r, "first_seq": f, "head_seq": q, "head": bytes(d).hex()}
                for s, q, d, f, n, r in self._q(
                    "SELECT stream, seq, digest, first_seq, blocks, records FROM heads WHERE vehicle = %s ORDER BY stream",
                    (vehicle,))}

    def chain(self, vehicle: str, stream: str, *, batch: int = 500) -> Iterator[tuple[int, bytes]]:
        """(seq, message) of a stored stream, by seq, fetched `batch` rows at a time (constant memory)."""
        last = -1
        while True:
            rows = self._page(vehicle, stream, last, batch)
            yield from rows
            if len(rows) < batch:
                return
            last = rows[-1][0]

    @_db
    def _page(self, vehicle: str, stream: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        return [(int(q), bytes(m)) for q, m in self._q(
            "SELECT seq, message FROM blocks WHERE vehicle = %s AND stream = %s AND seq > %s ORDER BY seq LIMIT %s",
            (vehicle, stream, after, limit))]

    def blocks(self, vehicle: str | None = None, stream: str | None = None, t_from: int | None = None,
               t_to: int | None = None, *, batch: int = 500) -> Iterator[tuple[str, str, int, bytes]]:
        """Keyset pages on (vehicle, stream, seq), the blocks_chain index's order: no server cursor to hold open."""
        after = ("", "", -1)
        while True:
            rows = self._blocks_page(vehicle, stream, t_from, t_to, after, batch)
            yield from rows
            if len(rows) < batch:
                return
            after = rows[-1][:3]

    @_db
    def _blocks_page(self, vehicle: str | None, stream: str | None, t_from: int | None, t_to: int | None,
                     after: tuple[str, str, int], limit: int) -> list[tuple[str, str, int, bytes]]:
        where, args = ["(vehicle, stream, seq) > (%s, %s, %s)"], list(after)
        for sql, value in (("vehicle = %s", vehicle), ("stream = %s", stream), ("t1 >= %s", t_from), ("t0 <= %s", t_to)):
            if value is not None:
                where.append(sql)
                args.append(value)
        return [(v, s, int(q), bytes(m)) for v, s, q, m in self._q(
            f"SELECT vehicle, stream, seq, message FROM blocks WHERE {' AND '.join(where)} "
            "ORDER BY vehicle, stream, seq LIMIT %s", (*args, limit))]

    @_db
    def block_count(self, vehicle: str, stream: str) -> tuple[int, int]:
        """(rows, distinct seqs) stored for a stream: equal when every block is stored once."""
        row = self._q("SELECT count(*), count(DISTINCT seq) FROM blocks WHERE vehicle = %s AND stream = %s",
                      (vehicle, stream)).fetchone()
        return int(row[0]), int(row[1])

    # -- blocks waiting for a gap ------------------------------------------------------------

    @_db
    def pending(self, vehicle: str, stream: str, seq: int) -> tuple[bytes, bytes] | None:
        row = self._q("SELECT digest, message FROM pending WHERE vehicle = %s AND stream = %s AND seq = %s",
                      (vehicle, stream, seq)).fetchone()
        return (bytes(row[0]), bytes(row[1])) if row else None

    @_db
    def pending_after(self, vehicle: str, stream: str, seq: int) -> list[tuple[int, bytes]]:
        return [(int(q), bytes(m)) for q, m in self._q(
            "SELECT seq, message FROM pending WHERE vehicle = %s AND stream = %s AND seq > %s ORDER BY seq",
            (vehicle, stream, seq))]

    @_db
    def replace_pending(self, vehicle: str, stream: str, seq: int, message: bytes) -> None:
        self._q("UPDATE pending SET message = %s WHERE vehicle = %s AND stream = %s AND seq = %s",
                (message, vehicle, stream, seq))

    @_db
    def hold(self, vehicle: str, stream: str, seq: int, digest: bytes, message: bytes, now: float) -> bool:
        n = self._q("SELECT count(*) FROM pending WHERE vehicle = %s AND stream = %s", (vehicle, stream)).fetchone()[0]
        if n >= MAX_PENDING:
            return False
        self._q("INSERT INTO pending VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (vehicle, stream, seq, digest, message, now))
        return True

    @_db
    def release(self, vehicle: str, stream: str, upto_seq: int) -> None:
        self._q("DELETE FROM pending WHERE vehicle = %s AND stream = %s AND seq <= %s", (vehicle, stream, upto_seq))

    @_db
    def waiting(self) -> list[tuple[str, str, int, int, float, int]]:
        return [(v, s, int(lo), int(hi), t, int(n)) for v, s, lo, hi, t, n in self._q(
            "SELECT vehicle, stream, min(seq), max(seq), min(received), count(*) FROM pending GROUP BY vehicle, stream")]

    # -- evidence, problems, counters --------------------------------------------------------

    @_db
    def keep_evidence(self, vehicle: str, stream: str, seq: int, digest: bytes, message: bytes, now: float) -> bool:
        n = self._q("SELECT count(*) FROM evidence WHERE vehicle = %s AND stream = %s", (vehicle, stream)).fetchone()[0]
        if n >= MAX_EVIDENCE:
            return False
        cur = self._q("INSERT INTO evidence(vehicle, stream, seq, digest, message, received) VALUES (%s, %s, %s, %s, %s, %s) "
                      "ON CONFLICT DO NOTHING", (vehicle, stream, seq, digest, message, now))
        return cur.rowcount > 0

    @_db
    def evidence(self, vehicle: str, stream: str, seq: int) -> list[bytes]:
        return [bytes(r[0]) for r in self._q(
            "SELECT message FROM evidence WHERE vehicle = %s AND stream = %s AND seq = %s ORDER BY id", (vehicle, stream, seq))]

    @_db
    def problem(self, vehicle: str | None, stream: str | None, seq: int | None, kind: str, detail: str, now: float) -> None:
        key = (vehicle or "", stream or "", -1 if seq is None else seq, kind)
        n = self._q("SELECT count(*) FROM problems").fetchone()[0]
        if n >= MAX_PROBLEMS and not self._q("SELECT 1 FROM problems WHERE vehicle = %s AND stream = %s AND seq = %s "
                                             "AND kind = %s", key).fetchone():
            key = ("", "", -1, kind)  # a flood: count it under the kind alone
        self._q("INSERT INTO problems(vehicle, stream, seq, kind, detail, first, last, count) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, 1) ON CONFLICT (vehicle, stream, seq, kind) DO UPDATE SET "
                "count = problems.count + 1, last = excluded.last, detail = excluded.detail",
                (*key, detail[:500], now, now))

    @_db
    def problems(self) -> Iterator[dict]:
        rows = self._q("SELECT vehicle, stream, seq, kind, detail, count, first, last FROM problems ORDER BY first, id").fetchall()
        return iter([{"vehicle": v or None, "stream": s or None, "seq": None if q < 0 else q, "kind": k, "detail": d,
                      "count": c, "first": f, "last": l} for v, s, q, k, d, c, f, l in rows])

    @_db
    def count(self, vehicle: str, stream: str, *, accepted: int = 0, duplicates: int = 0, now: float) -> None:
        self._q("INSERT INTO counters VALUES (%s, %s, %s, %s, %s) ON CONFLICT (vehicle, stream) DO UPDATE SET "
                "accepted = counters.accepted + excluded.accepted, duplicates = counters.duplicates + excluded.duplicates, "
                "last = excluded.last", (vehicle, stream, accepted, duplicates, now))

    @_db
    def counters(self) -> dict[tuple[str, str], tuple[int, int, float | None]]:
        return {(v, s): (int(a), int(d), t) for v, s, a, d, t in self._q("SELECT * FROM counters")}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
