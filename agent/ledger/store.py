"""The local SQLite store (docs/store-format.md)."""

from __future__ import annotations

import fcntl
import os
import time
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple, Sequence

from carledger.ledger import block as _block
from carledger.ledger import checkpoints as _cp
from carledger.ledger import cose
from carledger.ledger.errors import KeyFileError, MalformedBlock, StoreError, StoreLocked
from carledger.ledger.files import private_dir, private_file, repair_private
from carledger.ledger.heads import Head, check_identity, signed_heads
from carledger.ledger.identity import KeyRing, keyring
from carledger.ledger.keys import FileSigner, Signer, VerifyKey, key_path, kid, load_or_create_signing_key

__all__ = ["Store", "BlockRow", "DB_FILE", "STORE_FORMAT", "block_vid"]

DB_FILE = "ledger.sqlite"
STORE_FORMAT = 1
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BLOB);
CREATE TABLE IF NOT EXISTS streams(
  name TEXT PRIMARY KEY,
  head_seq INTEGER,
  head_digest BLOB
);
CREATE TABLE IF NOT EXISTS blocks(
  id INTEGER PRIMARY KEY,
  stream TEXT NOT NULL,
  seq INTEGER NOT NULL,
  digest BLOB NOT NULL,
  t0 INTEGER NOT NULL, t1 INTEGER NOT NULL, count INTEGER NOT NULL,
  sign1 BLOB NOT NULL,
  records BLOB,
  synced INTEGER NOT NULL DEFAULT 0,
  acked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS blocks_stream_seq ON blocks(stream, seq);
CREATE INDEX IF NOT EXISTS blocks_unacked ON blocks(stream, seq) WHERE acked = 0;
CREATE TABLE IF NOT EXISTS key_statements(pseudonym TEXT PRIMARY KEY, statement BLOB NOT NULL);
""" + _cp.SCHEMA

_COLUMNS = "id, stream, seq, digest, t0, t1, count, sign1, records, synced, acked"


class BlockRow(NamedTuple):
    """One row of `blocks`, as stored (nothing here is trusted by the verifier but sign1)."""

    id: int
    stream: str
    seq: int
    digest: bytes
    t0: int
    t1: int
    count: int
    sign1: bytes
    records: bytes | None  # CBOR array of record byte strings; None once dropped
    synced: int
    acked: int


class Store:
    """The ledger database and, for the writer, the vehicle key.

    Use `Store.open` in the agent (creates what is missing) and
    `Store.open_readonly` in readers (verify, log): several processes may read
    while the agent writes (WAL).
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, *, readonly: bool):
        self.path = path
        self.db_path = path / DB_FILE
        self.readonly = readonly
        self._conn = conn
        self._lock = threading.RLock()
        self.signing_key = None  # the PyNaCl key when the vehicle key is a file, else None
        self.signer: Signer | None = None  # what the ledger signs through (keys.Signer); None when read-only
        self.verify_key = None
        self.marks_only = False  # open_marks: delivery marks only
        self._signed_heads: dict[str, Head] | None = None  # the writer's heads (Store.open): from signed blocks
        self._checkpointed: dict[str, int] = {}  # the writer's: size of each stream's last signed checkpoint
        self._held_since = 0.0  # monotonic time the open transaction of held appends began
        self.refusal: str | None = None  # the writer's: why it refuses to write (checkpoints.py), None when it may
        meta = self.meta()
        self.vehicle_id: str | None = _text(meta.get("vehicle"))
        pk = meta.get("public_key")
        self.public_key: bytes | None = bytes(pk) if isinstance(pk, (bytes, bytearray)) else None

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: str | os.PathLike, vehicle_id: str | None = None, create: bool = True, *, signer: Signer | None = None
    ) -> "Store":
        """Open (and with `create`, initialise) the store at directory `path` for writing.

        Creates the directory, the signing key (unless `signer`, a key kept
        elsewhere, is given) and the schema. The vehicle id
        comes from the store; `vehicle_id` sets it on a new store and must match
        an existing one. A new store without a vehicle id gets the key id (hex).
        """
        path = Path(path)
        if not create and not (path / DB_FILE).exists():
            raise StoreError(f"{path}: no carledger store here ({DB_FILE} missing)")
        if vehicle_id is not None and (type(vehicle_id) is not str or not vehicle_id):
            raise StoreError("vehicle id must be non-empty text")
        try:
            private_dir(path)
        except OSError as exc:
            raise StoreError(f"{path}: cannot create the store: {exc}") from None
        writer_lock = _take_writer_lock(path)
        try:
            store = cls._open_locked(path, vehicle_id, signer)
        except BaseException:
            writer_lock.close()
            raise
        store._writer_lock = writer_lock
        return store

    @classmethod
    def _open_locked(cls, path: Path, vehicle_id: str | None, signer: Signer | None) -> "Store":
        if signer is None:
            _refuse_a_new_key_for_a_keyed_store(path)
        try:
            signer = signer or FileSigner(load_or_create_signing_key(path))
        except KeyFileError as exc:
            raise StoreError(str(exc)) from None
        except OSError as exc:
            raise StoreError(f"{path}: cannot create the store: {exc}") from None
        try:
            _private_db(path)
        except OSError as exc:
            raise StoreError(f"{path}: cannot create the store: {exc}") from None
        conn = _connect(path / DB_FILE, readonly=False)
        with _closing_on_error(conn, path):
            _durable_wal(conn, path)
            pub = bytes(signer.public_key)
            with _transaction(conn):
                _create_schema(conn)
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                fmt = meta.get("format")
                if fmt is not None and fmt != STORE_FORMAT:
                    raise StoreError(f"{path}: store format {fmt!r}, this carledger reads {STORE_FORMAT}")
                have_vid = _text(meta.get("vehicle"))
                if "vehicle" in meta and have_vid is None:
                    raise StoreError(f"{path / DB_FILE}: meta.vehicle {meta['vehicle']!r} is not UTF-8 text; "
                                     f"run `carledger verify {path}`")
                if have_vid is not None and vehicle_id is not None and have_vid != vehicle_id:
                    raise StoreError(
                        f"{path}: this store belongs to vehicle {have_vid!r}, not {vehicle_id!r}"
                    )
                have_pk = meta.get("public_key")
                if have_pk is not None and have_pk != pub:
                    have_kid = kid(have_pk).hex() if isinstance(have_pk, bytes) and len(have_pk) == 32 else "?"
                    raise StoreError(
                        f"{path}: the vehicle key does not match the public key recorded in the store "
                        f"(kid {kid(pub).hex()} vs {have_kid}); "
                        "the chain cannot be continued with another key"
                    )
                lost = [k for k in ("format", "vehicle", "public_key") if k not in meta]
                if lost and conn.execute("SELECT 1 FROM blocks LIMIT 1").fetchone():
                    raise StoreError(f"{path / DB_FILE}: meta.{lost[0]} is missing, yet the store holds blocks; "
                                     f"run `carledger verify {path}`")
                if fmt is None:
                    conn.execute("INSERT OR REPLACE INTO meta VALUES('format', ?)", (STORE_FORMAT,))
                vehicle = have_vid or vehicle_id or kid(pub).hex()
                if have_vid is None:
                    conn.execute("INSERT OR REPLACE INTO meta VALUES('vehicle', ?)", (vehicle,))
                if have_pk is None:
                    conn.execute("INSERT OR REPLACE INTO meta VALUES('public_key', ?)", (pub,))
                ring = keyring(conn, VerifyKey(pub))
                heads = signed_heads(conn, ring, path / DB_FILE)
                check_identity(vehicle, heads, path / DB_FILE)
                checkpointed, refusal = _checkpoint_state(conn, ring, heads, path / DB_FILE)
        store = cls(path, conn, readonly=False)
        store._signed_heads = heads
        store._checkpointed = checkpointed
        store.refusal = refusal
        store.signer = signer
        store.signing_key = signer.signing_key if isinstance(signer, FileSigner) else None
        store.verify_key = VerifyKey(pub)
        return store

    @classmethod
    def open_readonly(cls, path: str | os.PathLike) -> "Store":
        """Open an existing store for reading; StoreError with the reason when it is not one."""
        return cls._open_existing(path, readonly=True)

    @classmethod
    def open_marks(cls, path: str | os.PathLike) -> "Store":
        """A second connection for the sync thread: reads blocks, writes only their delivery marks.

        It takes no writer lock (the pipeline holds it): `mark_synced` and
        `mark_acked` work, `append` and `drop_records` refuse. SQLite (WAL,
        busy timeout) serialises its short flag updates with the writer's seals.
        """
        store = cls._open_existing(path, readonly=False)
        store.marks_only = True
        return store

    @classmethod
    def open_replica(cls, path: str | os.PathLike, vehicle_id: str, public_key: bytes) -> "Store":
        """A collector's copy of one vehicle's chains: created on first use, no signing key, no lock.

        Several collector processes may append to one replica: `append` checks
        continuity inside its BEGIN IMMEDIATE transaction, so they cannot fork
        it. `meta.public_key` is the enrolled key, which `carledger verify` pins.
        """
        path = Path(path)
        if type(public_key) is not bytes or len(public_key) != 32:
            raise StoreError("a replica needs the vehicle's raw 32-byte public key")
        try:
            private_dir(path)
            _private_db(path)
            conn = _connect(path / DB_FILE, readonly=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{path}: cannot create the replica: {exc}") from None
        with _closing_on_error(conn, path):
            _durable_wal(conn, path)
            with _transaction(conn):
                _create_schema(conn)
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                if meta.get("public_key") is not None and bytes(meta["public_key"]) != public_key:
                    raise StoreError(f"{path}: this replica holds another key than the one enrolled for {vehicle_id!r}")
                if meta.get("vehicle") is not None and _text(meta["vehicle"]) != vehicle_id:
                    raise StoreError(f"{path}: this replica belongs to vehicle {_text(meta['vehicle'])!r}")
                for key, value in (("format", STORE_FORMAT), ("vehicle", vehicle_id), ("public_key", public_key)):
                    conn.execute("INSERT OR IGNORE INTO meta VALUES(?, ?)", (key, value))
        store = cls(path, conn, readonly=False)
        store.verify_key = VerifyKey(public_key)
        return store

    @classmethod
    def _open_existing(cls, path: str | os.PathLike, *, readonly: bool) -> "Store":
        path = Path(path)
        if not path.exists():
            raise StoreError(f"{path}: no such directory")
        if not path.is_dir():
            raise StoreError(f"{path}: not a directory (a store is a directory holding {DB_FILE})")
        db = path / DB_FILE
        if not db.is_file():
            raise StoreError(f"{path}: not a carledger store ({DB_FILE} missing)")
        try:
            conn = _connect(db, readonly=readonly)
        except sqlite3.Error as exc:
            raise StoreError(f"{db}: cannot open: {exc}") from None
        with _closing_on_error(conn, path, "not a readable SQLite database"):
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            missing = {"meta", "streams", "blocks"} - tables
            if missing:
                raise StoreError(f"{db}: not a carledger store (no table {sorted(missing)[0]!r})")
            fmt = conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
            if fmt is None:
                damaged = [k for (k,) in conn.execute("SELECT key FROM meta") if not isinstance(k, str)]
                why = f"; meta holds a key that is not UTF-8 text: {damaged[0]!r}" if damaged else ""
                raise StoreError(f"{db}: not a carledger store (no format in meta{why})")
            if fmt[0] != STORE_FORMAT:
                raise StoreError(f"{db}: store format {fmt[0]!r}, this carledger reads {STORE_FORMAT}")
        store = cls(path, conn, readonly=readonly)
        if store.public_key is not None and len(store.public_key) == 32:
            store.verify_key = VerifyKey(store.public_key)  # the recorded key: what the store claims, not proof
        return store

    # -- reading -----------------------------------------------------------------------------

    def meta(self) -> dict:
        with self._lock:
            return dict(self._conn.execute("SELECT key, value FROM meta").fetchall())

    def stream_head(self, name: str) -> tuple[int, bytes] | None:
        """(seq, digest) of the stream's newest sealed block, None before its first."""
        with self._lock:
            row = self._conn.execute(
                "SELECT head_seq, head_digest FROM streams WHERE name = ?", (name,)
            ).fetchone()
        if row is None or row[0] is None:
            return None
        return int(row[0]), bytes(row[1])

    def signed_head(self, name: str) -> Head | None:
        """The writer's head of `name` (seq, digest, vid): from its last signed block, checked when the
        store was opened (`Store.open`) and moved by `append`; None before the stream's first block."""
        if self._signed_heads is None:
            raise StoreError(f"{self.path}: heads are the writer's (Store.open)")
        return self._signed_heads.get(name)

    def heads(self) -> dict[str, tuple[int | None, bytes | None]]:
        """Every row of `streams` as stored: name -> (head_seq, head_digest)."""
        with self._lock:
            rows = self._conn.execute("SELECT name, head_seq, head_digest FROM streams").fetchall()
        return {name: (seq, digest) for name, seq, digest in rows}

    def streams(self) -> list[str]:
        """Names of every stream in the streams table or with blocks, sorted."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT name FROM streams UNION SELECT DISTINCT stream FROM blocks"
            ).fetchall()
        return sorted({r[0] for r in rows if isinstance(r[0], str)})

    def block_count(self, stream: str | None = None) -> int:
        with self._lock:
            if stream is None:
                return self._conn.execute("SELECT count(*) FROM blocks").fetchone()[0]
            return self._conn.execute("SELECT count(*) FROM blocks WHERE stream = ?", (stream,)).fetchone()[0]

    def iter_blocks(
        self,
        stream: str | None = None,
        *,
        after_id: int | None = None,
        unacked: bool = False,
        batch: int = 256,
    ) -> Iterator[BlockRow]:
        """Rows in storage order (id), fetched in batches: never the whole table in memory."""
        where, args = [], []
        if stream is not None:
            where.append("stream = ?")
            args.append(stream)
        if unacked:
            where.append("acked = 0")
        last = after_id if after_id is not None else -(1 << 63)
        while True:
            cond = " AND ".join(where + ["id > ?"])
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT {_COLUMNS} FROM blocks WHERE {cond} ORDER BY id LIMIT ?", (*args, last, batch)
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield BlockRow(*row)
            last = rows[-1][0]

    def summaries(self) -> list[tuple]:
        """Per stream, from the row columns (an index, not verified): (stream, blocks, records,
        first_seq, last_seq, t0, t1, blocks with records dropped, synced, acked)."""
        with self._lock:
            return self._conn.execute(
                "SELECT stream, count(*), sum(count), min(seq), max(seq), min(t0), max(t1), "
                "sum(records IS NULL), sum(synced), sum(acked) FROM blocks GROUP BY stream ORDER BY stream"
            ).fetchall()

    def get_block(self, block_id: int) -> BlockRow | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM blocks WHERE id = ?", (block_id,)).fetchone()
        return BlockRow(*row) if row else None

    def records(self, block_row: BlockRow) -> list[bytes]:
        """The row's records ([] when they were dropped by retention: check `row.records is None`)."""
        if block_row.records is None:
            return []
        return _block.decode_records(block_row.records)

    def message(self, block_row: BlockRow, include_records: bool = True) -> bytes:
        """The COSE message to publish for a row (with its records when it still has them)."""
        if include_records and block_row.records is not None:
            return _block.with_records(block_row.sign1, self.records(block_row))
        return bytes(block_row.sign1)

    def stream_vids(self) -> dict[str, str]:
        """Per stream, the vehicle id its last block carries, as stored (routing only: nothing is verified here)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT b.stream, b.sign1 FROM streams s JOIN blocks b ON b.stream = s.name AND b.seq = s.head_seq"
            ).fetchall()
        out = {}
        for name, sign1 in rows:
            vid = block_vid(sign1)
            if isinstance(name, str) and vid is not None:
                out[name] = vid
        return out

    def keyring(self, vehicle_key: VerifyKey | None = None) -> KeyRing:
        """Which key verifies which block: `vehicle_key` (default: the store's) and the statements it signed."""
        key = vehicle_key or self.verify_key
        if key is None:
            raise StoreError(f"{self.path}: the store records no public key")
        with self._lock:
            return keyring(self._conn, key)

    def add_key_statement(self, pseudonym: str, statement: bytes) -> None:
        """File a key statement (identity.make_statement); a pseudonym keeps its first one."""
        self._writable()
        with self._write():
            self._conn.execute("INSERT OR IGNORE INTO key_statements VALUES (?, ?)", (pseudonym, statement))

    # -- writing -----------------------------------------------------------------------------

    def append(
        self, blocks: Sequence["_block.SealedBlock"], checkpoint: Mapping[str, Signer] | None = None,
        *, hold: float = 0.0,
    ) -> list[int]:
        """Insert blocks (any streams) and move their heads in ONE durable transaction.

        Each block must continue its stream's head (seq = head + 1, prev = head
        digest), else StoreError and nothing is written. Returns the row ids.
        A block received without its records (count > 0, records []) is stored
        with records NULL, as retention leaves one. Each block is added to its
        stream's log (checkpoints.py); for each stream in `checkpoint`, a
        checkpoint is signed with its signer in the same transaction (refused,
        and nothing written, when it would not extend the last one signed).

        `hold` > 0 (a fast replay of a file only, `Pipeline._seal_due`): the
        transaction may stay open for later appends until it is `hold` seconds
        old, so that one fsync covers several seal rounds. Each append is then
        a SAVEPOINT (a refused one still changes nothing); any append without
        `hold`, any other write and `close` commit what is held first. Other
        connections see a block only once it is durable, as always; a kill
        loses the held tail, a prefix remains (docs/performance.md).
        """
        self._writable()
        if not blocks:
            return []
        ids = []
        with self._lock:
            conn = self._conn
            held = conn.in_transaction  # appends held open by an earlier `hold`
            try:
                if held:
                    conn.execute("SAVEPOINT append")
                else:
                    conn.execute("BEGIN IMMEDIATE")
                    self._held_since = time.monotonic()
                self._refuse_when_forked()
                heads: dict[str, tuple[int, bytes] | None] = {}
                moved: dict[str, Head] = {}
                for blk in blocks:
                    h = blk.header
                    if not _block.valid_stream_name(h.stream):
                        raise StoreError(f"stream name {str(h.stream)[:80]!r}: not 1-64 of [A-Za-z0-9._:-], alphanumeric first")
                    if h.stream not in heads:
                        row = conn.execute(
                            "SELECT head_seq, head_digest FROM streams WHERE name = ?", (h.stream,)
                        ).fetchone()
                        heads[h.stream] = None if row is None or row[0] is None else (row[0], bytes(row[1]))
                    head = heads[h.stream]
                    want_seq, want_prev = (0, _block.ZERO_DIGEST) if head is None else (head[0] + 1, head[1])
                    if h.seq != want_seq or h.prev != want_prev:
                        raise StoreError(
                            f"stream {h.stream!r}: block seq {h.seq} does not continue the head "
                            f"(expected seq {want_seq} linking to {want_prev.hex()[:16]}…)"
                        )
                    cur = conn.execute(
                        "INSERT INTO blocks(stream, seq, digest, t0, t1, count, sign1, records) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            h.stream,
                            h.seq,
                            blk.digest,
                            h.t0,
                            h.t1,
                            h.count,
                            blk.sign1,
                            _block.encode_records(blk.records) if blk.records or not h.count else None,
                        ),
                    )
                    ids.append(cur.lastrowid)
                    _cp.ensure_tree(conn, h.stream, h.seq, self.db_path)
                    _cp.append_leaf(conn, h.stream, h.seq, blk.sign1, self.db_path)
                    heads[h.stream] = (h.seq, blk.digest)
                    moved[h.stream] = Head(h.seq, blk.digest, h.vid)
                for name, head in heads.items():
                    conn.execute(
                        "INSERT INTO streams(name, head_seq, head_digest) VALUES (?, ?, ?) "
                        "ON CONFLICT(name) DO UPDATE SET head_seq = excluded.head_seq, "
                        "head_digest = excluded.head_digest",
                        (name, head[0], head[1]),
                    )
                signed = {
                    name: _cp.sign_checkpoint(conn, name, heads[name][0] + 1, signer, self.db_path)  # type: ignore[index]
                    for name, signer in (checkpoint or {}).items() if heads.get(name) is not None
                }
                if held:
                    conn.execute("RELEASE append")
            except BaseException:
                if conn.in_transaction:
                    if held:
                        conn.execute("ROLLBACK TO append")
                        conn.execute("RELEASE append")
                    else:
                        conn.execute("ROLLBACK")
                raise
            if hold <= 0 or time.monotonic() - self._held_since >= hold:
                self._commit_held()
            if self._signed_heads is not None:
                self._signed_heads.update(moved)
            self._checkpointed.update({name: cp.checkpoint.size for name, cp in signed.items() if cp is not None})
        return ids

    # -- checkpoints: each stream is a log (checkpoints.py, docs/transparency.md) -------------

    def _refuse_when_forked(self) -> None:
        """Inside a write transaction: ForkedStore when the store knows it must not write (any connection's evidence)."""
        why = self.refusal or _cp.refusal(self._conn, self.db_path)
        if why is not None:
            self.refusal = why
            raise _cp.ForkedStore(why)

    def checkpoint_size(self, stream: str) -> int:
        """Size of the last checkpoint the writer signed for `stream` (0: none)."""
        return self._checkpointed.get(stream, 0)

    def sign_checkpoints(self, signers: Mapping[str, Signer]) -> list[_cp.Signed]:
        """Sign a checkpoint of each given stream that grew since its last one, in one transaction."""
        self._writable()
        with self._write() as conn:
            self._refuse_when_forked()
            out = []
            for name, signer in signers.items():
                head = self.signed_head(name)
                if head is None:
                    continue
                _cp.ensure_tree(conn, name, head.seq + 1, self.db_path)
                signed = _cp.sign_checkpoint(conn, name, head.seq + 1, signer, self.db_path)
                if signed is not None:
                    out.append((name, signed))
        self._checkpointed.update({name: s.checkpoint.size for name, s in out})
        return [s for _, s in out]

    def stream_key(self, stream: str) -> bytes | None:
        """The public key of the stream's log (its newest block's key, through the key ring)."""
        with self._lock:
            return _cp.stream_key(self._conn, self.keyring(), stream)

    def latest_checkpoint(self, stream: str) -> _cp.Signed | None:
        """The newest checkpoint signed for `stream`, verified with its key; StoreError when it does not verify."""
        key = self.stream_key(stream)
        if key is None:
            return None
        with self._lock:
            return _cp.last_checkpoint(self._conn, stream, key, self.db_path)

    def consistency_proof(self, stream: str, old: int, new: int) -> list[bytes]:
        """RFC 6962 consistency proof from the stream's first `old` blocks to its first `new` (stored hashes)."""
        with self._lock:
            return _cp.consistency_proof(self._conn, stream, old, new, self.db_path)

    def checkpoint_note(self, row: int) -> bytes | None:
        """The signed note of `checkpoints` row `row`, as stored (open it before trusting it)."""
        with self._lock:
            got = self._conn.execute("SELECT note FROM checkpoints WHERE id = ?", (row,)).fetchone()
        return bytes(got[0]) if got else None

    def add_cosignature(self, checkpoint_row: int, witness: str, line: str) -> None:
        """Keep a witness's cosignature line of a checkpoint (the caller verified it; readers verify it again)."""
        self._writable(marks=True)
        with self._write():
            self._conn.execute("INSERT OR IGNORE INTO cosignatures(checkpoint, witness, line, received) "
                               "VALUES (?, ?, ?, strftime('%s', 'now'))", (checkpoint_row, witness, line))

    def cosigned(self, witness: str, stream: str) -> list[tuple[int, int, str]]:
        """(checkpoint row, its size column, line) of every cosignature `witness` gave on `stream`, newest first
        (as stored: a hint of what the witness holds, never trusted as proof)."""
        with self._lock:
            return self._conn.execute(
                "SELECT c.id, c.size, s.line FROM cosignatures s JOIN checkpoints c ON c.id = s.checkpoint "
                "WHERE s.witness = ? AND c.stream = ? ORDER BY c.id DESC", (witness, stream)).fetchall()

    def cosignatures_of(self, checkpoint_row: int) -> list[str]:
        """The cosignature lines kept for `checkpoints` row `checkpoint_row`, as stored (verify them before trusting)."""
        with self._lock:
            return [r[0] for r in self._conn.execute(
                "SELECT line FROM cosignatures WHERE checkpoint = ? ORDER BY id", (checkpoint_row,))]

    def hash_reader(self, stream: str):
        """The stream's log's stored hashes (tlog.HashReader): proofs against a checkpoint are checked by their reader."""
        def read(indexes):
            with self._lock:
                return _cp.reader(self._conn, stream, self.db_path)(indexes)

        return read

    def tree_root(self, stream: str, size: int, *, derived: bool = False) -> bytes:
        """Root of the stream's first `size` blocks: from the stored hashes, or `derived` again from the blocks."""
        with self._lock:
            if derived:
                return _cp.derived_root(self._conn, stream, size, self.db_path)
            return _cp.tree_root(self._conn, stream, size, self.db_path)

    def add_receipt(self, stream: str, recipient: str, text: str, size: int, line: str, stated: int) -> bool:
        """Keep a recipient's receipt (its cosignature `line` of the checkpoint `text`; the caller verified it).
        False when one of that size was kept already."""
        self._writable(marks=True)
        with self._write():
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO receipts(stream, recipient, size, text, line, stated, received) "
                "VALUES (?, ?, ?, ?, ?, ?, strftime('%s', 'now'))", (stream, recipient, size, text, line, stated))
            return cur.rowcount == 1

    def receipts(self) -> list[tuple[int, str, str, int, str, str, int, int]]:
        """(id, stream, recipient, size, text, line, stated time, received time) of every receipt, as stored
        (verify before trusting: `carledger receipts verify`)."""
        with self._lock:
            return self._conn.execute("SELECT id, stream, recipient, size, text, line, stated, received FROM receipts "
                                      "ORDER BY stream, recipient, size").fetchall()

    def forks(self) -> list[tuple[str, str, bytes, str, int]]:
        """(stream, source, signed note, detail, received) of each checkpoint kept as evidence, as stored
        (open the note with the stream's key before trusting it); [] for a store older than checkpoints."""
        with self._lock:
            try:
                rows = self._conn.execute("SELECT stream, source, note, detail, received FROM forks ORDER BY id").fetchall()
            except sqlite3.OperationalError:
                return []
        return [(s, src, bytes(n), d, r) for s, src, n, d, r in rows]

    def check_signed_checkpoint(self, stream: str, signed: bytes, source: str) -> "_cp.Checkpoint":
        """A checkpoint of `stream` learnt from `source` (witness, collector): ForkedStore, and kept as
        evidence, when the store does not hold its tree (checkpoints.check_signed_checkpoint)."""
        self._writable(marks=True)
        with self._lock:
            try:
                return _cp.check_signed_checkpoint(self._conn, self.keyring(), stream, signed, source, self.db_path)
            except _cp.ForkedStore as exc:
                self.refusal = str(exc)
                raise

    def mark_synced(self, block_ids: Sequence[int]) -> None:
        """The broker has these blocks (PUBACK); not proof that a recipient does."""
        self._writable(marks=True)
        with self._write():
            self._conn.executemany("UPDATE blocks SET synced = 1 WHERE id = ?", [(i,) for i in block_ids])

    def mark_acked(self, stream: str, upto_seq: int) -> int:
        """Mark every block of `stream` with seq <= upto_seq acked (and synced); returns rows changed."""
        self._writable(marks=True)
        with self._write():
            cur = self._conn.execute(
                "UPDATE blocks SET acked = 1, synced = 1 WHERE stream = ? AND seq <= ? AND acked = 0",
                (stream, upto_seq),
            )
            return cur.rowcount

    def expired(self, stream: str, before_us: int, *, acked_only: bool = False) -> list[tuple[int, int, int]]:
        """(id, seq, count) of the stream's blocks that still hold records and end before `before_us`, by seq.

        `acked_only`: only blocks the recipient acked (an outbound stream keeps what has not reached it).
        """
        acked = " AND acked = 1" if acked_only else ""
        with self._lock:
            return self._conn.execute(
                f"SELECT id, seq, count FROM blocks WHERE stream = ? AND t1 < ? AND records IS NOT NULL{acked} ORDER BY seq",
                (stream, before_us),
            ).fetchall()

    def block_ids(self, stream: str, first_seq: int, last_seq: int) -> list[int]:
        """Row ids of the stream's blocks with first_seq <= seq <= last_seq, by seq."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id FROM blocks WHERE stream = ? AND seq BETWEEN ? AND ? ORDER BY seq", (stream, first_seq, last_seq)
            ).fetchall()
        return [r[0] for r in rows]

    def drop_records(self, block_ids: Sequence[int]) -> None:
        """Retention: forget the records of these blocks (their signed headers stay and still link)."""
        self._writable()
        with self._write():
            self._conn.executemany("UPDATE blocks SET records = NULL WHERE id = ?", [(i,) for i in block_ids])

    def _writable(self, marks: bool = False) -> None:
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only")
        if self.marks_only and not marks:
            raise StoreError(f"{self.path}: opened for delivery marks only (Store.open_marks)")

    # -- delivery: what the sync sends and what it may forget --------------------------------

    def blocks_between(self, stream: str, first_seq: int, last_seq: int) -> list[BlockRow]:
        """Blocks first_seq..last_seq of `stream`, in seq order (the audit names what an ack covered)."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM blocks WHERE stream = ? AND seq BETWEEN ? AND ? ORDER BY seq",
                (stream, first_seq, last_seq),
            ).fetchall()
        return [BlockRow(*r) for r in rows]

    def unacked_blocks(self, stream: str, from_seq: int = 0, limit: int = 64) -> list[BlockRow]:
        """Up to `limit` blocks of `stream` not acked by the recipient, from `from_seq`, in seq order.

        Served by the partial index `blocks_unacked`: cheap however many acked blocks the store holds.
        """
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM blocks WHERE stream = ? AND acked = 0 AND seq >= ? ORDER BY seq LIMIT ?",
                (stream, from_seq, limit),
            ).fetchall()
        return [BlockRow(*r) for r in rows]

    def digest_at(self, stream: str, seq: int) -> bytes | None:
        """Digest of the (first stored) block `seq` of `stream`, None when there is none."""
        with self._lock:
            row = self._conn.execute(
                "SELECT digest FROM blocks WHERE stream = ? AND seq = ? ORDER BY id LIMIT 1", (stream, seq)
            ).fetchone()
        return bytes(row[0]) if row else None

    def acked_seq(self, stream: str) -> int | None:
        """Highest seq of `stream` below which every block is acked (None: nothing acked yet).

        One statement, so one snapshot: read in two, a block the writer committed between them
        (the first of a new stream, sealed as the syncer starts) looked acked, and was never sent.
        """
        with self._lock:
            first, last = self._conn.execute(
                "SELECT (SELECT min(seq) FROM blocks WHERE stream = ? AND acked = 0), "
                "(SELECT max(seq) FROM blocks WHERE stream = ?)", (stream, stream),
            ).fetchone()
        if first is not None:
            return first - 1 if first > 0 else None
        return last

    def backlog(self) -> dict[str, tuple[int, int]]:
        """Per stream with unacked blocks: (blocks, bytes of their COSE messages and records)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT stream, count(*), sum(length(sign1) + ifnull(length(records), 0)) "
                "FROM blocks WHERE acked = 0 GROUP BY stream"
            ).fetchall()
        return {name: (n, size or 0) for name, n, size in rows}

    def stored_bytes(self) -> int:
        """Bytes of every stored COSE message and record list: what a disk quota counts."""
        with self._lock:
            return self._conn.execute(
                "SELECT ifnull(sum(length(sign1) + ifnull(length(records), 0)), 0) FROM blocks"
            ).fetchone()[0]

    def oldest_with_records(
        self, *, acked: bool, exclude: Sequence[str] = (), after_id: int = 0, limit: int = 256
    ) -> list[tuple]:
        """Oldest blocks (append order, id > after_id) still holding records: (id, stream, seq, count, bytes of records)."""
        marks = ",".join("?" * len(exclude))
        skip = f" AND stream NOT IN ({marks})" if exclude else ""
        with self._lock:
            return self._conn.execute(
                "SELECT id, stream, seq, count, length(records) FROM blocks "
                f"WHERE records IS NOT NULL AND acked = ? AND id > ?{skip} ORDER BY id LIMIT ?",
                (1 if acked else 0, after_id, *exclude, limit),
            ).fetchall()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the store's lock, after what `append(hold=...)` holds is committed."""
        with self._lock:
            self._commit_held()
            with _transaction(self._conn) as conn:
                yield conn

    def _commit_held(self) -> None:
        """Commit the open transaction (appends held by `hold`); a failure leaves the store refusing to write.

        The writers of held blocks have moved on: when their commit fails, the store no longer
        holds what they build on, so nothing more may be appended in this process.
        """
        conn = self._conn
        if conn is None or not conn.in_transaction:
            return
        try:
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.refusal = f"{self.db_path}: the blocks sealed since the last commit were not stored ({exc}); re-run the replay"
            raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._commit_held()
                finally:
                    self._conn.close()
                self._conn = None  # type: ignore[assignment]
            lock = getattr(self, "_writer_lock", None)
            if lock is not None:
                lock.close()  # releases the flock
                self._writer_lock = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _checkpoint_state(
    conn: sqlite3.Connection, ring: KeyRing, heads: dict[str, Head], db: Path
) -> tuple[dict[str, int], str | None]:
    """At the writer's open: each stream's last signed checkpoint size, and why the store refuses to write (None: it may).

    A store that lacks a tree it signed (rolled back: blocks deleted after a
    checkpoint) refuses, as one with evidence from outside (`forks`) does.
    """
    sizes: dict[str, int] = {}
    refusal = _cp.refusal(conn, db)
    for name, head in heads.items():
        _cp.ensure_tree(conn, name, head.seq + 1, db)
        key = _cp.stream_key(conn, ring, name)
        if key is None:
            continue
        try:
            last = _cp.last_checkpoint(conn, name, key, db)
            why = None if last is None else _cp.held(conn, name, last.checkpoint, head.seq + 1, db)
        except StoreError as exc:
            refusal = refusal or str(exc)
            continue
        if why is not None:
            refusal = refusal or (f"{db}: stream {name!r}: {why}: this store is an older copy or was rolled back, "
                                  f"and continuing would fork the log; it refuses to write. See {_cp.RECOVERY}")
        elif last is not None:
            sizes[name] = last.checkpoint.size
    return sizes, refusal


def block_vid(sign1: object) -> str | None:
    """The vehicle id a stored block's header names, None when it does not parse (not verified)."""
    try:
        return _block.Header.decode(cose.decode_sign1(bytes(sign1)).payload).vid  # type: ignore[arg-type]
    except (MalformedBlock, TypeError, ValueError):
        return None


def _text(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


LOCK_FILE = "writer.lock"


def _take_writer_lock(path: Path):
    """One writing process per store: a second agent on the same store would fork its chains.

    An flock on STORE/writer.lock, released by the kernel when the holder dies
    (so a SIGKILLed agent never leaves a stale lock). Readers need no lock.
    """
    handle = open(private_file(path / LOCK_FILE), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StoreLocked(f"{path}: the store is being written by {holder}; stop it first") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def _private_db(path: Path) -> None:
    """The database file exists 0600 before SQLite opens it (its -wal and -shm get the same mode)."""
    private_file(path / DB_FILE)
    for name in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm"):
        if (path / name).exists():
            repair_private(path / name, "the store's database")


def _refuse_a_new_key_for_a_keyed_store(path: Path) -> None:
    """A store whose key is kept elsewhere (a TPM, a secure element: [agent] key) must not get a key file made up.

    Without this, opening it without its key configuration would create
    STORE/keys/vehicle.key, refuse it as the wrong key, and leave it behind.
    """
    if key_path(path).exists() or not (path / DB_FILE).exists():
        return
    try:
        conn = _connect(path / DB_FILE, readonly=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'public_key'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return  # not readable as a store: the open that follows reports it
    if row is not None and isinstance(row[0], bytes) and len(row[0]) == 32:
        raise StoreError(
            f"{path}: keys/vehicle.key is missing and the store is signed by key kid {kid(row[0]).hex()}: "
            "name where that key is kept ([agent] key, docs/key-protection.md); a new key cannot continue its chains"
        )


def _connect(db: Path, *, readonly: bool) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(
            f"{db.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.text_factory = _decode_text
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


def _decode_text(raw: bytes) -> str | bytes:
    """A TEXT cell as str; one that is not UTF-8 (damage, tampering) as its raw bytes.

    sqlite3's default raises OperationalError mid-query, which crashed `verify`
    and `run`; bytes where text belongs is reported by whoever reads the cell.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


@contextmanager
def _closing_on_error(conn: sqlite3.Connection, path: Path, what: str = "not a usable SQLite database"):
    """Close `conn` when opening a store fails; a damaged database becomes a StoreError naming it."""
    try:
        yield conn
    except StoreError:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"{path / DB_FILE}: {what}: {exc}") from None


def _durable_wal(conn: sqlite3.Connection, path: Path) -> None:
    """WAL mode (readers beside the writer) and synchronous=FULL (a commit is on disk when it returns)."""
    conn.execute("PRAGMA journal_mode=WAL")
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(f"{path}: SQLite refused WAL mode (got {mode})")
    conn.execute("PRAGMA synchronous=FULL")


def _create_schema(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


class _transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        return False
