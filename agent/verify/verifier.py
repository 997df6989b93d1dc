"""Third-party-style verification of a local store: signatures, payloads, records, chains, heads.

The verifier trusts only the signed payloads and the pinned public key. Row
columns and the streams table are an unsigned index; they are checked against
the payloads and reported when they disagree. One pass over the blocks in
storage order, with bounded memory per block (a 24-byte slot per sequence
number), so large stores verify on the car itself.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable

from carledger.ledger import cose
from carledger.ledger.block import (
    ZERO_DIGEST,
    Event,
    Header,
    decode_record,
    decode_records,
    check_records_root,
)
from carledger.ledger.errors import KeyFileError, MalformedBlock, StoreError
from carledger.ledger.heads import identity_signed
from carledger.ledger.identity import KeyRing
from carledger.ledger.keys import KEY_DIR, KEY_FILE, VerifyKey, kid, load_signing_key, load_verify_key
from carledger.ledger.store import BlockRow, Store
from carledger.verify.report import (
    BAD_MERKLE_ROOT,
    BAD_SIGNATURE,
    BROKEN_LINK,
    DUPLICATE,
    FORK,
    GAP,
    KEY_MISMATCH,
    MALFORMED,
    OUT_OF_ORDER,
    ROW_MISMATCH,
    TRUNCATED,
    UNDECLARED_DROP,
    Problem,
    Report,
    StreamSummary,
)

__all__ = ["verify_store", "Progress"]

Progress = Callable[[int, int], None]
PROGRESS_EVERY = 500
#: Declared events that allow a block's records to be gone (docs/owner-state.md): its detail names
#: the stream (default: the event's own) and "seqs", a list of [first, last] ranges.
DROP_EVENTS = frozenset({"retention", "eviction", "capture-overwritten"})  # events that declare dropped records
_sha256 = hashlib.sha256


def _short(digest: Any) -> str:
    if isinstance(digest, (bytes, bytearray)):
        return bytes(digest[:8]).hex() + "…"
    return repr(digest)


class _SeqIndex:
    """seq -> (16-byte digest prefix, row id) for one stream, 24 bytes a slot in one bytearray."""

    SLOT = 24
    MAX_JUMP = 4096  # seqs far beyond the dense range go to a dict (bounded by the number of blocks)
    _EMPTY = bytes(SLOT)

    def __init__(self) -> None:
        self.arr = bytearray()
        self.sparse: dict[int, bytes] = {}

    def get(self, seq: int) -> tuple[bytes, int] | None:
        n = len(self.arr) // self.SLOT
        if 0 <= seq < n:
            s = bytes(self.arr[seq * self.SLOT : (seq + 1) * self.SLOT])
            if s == self._EMPTY:
                return None
        else:
            s = self.sparse.get(seq)
            if s is None:
                return None
        return s[:16], int.from_bytes(s[16:], "big")

    def put(self, seq: int, digest: bytes, row_id: int) -> None:
        entry = bytes(digest[:16]) + (row_id & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
        n = len(self.arr) // self.SLOT
        if 0 <= seq < n + self.MAX_JUMP:
            if seq >= n:
                self.arr.extend(bytes((seq + 1 - n) * self.SLOT))
            self.arr[seq * self.SLOT : (seq + 1) * self.SLOT] = entry
        else:
            self.sparse[seq] = entry


class _Chain:
    def __init__(self) -> None:
        self.index = _SeqIndex()
        self.max_seq = -1
        self.max_digest: bytes | None = None
        self.min_seq: int | None = None
        self.missing: list[list[int]] = []  # sorted disjoint [first, last] ranges below max_seq
        self.pending_prev: dict[int, bytes] = {}  # seq -> prev prefix, for blocks whose predecessor was missing
        self.unverified: set[int] = set()  # row seqs of rows that failed before the chain check

    def fill(self, seq: int) -> bool:
        """Remove `seq` from the missing ranges; True when it was missing."""
        i = bisect.bisect_right(self.missing, [seq, float("inf")]) - 1
        if i < 0:
            return False
        a, b = self.missing[i]
        if not a <= seq <= b:
            return False
        parts = [r for r in ([a, seq - 1], [seq + 1, b]) if r[0] <= r[1]]
        self.missing[i : i + 1] = parts
        return True


class _Verifier:
    def __init__(self, store: Store, key: Any, progress: Progress | None, check_records: bool):
        self.store = store
        self.progress = progress
        self.check_records = check_records
        self.report = Report()
        self.chains: dict[str, _Chain] = {}
        self.key: VerifyKey | None = None
        self.kid: bytes | None = None
        self.ring: KeyRing | None = None  # the pinned key and the recipient keys it certified (ledger/identity.py)
        self.meta_vid: str | None = None
        self.stream_vids: dict[str, str] = {}
        self.dropped: list[tuple[str, int, int]] = []  # (stream, seq, row) of blocks whose records are gone
        self.declared: dict[str, list[tuple[int, int]]] = {}  # stream -> seq ranges a retention/eviction event declared
        self._pin_key(key)

    # -- helpers -----------------------------------------------------------------------------

    def problem(self, stream: str | None, seq: int | None, kind: str, detail: str) -> None:
        self.report.problems.append(Problem(stream, seq, kind, detail))

    def summary(self, stream: str) -> StreamSummary:
        s = self.report.streams.get(stream)
        if s is None:
            s = self.report.streams[stream] = StreamSummary()
        return s

    def chain(self, stream: str) -> _Chain:
        c = self.chains.get(stream)
        if c is None:
            c = self.chains[stream] = _Chain()
        return c

    # -- keys --------------------------------------------------------------------------------

    def _pin_key(self, key: Any) -> None:
        meta = self.store.meta()
        vid = meta.get("vehicle")
        self.meta_vid = vid if isinstance(vid, str) else None
        self.report.vehicle = self.meta_vid
        if vid is not None and self.meta_vid is None:
            self.problem(None, None, MALFORMED, f"meta.vehicle {_short(vid)} is not UTF-8 text")
        meta_pk = meta.get("public_key")
        meta_pk = bytes(meta_pk) if isinstance(meta_pk, (bytes, bytearray)) and len(meta_pk) == 32 else None
        if key is not None:
            self.key = load_verify_key(key)  # KeyFileError: the caller's mistake, not the store's
            if meta_pk is not None and meta_pk != bytes(self.key):
                self.problem(
                    None,
                    None,
                    KEY_MISMATCH,
                    f"the store records public key kid {kid(meta_pk).hex()}, "
                    f"not the pinned key kid {kid(self.key).hex()}",
                )
        elif meta_pk is not None:
            self.key = VerifyKey(meta_pk)
        else:
            self.problem(None, None, MALFORMED, "the store records no public key and none was given: signatures not checked")
        if self.key is not None:
            self.kid = kid(self.key)
            self.report.key_id = self.kid.hex()
            self.ring = self.store.keyring(self.key)
            for detail in self.ring.problems:  # an edited or forged statement certifies nothing
                self.problem(None, None, BAD_SIGNATURE, detail)
        private = Path(self.store.path) / KEY_DIR / KEY_FILE
        if meta_pk is not None and private.exists():
            try:
                own = bytes(load_signing_key(private, check_mode=False).verify_key)
            except (KeyFileError, OSError, ValueError):
                own = None
            if own is not None and own != meta_pk:
                self.problem(
                    None,
                    None,
                    KEY_MISMATCH,
                    f"{KEY_DIR}/{KEY_FILE} (kid {kid(own).hex()}) is not the key the store records "
                    f"(kid {kid(meta_pk).hex()})",
                )

    # -- per block ---------------------------------------------------------------------------

    def bad_row(self, row: BlockRow, kind: str, detail: str) -> None:
        stream = row.stream if isinstance(row.stream, str) else None
        seq = row.seq if type(row.seq) is int else None
        self.problem(stream, seq, kind, f"row {row.id}: {detail}")
        if stream is not None:
            self.summary(stream).blocks += 1
            if seq is not None:
                self.chain(stream).unverified.add(seq)

    def check_row(self, row: BlockRow) -> None:
        if not isinstance(row.sign1, bytes):
            self.bad_row(row, MALFORMED, "sign1 is not a blob")
            return
        try:
            msg = cose.decode_sign1(row.sign1)
        except MalformedBlock as exc:
            self.bad_row(row, MALFORMED, str(exc))
            return
        try:
            header, unreadable = Header.decode(msg.payload), None
        except MalformedBlock as exc:  # the signature is still checked first: a flipped byte is a bad signature
            header, unreadable = None, exc
        if self.ring is not None:
            alg = msg.protected.get(cose.HDR_ALG)
            row_kid = msg.protected.get(cose.HDR_KID)
            if alg != cose.ALG_EDDSA:
                self.bad_row(row, BAD_SIGNATURE, f"algorithm {alg!r} is not EdDSA (-8)")
                return
            key = self.ring.key_for(row_kid, header.vid if header else None)
            if key is None:
                self.bad_row(row, BAD_SIGNATURE, f"signed by another key (kid {_short(row_kid)}): neither the pinned "
                                                 f"key {self.kid.hex()} nor one it certified for vehicle "
                                                 f"{header.vid if header else None!r}")
                return
            if not cose.verify_sign1(msg, key):
                self.bad_row(row, BAD_SIGNATURE, "the signature does not verify")
                return
        if header is None:
            self.bad_row(row, MALFORMED, str(unreadable))
            return
        digest = _sha256(msg.payload).digest()
        stream, seq = header.stream, header.seq
        summ = self.summary(stream)
        summ.blocks += 1
        summ.records += header.count

        if msg.unprotected:
            self.problem(stream, seq, MALFORMED, f"row {row.id}: the stored COSE_Sign1 has a non-empty unprotected header")
        cols = (
            ("stream", row.stream, stream),
            ("seq", row.seq, seq),
            ("digest", row.digest, digest),
            ("t0", row.t0, header.t0),
            ("t1", row.t1, header.t1),
            ("count", row.count, header.count),
        )
        bad = [
            f"{name} {_short(col) if name == 'digest' else repr(col)} (signed: {_short(val) if name == 'digest' else repr(val)})"
            for name, col, val in cols
            if type(col) is not type(val) or col != val
        ]
        if bad:
            self.problem(stream, seq, ROW_MISMATCH, f"row {row.id}: columns disagree with the signed payload: " + ", ".join(bad))
        # A stream for a recipient names the vehicle by that recipient's pseudonym, so the
        # vehicle id may differ from the store's; it may never change within a stream.
        first_vid = self.stream_vids.setdefault(stream, header.vid)
        if header.vid != first_vid:
            self.problem(stream, seq, ROW_MISMATCH, f"row {row.id}: vehicle {header.vid!r} differs from the stream's {first_vid!r}")

        if row.records is None:
            summ.dropped += 1
            self.dropped.append((stream, seq, row.id))
        else:
            self.check_block_records(row, header)

        self.link(stream, seq, digest, header.prev, row.id)

    def check_block_records(self, row: BlockRow, header: Header) -> None:
        stream, seq = header.stream, header.seq
        try:
            if not isinstance(row.records, bytes):
                raise MalformedBlock("the records column is not a blob")
            records = decode_records(row.records)
            check_records_root(header, records)
        except MalformedBlock as exc:
            self.problem(stream, seq, BAD_MERKLE_ROOT, f"row {row.id}: {exc}")
            return
        if not self.check_records or not records:
            return
        lo = hi = None
        for i, rec in enumerate(records):
            try:
                decoded = decode_record(rec)
            except MalformedBlock as exc:
                self.problem(stream, seq, MALFORMED, f"row {row.id}: record {i}: {exc}")
                return
            t = decoded.t
            if isinstance(decoded, Event) and decoded.kind in DROP_EVENTS:
                self.declare(stream, decoded.detail)
            if lo is None or t < lo:
                lo = t
            if hi is None or t > hi:
                hi = t
        if (lo, hi) != (header.t0, header.t1):
            self.problem(
                stream, seq, MALFORMED, f"row {row.id}: records span {lo}..{hi}, the header says {header.t0}..{header.t1}"
            )

    def declare(self, stream: str, detail: Any) -> None:
        """A retention or eviction event: the seq ranges of `detail["stream"]` whose records may be gone."""
        target = detail.get("stream", stream)
        seqs = detail.get("seqs")
        if not isinstance(target, str) or not isinstance(seqs, (list, tuple)):
            return
        for item in seqs:
            if isinstance(item, (list, tuple)) and len(item) == 2 and all(type(x) is int for x in item):
                self.declared.setdefault(target, []).append((item[0], item[1]))

    def check_drops(self) -> None:
        for stream, seq, row_id in self.dropped:
            if not any(lo <= seq <= hi for lo, hi in self.declared.get(stream, ())):
                self.problem(stream, seq, UNDECLARED_DROP, f"row {row_id}: its records are gone and no retention or eviction event declares it")

    # -- chains ------------------------------------------------------------------------------

    def link(self, stream: str, seq: int, digest: bytes, prev: bytes, row_id: int) -> None:
        ch = self.chain(stream)
        d16, p16 = digest[:16], prev[:16]
        known = ch.index.get(seq)
        if known is not None:
            if known[0] == d16:
                self.problem(stream, seq, DUPLICATE, f"stored again in row {row_id} (first in row {known[1]})")
            else:
                self.problem(
                    stream,
                    seq,
                    FORK,
                    f"two different blocks with seq {seq}: row {known[1]} (digest {known[0][:8].hex()}…) "
                    f"and row {row_id} (digest {_short(digest)})",
                )
            return
        if ch.min_seq is None or seq < ch.min_seq:
            ch.min_seq = seq
        if seq > ch.max_seq:
            if seq == ch.max_seq + 1:
                expected = ZERO_DIGEST if seq == 0 else ch.max_digest
                if prev != expected:
                    what = "32 zero bytes" if seq == 0 else f"the digest of seq {seq - 1} ({_short(expected)})"
                    self.problem(stream, seq, BROKEN_LINK, f"prev {_short(prev)} is not {what}")
            else:
                ch.missing.append([ch.max_seq + 1, seq - 1])
                ch.pending_prev[seq] = p16
            ch.max_seq, ch.max_digest = seq, digest
        else:
            ch.fill(seq)
            self.problem(stream, seq, OUT_OF_ORDER, f"row {row_id} is stored after seq {ch.max_seq}")
            if seq == 0:
                if prev != ZERO_DIGEST:
                    self.problem(stream, seq, BROKEN_LINK, f"prev {_short(prev)} is not 32 zero bytes")
            else:
                pred = ch.index.get(seq - 1)
                if pred is None:
                    ch.pending_prev[seq] = p16
                elif pred[0] != p16:
                    self.problem(stream, seq, BROKEN_LINK, f"prev {_short(prev)} is not the digest of seq {seq - 1} ({pred[0][:8].hex()}…)")
        succ = ch.pending_prev.pop(seq + 1, None)
        if succ is not None and succ != d16:
            self.problem(stream, seq + 1, BROKEN_LINK, f"prev {succ[:8].hex()}… is not the digest of seq {seq} ({_short(digest)})")
        ch.index.put(seq, d16, row_id)

    def finish(self) -> None:
        for stream, ch in self.chains.items():
            for a, b in ch.missing:
                for lo, hi in _subtract(a, b, ch.unverified):
                    n = hi - lo + 1
                    span = f"seq {lo}" if n == 1 else f"seq {lo}..{hi}"
                    self.problem(stream, lo, GAP, f"missing {span} ({n} block{'s' * (n != 1)})")
            s = self.summary(stream)
            if ch.max_seq >= 0:
                s.first_seq, s.last_seq = ch.min_seq, ch.max_seq
                s.head = ch.max_digest.hex() if ch.max_digest else None
        self.check_heads()
        self.check_checkpoints()
        self.check_identity()
        if self.check_records:
            self.check_drops()
        self.report.problems.sort(key=lambda p: (p.stream is not None, p.stream or "", p.seq if p.seq is not None else -1))

    def check_heads(self) -> None:
        heads = self.store.heads()
        for stream in sorted(set(heads) | set(self.chains), key=str):
            ch = self.chains.get(stream)
            last = ch.max_seq if ch else -1
            if stream not in heads:
                if last >= 0:
                    self.problem(stream, None, ROW_MISMATCH, f"no row in the streams table, yet blocks up to seq {last}")
                continue
            if not isinstance(stream, str):
                self.problem(None, None, ROW_MISMATCH, f"streams table: stream name {stream!r} is not text")
                continue
            self.summary(stream)
            head_seq, head_digest = heads[stream]
            if head_seq is None:
                if last >= 0:
                    self.problem(stream, None, ROW_MISMATCH, f"the streams table records no head, yet blocks up to seq {last}")
                continue
            if type(head_seq) is not int or head_seq < 0 or not isinstance(head_digest, bytes) or len(head_digest) != 32:
                self.problem(stream, None, ROW_MISMATCH, f"the streams table head is malformed: {head_seq!r}, {_short(head_digest)}")
                continue
            if head_seq > last:
                tail = [r for r in _subtract(last + 1, head_seq, ch.unverified if ch else set())]
                if tail:
                    self.problem(
                        stream,
                        tail[0][0],
                        TRUNCATED,
                        f"the recorded head is seq {head_seq} ({_short(head_digest)}) but the last block is "
                        + (f"seq {last}" if last >= 0 else "missing")
                        + f": seq {last + 1}..{head_seq} are gone",
                    )
                continue
            known = ch.index.get(head_seq) if ch else None
            if known is None:
                continue  # inside a gap (reported) or an unverifiable block (reported)
            # the whole digest where it is known (the last block), else the index's 16 bytes
            signed = ch.max_digest if head_seq == last else known[0]
            if head_digest[: len(signed)] != signed:
                self.problem(
                    stream,
                    head_seq,
                    FORK,
                    f"the recorded head digest {_short(head_digest)} is not the stored block seq {head_seq} "
                    f"({known[0][:8].hex()}…, row {known[1]}): the chain was rewritten after it",
                )
            elif head_seq < last:
                self.problem(
                    stream,
                    head_seq + 1,
                    ROW_MISMATCH,
                    f"blocks seq {head_seq + 1}..{last} come after the recorded head seq {head_seq}",
                )

    def check_checkpoints(self) -> None:
        """Each stream's newest signed checkpoint opens with the stream's key and commits to the stored blocks.

        The writer checks the same before it signs the next one (ledger/checkpoints.py),
        so a store that fails here refuses to write: verify says why first. A stream
        whose blocks already have problems gets only the signature check: its blocks'
        own problems say what changed.
        """
        troubled = {p.stream for p in self.report.problems}  # their blocks' problems are reported already
        for stream in sorted(self.chains, key=str):
            try:
                signed = self.store.latest_checkpoint(stream)
                if signed is None or stream in troubled:
                    continue
                root = self.store.tree_root(stream, signed.checkpoint.size, derived=True)
            except sqlite3.OperationalError:
                return  # a store from before checkpoints (no table): nothing was signed
            except StoreError as exc:
                self.problem(stream, None, ROW_MISMATCH, f"checkpoint: {exc}")
                continue
            if root != signed.checkpoint.root_hash:
                self.problem(stream, signed.checkpoint.size - 1, FORK,
                             f"the newest checkpoint the car signed ({signed.checkpoint.size} blocks, row {signed.row}) "
                             "is not the tree of the stored blocks: they were rewritten after it was signed")

    def check_identity(self) -> None:
        """In the car's own store, `meta.vehicle` is what its writer signs as: some chain must carry it.

        (A collector's replica records the enrolled id, which a pseudonymous stream does not carry.)
        """
        if not (Path(self.store.path) / KEY_DIR / KEY_FILE).exists():
            return
        signed = sorted(set(self.stream_vids.values()))
        if self.store.meta().get("vehicle") is None:
            self.problem(None, None, ROW_MISMATCH, "meta.vehicle is missing: the writer would sign as another vehicle id")
        elif self.meta_vid is not None and not identity_signed(self.meta_vid, set(signed)):
            self.problem(
                None,
                None,
                ROW_MISMATCH,
                f"meta.vehicle {self.meta_vid!r} is not the vehicle id any stream is signed with "
                f"({', '.join(map(repr, signed))}): the writer would sign as another vehicle",
            )

    # -- run ---------------------------------------------------------------------------------

    def run(self) -> Report:
        total = self.store.block_count()
        done = 0
        try:
            for row in self.store.iter_blocks():
                try:
                    self.check_row(row)
                except Exception as exc:  # hostile content must never crash the verifier
                    self.bad_row(row, MALFORMED, f"unexpected {type(exc).__name__}: {exc}")
                done += 1
                if self.progress is not None and done % PROGRESS_EVERY == 0:
                    self.progress(done, total)
        except sqlite3.Error as exc:
            self.problem(None, None, MALFORMED, f"database error after {done} blocks: {exc}")
        self.finish()
        if self.progress is not None:
            self.progress(done, max(total, done))
        return self.report


def _subtract(a: int, b: int, holes: set[int]) -> list[tuple[int, int]]:
    """The range a..b without the seqs in `holes`, as ranges."""
    if not holes:
        return [(a, b)] if a <= b else []
    out = []
    lo = a
    for h in sorted(x for x in holes if a <= x <= b):
        if h > lo:
            out.append((lo, h - 1))
        lo = h + 1
    if lo <= b:
        out.append((lo, b))
    return out


def verify_store(
    path: str | os.PathLike,
    *,
    key: Any = None,
    progress: Progress | None = None,
    check_records: bool = True,
) -> Report:
    """Verify every chain of the store at `path`.

    `key`: the pinned public key (hex, raw bytes, a key file or a VerifyKey);
    default: the public key the store records. `progress(done, total)` is
    called every few hundred blocks. Raises StoreError when the store cannot
    be read and KeyFileError for an unusable `key`; every problem in the store
    itself is in the report.
    """
    store = Store.open_readonly(path)
    try:
        return _Verifier(store, key, progress, check_records).run()
    finally:
        store.close()
