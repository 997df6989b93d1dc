"""The writer's chain heads and identity, taken from the signed blocks.

The `streams` table (head seq and digest per stream) and `meta.vehicle` are
unsigned caches. Continuing a chain from an edited cache would make the car
sign a fork (two blocks for one seq), a broken link or blocks under another
vehicle id. So the writer trusts neither: when it opens a store it reads the
last stored block of every stream, checks its signature with the vehicle
key, and refuses to start when a cache disagrees with what is signed. Each
refusal is one line: which cache, what it says, what the signed block says,
and how to recover. Cost: one indexed lookup and one signature check per
stream.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path
from typing import NamedTuple

from carledger.ledger import cose
from carledger.ledger.block import Header
from carledger.ledger.errors import MalformedBlock, StoreError
from carledger.ledger.identity import KeyRing

__all__ = ["Head", "signed_heads", "check_identity", "identity_signed"]


class Head(NamedTuple):
    """What the last signed block of a stream says: where its chain continues, and as which vehicle."""

    seq: int
    digest: bytes  # SHA-256 of its payload
    vid: str  # the vehicle id the stream's blocks carry (the vehicle's own, or a recipient's pseudonym)


def _hex(value: object) -> str:
    return bytes(value).hex()[:16] + "…" if isinstance(value, (bytes, bytearray)) else repr(value)


def _stream_names(conn: sqlite3.Connection) -> list:
    """Every distinct `blocks.stream`, by index seeks (one per stream, not one per block)."""
    return [
        r[0]
        for r in conn.execute(
            "WITH RECURSIVE s(name) AS (SELECT min(stream) FROM blocks UNION ALL "
            "SELECT (SELECT min(stream) FROM blocks WHERE stream > s.name) FROM s WHERE s.name IS NOT NULL) "
            "SELECT name FROM s WHERE name IS NOT NULL"
        )
    ]


def _refuse(db: Path, what: str, fix: str) -> StoreError:
    return StoreError(
        f"{db}: {what}; the cache was edited or the store is damaged, so nothing is signed. "
        f"Run `carledger verify {db.parent}`; {fix}"
    )


def _last_block(conn: sqlite3.Connection, ring: KeyRing, db: Path, name: str) -> tuple[int, Head] | None:
    """(row id, head) of the stream's highest-seq block, verified; None when it has no block."""
    rows = conn.execute(
        "SELECT id, seq, digest, sign1 FROM blocks WHERE stream = ? AND seq = (SELECT max(seq) FROM blocks WHERE stream = ?)",
        (name, name),
    ).fetchall()
    if not rows:
        return None
    restore = "restore the store from a backup taken before the damage"
    if len(rows) > 1:
        raise _refuse(db, f"stream {name!r}: rows {', '.join(str(r[0]) for r in rows)} all hold its last seq {rows[0][1]!r}", restore)
    row_id, seq, digest, sign1 = rows[0]
    try:
        msg = cose.decode_sign1(sign1 if isinstance(sign1, bytes) else b"")
        header = Header.decode(msg.payload)
        key = ring.key_for(msg.protected.get(cose.HDR_KID), header.vid)
        if key is None:
            raise MalformedBlock("its key is neither the vehicle key nor one the vehicle key certified for its vehicle id")
        if not cose.verify_sign1(msg, key):
            raise MalformedBlock("the signature does not verify with the vehicle key (or the key it certified)")
    except MalformedBlock as exc:
        raise _refuse(db, f"stream {name!r}: its last stored block (row {row_id}) is not a block the vehicle key signed: {exc}", restore) from None
    signed = hashlib.sha256(msg.payload).digest()
    if header.stream != name or header.seq != seq or signed != digest:
        raise _refuse(
            db,
            f"stream {name!r}: row {row_id} (stream {name!r}, seq {seq!r}, digest {_hex(digest)}) holds a block signed "
            f"for stream {header.stream!r}, seq {header.seq}, digest {_hex(signed)}",
            restore,
        )
    return row_id, Head(header.seq, signed, header.vid)


def signed_heads(conn: sqlite3.Connection, ring: KeyRing, db: Path) -> dict[str, Head]:
    """The head of every stream, from its last signed block; StoreError when the `streams` cache disagrees."""
    heads: dict[str, Head] = {}
    cached = conn.execute("SELECT name, head_seq, head_digest FROM streams").fetchall()
    for name, seq, digest in cached:
        if type(name) is not str:
            raise _refuse(db, f"streams.name {_hex(name) if isinstance(name, bytes) else repr(name)} is not UTF-8 text",
                          "restore the store from a backup taken before the damage")
        last = _last_block(conn, ring, db, name)
        says = f"streams says head_seq {seq!r}, head_digest {_hex(digest)}"
        if last is None:
            if seq is None:
                continue
            raise _refuse(db, f"stream {name!r}: {says}, but no block of the stream is stored",
                          "restore the store from a backup taken before the damage")
        row_id, head = last
        if seq != head.seq or type(seq) is not int or digest != head.digest:
            raise _refuse(
                db,
                f"stream {name!r}: {says}; its last signed block (row {row_id}) is seq {head.seq}, digest {_hex(head.digest)}",
                f"if it reports only this, set the cache from the signed block: sqlite3 {db} "
                f"\"UPDATE streams SET head_seq = {head.seq}, head_digest = X'{head.digest.hex()}' WHERE name = '{name}'\"",
            )
        heads[name] = head
    cached_names = {r[0] for r in cached}
    for name in _stream_names(conn):
        if type(name) is str and name not in cached_names:
            row_id, head = _last_block(conn, ring, db, name)  # type: ignore[misc]
            raise _refuse(
                db,
                f"stream {name!r}: no streams row, yet blocks up to seq {head.seq} (row {row_id}) are stored",
                f"if it reports only this, restore the row from the signed block: sqlite3 {db} "
                f"\"INSERT INTO streams VALUES('{name}', {head.seq}, X'{head.digest.hex()}')\"",
            )
    return heads


_PSEUDONYM = re.compile(r"[0-9a-f]{32}\Z")  # carledger.policy.pseudonym: a recipient's id of the car


def identity_signed(vehicle: object, vids: set[str]) -> bool:
    """`meta.vehicle` is the id some chain is signed with, or cannot be compared with any.

    A store whose every chain carries a recipient's pseudonym (derived from
    `meta.vehicle`, so not comparable with it here) passes: there the
    writer's other rule holds, a stream's vehicle id never changes
    (StreamWriter.build refuses), so an edited id still signs nothing in them.
    """
    return vehicle in vids or all(type(v) is str and _PSEUDONYM.match(v) for v in vids)


def check_identity(vehicle: object, heads: dict[str, Head], db: Path) -> None:
    """StoreError when the writer would sign as another vehicle than its chains carry."""
    vids = {h.vid for h in heads.values()}
    if identity_signed(vehicle, vids):
        return
    signed = sorted({h.vid for h in heads.values()})
    shown = _hex(vehicle) if isinstance(vehicle, bytes) else repr(vehicle)
    raise _refuse(
        db,
        f"meta.vehicle {shown} is not the vehicle id any stream is signed with ({', '.join(map(repr, signed))})",
        f"if it reports only this, set it to the id the vehicle's own streams carry: sqlite3 {db} "
        f"\"UPDATE meta SET value = '<id>' WHERE key = 'vehicle'\"",
    )
