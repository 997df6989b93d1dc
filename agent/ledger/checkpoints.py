"""Each stream is a transparency log: its blocks are the leaves, the car signs C2SP checkpoints of it.

docs/transparency.md ("The car's logs") says why and how. In short:

- Leaf i of a stream's log is the COSE_Sign1 (without records) of its block
  seq i, hashed as RFC 6962. The store keeps the log's stored hashes (Go's
  tlog layout) in `tree_hashes`, appended with the blocks in one transaction.
- Origin `carledger.example/v/<kid of the stream's key>/<stream>`; the note
  key is that same Ed25519 key (the recipient's pseudonym key, or the
  vehicle key), named after the origin. A recipient needs nothing new, and
  the origin says nothing about any other stream.
- The car never signs two checkpoints of one log that no consistency proof
  joins. Before signing, the tree is re-derived from the blocks themselves
  and from the last checkpoint the car signed (verified), never from a
  cache: `tree_hashes`, `streams` and the `checkpoints` columns are caches.
- A copy of the store (restored backup, copied SD card) is consistent with
  itself; only a checkpoint the car signed elsewhere shows it up.
  `check_signed_checkpoint` takes one learnt from outside (a witness, a
  collector's ack): when the store does not hold that tree, the signed
  checkpoint is kept in `forks` and the store refuses to write.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

from carledger.ledger import cose, merkle
from carledger.ledger.errors import MalformedBlock, StoreError
from carledger.ledger.identity import KeyRing
from carledger.ledger.keys import Signer, kid
from carledger.transparency import note, tlog
from carledger.transparency.checkpoint import Checkpoint, CheckpointError, open_checkpoint

__all__ = [
    "ORIGIN_PREFIX",
    "DEFAULT_EVERY",
    "SCHEMA",
    "RECOVERY",
    "Signed",
    "ForkedStore",
    "origin_for",
    "log_verifier",
    "NoteSigner",
    "append_leaf",
    "reader",
    "ensure_tree",
    "consistency_proof",
    "held",
    "tree_root",
    "stream_key",
    "last_checkpoint",
    "sign_checkpoint",
    "refusal",
    "check_signed_checkpoint",
]

ORIGIN_PREFIX = "carledger.example/v"
DEFAULT_EVERY = 16  # blocks of a stream between checkpoints (and one at each close)
RECOVERY = "docs/transparency.md, \"Recovery\""

SCHEMA = """
CREATE TABLE IF NOT EXISTS tree_hashes(
  stream TEXT NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY(stream, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints(
  id INTEGER PRIMARY KEY, stream TEXT NOT NULL, origin TEXT NOT NULL, size INTEGER NOT NULL,
  note BLOB NOT NULL, created INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS checkpoints_stream ON checkpoints(stream, id);
CREATE TABLE IF NOT EXISTS cosignatures(
  id INTEGER PRIMARY KEY, checkpoint INTEGER NOT NULL, witness TEXT NOT NULL, line TEXT NOT NULL,
  received INTEGER NOT NULL, UNIQUE(checkpoint, witness)
);
CREATE TABLE IF NOT EXISTS receipts(
  id INTEGER PRIMARY KEY, stream TEXT NOT NULL, recipient TEXT NOT NULL, size INTEGER NOT NULL,
  text TEXT NOT NULL, line TEXT NOT NULL, stated INTEGER NOT NULL, received INTEGER NOT NULL,
  UNIQUE(stream, recipient, size)
);
CREATE TABLE IF NOT EXISTS forks(
  id INTEGER PRIMARY KEY, stream TEXT NOT NULL, source TEXT NOT NULL, note BLOB NOT NULL,
  detail TEXT NOT NULL, received INTEGER NOT NULL
)
"""


class ForkedStore(StoreError):
    """The store does not hold a tree the car signed: it is an older copy, or was rolled back. It refuses to write."""


class Signed(NamedTuple):
    """A checkpoint the car signed, verified with the stream's key."""

    checkpoint: Checkpoint
    note: bytes  # the signed note as stored
    row: int  # its `checkpoints` row id


def origin_for(public_key: bytes, stream: str) -> str:
    """The log's origin: the kid of the stream's key and the stream's name (nothing of other streams)."""
    return f"{ORIGIN_PREFIX}/{kid(public_key).hex()}/{stream}"


def log_verifier(public_key: bytes, stream: str) -> note.Ed25519Verifier:
    """The note verifier of a stream's log: the stream's own key, named after the origin."""
    return note.Ed25519Verifier(origin_for(public_key, stream), public_key)


class NoteSigner:
    """A note signer (0x01, Ed25519 over the text) through a ledger Signer: the key may stay in its TPM.

    A note text is UTF-8 without control characters, so it can never be
    mistaken for a COSE Sig_structure (CBOR, first byte 0x84): one key can
    sign both without one signature passing for the other.
    """

    alg = note.ALG_ED25519

    def __init__(self, name: str, signer: Signer):
        self.name = name
        self.public_key = bytes(signer.public_key)
        self.key_id = note.key_id(name, self.alg, self.public_key)
        self._signer = signer

    def sign(self, msg: bytes) -> bytes:
        return self._signer.sign(msg)


# -- the log's stored hashes ---------------------------------------------------------------


def reader(conn: sqlite3.Connection, stream: str, db: Path) -> tlog.HashReader:
    def read(indexes: Sequence[int]) -> list[bytes]:
        if not indexes:
            return []
        marks = ",".join("?" * len(indexes))
        rows = dict(conn.execute(
            f"SELECT idx, hash FROM tree_hashes WHERE stream = ? AND idx IN ({marks})", (stream, *indexes)
        ).fetchall())
        return _hashes_at(rows, indexes, stream, db)

    return read


def _hashes_at(rows: dict, indexes: Iterable[int], stream: str, db: Path) -> list[bytes]:
    """The hashes `rows` (idx -> hash, as read) holds at `indexes`, each present and 32 bytes, else StoreError."""
    out = []
    for i in indexes:
        h = rows.get(i)
        if not isinstance(h, bytes) or len(h) != merkle.HASH_SIZE:
            raise StoreError(f"{db}: stream {stream!r}: tree_hashes row {i} is missing or not a hash; "
                             f"run `carledger verify {db.parent}`")
        out.append(h)
    return out


def append_leaf(conn: sqlite3.Connection, stream: str, index: int, sign1: bytes, db: Path) -> None:
    """Add block `index` (its COSE_Sign1) to the stream's log; the caller holds the transaction."""
    hashes = tlog.stored_hashes_for_record_hash(index, merkle.leaf_hash(sign1), reader(conn, stream, db))
    first = tlog.stored_hash_index(0, index)
    conn.executemany(
        "INSERT OR REPLACE INTO tree_hashes(stream, idx, hash) VALUES (?, ?, ?)",
        [(stream, first + i, h) for i, h in enumerate(hashes)],
    )


def rebuild(conn: sqlite3.Connection, stream: str, size: int, db: Path) -> None:
    """Re-derive the stream's stored hashes from its blocks 0..size-1 (a store older than checkpoints)."""
    conn.execute("DELETE FROM tree_hashes WHERE stream = ?", (stream,))
    for index, sign1 in enumerate(_leaves(conn, stream, 0, size, db)):
        append_leaf(conn, stream, index, sign1, db)


def _leaves(conn: sqlite3.Connection, stream: str, first: int, end: int, db: Path) -> list[bytes]:
    """The COSE_Sign1 of blocks first..end-1, exactly one per seq, else StoreError."""
    rows = conn.execute(
        "SELECT seq, sign1 FROM blocks WHERE stream = ? AND seq >= ? AND seq < ? ORDER BY seq, id",
        (stream, first, end),
    ).fetchall()
    if [r[0] for r in rows] != list(range(first, end)) or not all(isinstance(r[1], bytes) for r in rows):
        raise StoreError(f"{db}: stream {stream!r}: blocks {first}..{end - 1} are not stored once each; "
                         f"run `carledger verify {db.parent}`")
    return [r[1] for r in rows]


def ensure_tree(conn: sqlite3.Connection, stream: str, size: int, db: Path) -> None:
    """Rebuild the stream's stored hashes from its blocks when they do not cover exactly `size` blocks.

    Stores written before checkpoints have none; an edit may have deleted
    some. Either way they are derived again from the blocks (one PK seek when
    nothing is missing).
    """
    top = conn.execute("SELECT max(idx) FROM tree_hashes WHERE stream = ?", (stream,)).fetchone()[0]
    if top != (tlog.stored_hash_count(size) - 1 if size else None):
        rebuild(conn, stream, size, db)


def consistency_proof(conn: sqlite3.Connection, stream: str, old: int, new: int, db: Path) -> list[bytes]:
    """The RFC 6962 consistency proof from the first `old` blocks to the first `new` ([] when old is 0 or new)."""
    if old == 0 or old == new:
        return []
    return tlog.prove_tree(new, old, reader(conn, stream, db))


def derived_root(conn: sqlite3.Connection, stream: str, size: int, db: Path) -> bytes:
    """The root of the stream's first `size` blocks derived from the blocks themselves (no cache): for offline checks."""
    return merkle.root(_leaves(conn, stream, 0, size, db)) if size else merkle.root([])


def tree_root(conn: sqlite3.Connection, stream: str, size: int, db: Path) -> bytes:
    """The root of the stream's first `size` blocks, from the stored hashes (a cache: check before signing)."""
    return tlog.tree_hash(size, reader(conn, stream, db))


# -- the checkpoints the car signed --------------------------------------------------------


def stream_key(conn: sqlite3.Connection, ring: KeyRing, stream: str) -> bytes | None:
    """The public key of the stream's newest block (its kid and vehicle id, through the key ring)."""
    row = conn.execute(
        "SELECT sign1 FROM blocks WHERE stream = ? ORDER BY seq DESC, id LIMIT 1", (stream,)
    ).fetchone()
    if row is None:
        return None
    try:
        from carledger.ledger.block import Header

        msg = cose.decode_sign1(bytes(row[0]))
        key = ring.key_for(msg.protected.get(cose.HDR_KID), Header.decode(msg.payload).vid)
    except (MalformedBlock, TypeError, ValueError):
        return None
    return None if key is None else bytes(key)


def last_checkpoint(conn: sqlite3.Connection, stream: str, public_key: bytes, db: Path) -> Signed | None:
    """The newest checkpoint the car signed for this stream's log, verified; StoreError when it does not verify."""
    origin = origin_for(public_key, stream)
    row = conn.execute(
        "SELECT id, size, note FROM checkpoints WHERE stream = ? AND origin = ? ORDER BY id DESC LIMIT 1",
        (stream, origin),
    ).fetchone()
    if row is None:
        return None
    row_id, size, signed = row
    try:
        cp, _ = open_checkpoint(bytes(signed), [log_verifier(public_key, stream)], origin)
    except (note.NoteError, CheckpointError, TypeError) as exc:
        raise StoreError(f"{db}: checkpoints row {row_id} (stream {stream!r}) is not a checkpoint the stream's key "
                         f"signed: {exc}; the store was edited or damaged, so nothing is signed. "
                         f"Run `carledger verify {db.parent}` and see {RECOVERY}") from None
    if cp.size != size:
        raise StoreError(f"{db}: checkpoints row {row_id}: column size {size!r}, the signed note says {cp.size}; "
                         f"set it from the note or see {RECOVERY}")
    return Signed(cp, bytes(signed), row_id)


def held(conn: sqlite3.Connection, stream: str, cp: Checkpoint, blocks: int, db: Path) -> str | None:
    """Why the store does not hold the tree `cp` (signed, verified) names; None when it does.

    Holds means: at least cp.size blocks, the stored hashes give cp's root,
    and the store's block cp.size-1 is the leaf that root commits to (so its
    hash chain ties every earlier block to the signed tree). When the stored
    hashes disagree they are derived again from the blocks first: an edited
    cache is repaired, only blocks that differ from the signed tree refuse.
    """
    why = _held(conn, stream, cp, blocks, db)
    if why is not None and cp.size <= blocks:
        rebuild(conn, stream, blocks, db)
        why = _held(conn, stream, cp, blocks, db)
    return why


def _held(conn: sqlite3.Connection, stream: str, cp: Checkpoint, blocks: int, db: Path) -> str | None:
    if cp.size > blocks:
        return f"the car signed a checkpoint of {cp.size} blocks, the store holds {blocks}"
    if cp.size == 0:
        return None
    read = reader(conn, stream, db)
    try:
        root = tlog.tree_hash(cp.size, read)
        last = _leaves(conn, stream, cp.size - 1, cp.size, db)[0]
        proof = tlog.prove_record(cp.size, cp.size - 1, read)
    except StoreError as exc:
        return str(exc)
    if root != cp.root_hash:
        return f"the store's first {cp.size} blocks do not give the root the car signed for them"
    if not tlog.check_record(proof, cp.size, cp.root_hash, cp.size - 1, merkle.leaf_hash(last)):
        return f"the store's block {cp.size - 1} is not the one the car signed a checkpoint of {cp.size} blocks over"
    return None


def _recheck_new_leaves(conn: sqlite3.Connection, stream: str, old: int, new: int, db: Path) -> None:
    """The stored hashes that blocks old..new-1 added, derived again from those blocks; StoreError on a difference.

    Those derivations read only hashes of the old tree's frontier (which the
    signed old root pins) and of the new blocks themselves: a new block's
    hashes are derived from the blocks before it as derived here, never as
    stored. Two queries hold what the new blocks added (their hashes are
    consecutive in the layout) and the blocks; the frontier is a few more.
    """
    frontier = reader(conn, stream, db)
    first = tlog.stored_hash_index(0, old)
    stored = _hash_range(conn, stream, first, tlog.stored_hash_count(new), db)
    derived: list[bytes] = []  # the hashes of stored index first + i, as the blocks give them

    def read(indexes: Sequence[int]) -> list[bytes]:
        below = [i for i in indexes if i < first]
        known = dict(zip(below, frontier(below)))
        return [known[i] if i < first else derived[i - first] for i in indexes]

    for index, sign1 in enumerate(_leaves(conn, stream, old, new, db), start=old):
        want = tlog.stored_hashes_for_record_hash(index, merkle.leaf_hash(sign1), read)
        at = len(derived)
        derived += want
        if stored[at : len(derived)] != want:
            raise StoreError(f"{db}: stream {stream!r}: tree_hashes for block {index} differ from the block; "
                             f"the store was edited or damaged, so nothing is signed. See {RECOVERY}")


def _hash_range(conn: sqlite3.Connection, stream: str, first: int, end: int, db: Path) -> list[bytes]:
    """The stored hashes first..end-1, in one query: each present and 32 bytes, else StoreError (as `reader`)."""
    rows = dict(conn.execute(
        "SELECT idx, hash FROM tree_hashes WHERE stream = ? AND idx >= ? AND idx < ?", (stream, first, end)
    ).fetchall())
    return _hashes_at(rows, range(first, end), stream, db)


def sign_checkpoint(conn: sqlite3.Connection, stream: str, size: int, signer: Signer, db: Path) -> Signed | None:
    """Sign a checkpoint of the stream's first `size` blocks, if it grew since the last one; in the caller's transaction.

    Refuses (StoreError, nothing signed) unless the last checkpoint the car
    signed is held by the store and a consistency proof, checked here, joins
    it to the new tree.
    """
    public_key = bytes(signer.public_key)
    last = last_checkpoint(conn, stream, public_key, db)
    old = 0
    if last is not None:
        why = held(conn, stream, last.checkpoint, size, db)
        if why is not None:
            raise ForkedStore(f"{db}: stream {stream!r}: {why}: this store is an older copy or was rolled back, and "
                              f"continuing would fork the log; it refuses to write. See {RECOVERY}")
        old = last.checkpoint.size
        if old == size:
            return None
    try:
        _recheck_new_leaves(conn, stream, old, size, db)
    except StoreError:  # the new blocks' stored hashes were edited: derive them again and check again
        rebuild(conn, stream, size, db)
        _recheck_new_leaves(conn, stream, old, size, db)
    root = tree_root(conn, stream, size, db)
    if old:
        proof = tlog.prove_tree(size, old, reader(conn, stream, db))
        if not tlog.check_tree(proof, size, root, old, last.checkpoint.root_hash):  # type: ignore[union-attr]
            raise ForkedStore(f"{db}: stream {stream!r}: no consistency proof joins the checkpoint of {old} blocks "
                              f"to {size}; nothing is signed. See {RECOVERY}")
    cp = Checkpoint(origin_for(public_key, stream), size, root)
    signed = note.sign_note(cp.text(), [NoteSigner(cp.origin, signer)])
    cur = conn.execute(
        "INSERT INTO checkpoints(stream, origin, size, note, created) VALUES (?, ?, ?, ?, ?)",
        (stream, cp.origin, size, signed, int(time.time())),
    )
    return Signed(cp, signed, int(cur.lastrowid))  # type: ignore[arg-type]


# -- what the car learns from outside -------------------------------------------------------


def refusal(conn: sqlite3.Connection, db: Path) -> str | None:
    """The one-line reason this store refuses to write, None when it may: signed evidence in `forks`."""
    try:
        row = conn.execute("SELECT id, stream, source, detail FROM forks ORDER BY id LIMIT 1").fetchone()
    except sqlite3.OperationalError:
        return None
    if row is None:
        return None
    row_id, stream, source, detail = row
    return (f"{db}: stream {stream!r}: {detail} (signed checkpoint from {source}, kept in forks row {row_id}): "
            f"this store is an older copy of the car's store and refuses to write. See {RECOVERY}")


def check_signed_checkpoint(
    conn: sqlite3.Connection, ring: KeyRing, stream: str, signed: bytes, source: str, db: Path
) -> Checkpoint:
    """Check a checkpoint of `stream` learnt from outside (`source`: a witness, a collector) against the store.

    The note must be signed by the stream's key (else NoteError/CheckpointError:
    not the car's, and not evidence of anything). When the store does not hold
    that tree, the note is kept in `forks` (in this call's own transaction)
    and ForkedStore is raised: the store refuses to write from then on.
    """
    key = stream_key(conn, ring, stream)
    if key is None:
        raise CheckpointError(f"stream {stream!r}: the store holds no block of it, so no key to check its checkpoint")
    cp, _ = open_checkpoint(signed, [log_verifier(key, stream)], origin_for(key, stream))
    conn.execute("BEGIN IMMEDIATE")
    try:
        blocks = conn.execute("SELECT count(*) FROM blocks WHERE stream = ?", (stream,)).fetchone()[0]
        why = held(conn, stream, cp, blocks, db)
        if why is not None:
            conn.execute(
                "INSERT INTO forks(stream, source, note, detail, received) VALUES (?, ?, ?, ?, ?)",
                (stream, source, signed, why, int(time.time())),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if why is not None:
        raise ForkedStore(refusal(conn, db) or why)
    return cp
