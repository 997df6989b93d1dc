"""The receiving side: verify each block, extend the vehicle's chains, report everything else (docs/collector.md).

`Collector` has no network code: `receive(topic, payload)` queues a message,
`flush()` reads what the queue's checks need in one call (`prefetch`),
verifies it, stores it with one `append_all` (one transaction on PostgreSQL)
and returns the acks to publish. That keeps the checks testable without a broker
and lets `CollectorService` batch what arrives between two network turns.

Checks reuse the ledger's: `open_block` (COSE_Sign1 signature against the
enrolled key, header format, Merkle root and count, every record) and the
store's `append`, which refuses a block that does not continue its chain.
Problem kinds are the verifier's (`bad-signature`, `bad-merkle-root`,
`malformed`, `fork`, `gap`) plus `replay`, `unknown-vehicle`, `overflow`,
`stripped` and `altered-copy`.

A block message without its records (a bare header) is only what the car
sends once a signed retention or eviction event dropped them; anyone who can
publish can also strip a genuine block. So a record-less block is held, never
stored nor acked on its own: it joins the chain when a later block of its
stream, held with its records, declares the drop; the full block, whenever it
comes, takes its place (docs/collector.md).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import cbor2

from carledger.collect.store import CollectorStore, Prefetch, StoreUnavailable, open_store
from carledger.ledger import (ZERO_DIGEST, Event, MalformedBlock, SealedBlock, StoreError, VerifyKey, cose, decode_record,
                              open_block)
from carledger.ledger.block import check_each_record
from carledger.ledger.cbor import canonical as _canonical
from carledger.ledger.errors import BadSignature
from carledger.sync import topics
from carledger.sync.ack import Ack, AckSigner, collector_key
from carledger.sync.wire import unpack_block
from carledger.verify.report import FORK, GAP, MALFORMED
from carledger.verify.verifier import DROP_EVENTS

__all__ = ["Collector", "CollectorStats", "REPLAY", "UNKNOWN_VEHICLE", "OVERFLOW", "STRIPPED", "ALTERED_COPY"]

log = logging.getLogger(__name__)

REPLAY = "replay"  # a valid block presented where it does not belong (another vehicle's or stream's topic)
UNKNOWN_VEHICLE = "unknown-vehicle"  # blocks under the topic of a vehicle that is not enrolled
OVERFLOW = "overflow"  # too many blocks held behind a gap: dropped (the vehicle sends them again)
STRIPPED = "stripped"  # a copy of a block without its records, and no signed event declares them dropped
ALTERED_COPY = "altered-copy"  # a message with a stored block's digest but other bytes (its signature)


@dataclass
class CollectorStats:
    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    held: int = 0
    rejected: int = 0
    acks: int = 0


@dataclass
class _Batch:
    """What one flush appends to one vehicle's replica, and the heads as they will be."""

    blocks: list[SealedBlock] = field(default_factory=list)
    heads: dict[str, tuple[int, bytes] | None] = field(default_factory=dict)
    acks: set[str] = field(default_factory=set)


class Collector:
    """Verifies and stores blocks for the vehicles enrolled in a collector store.

    `path` is the collector directory (its ack key, and the SQLite store
    unless `store` names another: a PostgreSQL DSN or an open CollectorStore).
    """

    def __init__(self, path: str | os.PathLike, *, gap_wait: float = 30.0, clock: Callable[[], float] = time.time,
                 store: CollectorStore | str | None = None):
        self.registry: CollectorStore = store if isinstance(store, CollectorStore) else open_store(store or path)
        self.ack_key = collector_key(path)  # signs every ack (docs/sync.md, "Acks"); made at the first start
        self.gap_wait = gap_wait
        self.clock = clock
        self.stats = CollectorStats()
        self._queue: list[tuple[str, bytes]] = []
        self._no_receipt: set[tuple[str, str]] = set()  # streams whose receipt cannot be computed (logged once)
        self._view: Prefetch | None = None  # during a flush: keys, heads and held streams read up front
        self.signer = AckSigner(self.ack_key, lambda: self.clock())  # the acks and the receipts in them

    def close(self) -> None:
        self.registry.close()

    # -- intake ------------------------------------------------------------------------------

    def receive(self, topic: str, payload: bytes) -> None:
        """Queue one message from the broker (verified at the next flush)."""
        self._queue.append((topic, bytes(payload)))
        self.stats.received += 1

    @property
    def queued(self) -> int:
        return len(self._queue)

    def flush(self) -> list[tuple[str, bytes]]:
        """Verify and store what was received; returns the acks to publish (topic, payload), retained."""
        queue, self._queue = self._queue, []
        now = self.clock()
        batches: dict[str, _Batch] = {}
        try:
            chains = {(t.vehicle, t.stream) for t in map(topics.parse, (name for name, _ in queue))
                      if t is not None and t.kind == topics.BLOCK}
            self._view = self.registry.prefetch(sorted({v for v, _ in chains}), sorted(chains))
            for topic, payload in queue:
                try:
                    self._one(topic, payload, batches, now)
                except StoreError:
                    raise
                except Exception as exc:  # hostile input must never stop the collector
                    log.exception("collect: unexpected error on %s", topic)
                    self._problem(topics.parse(topic), None, MALFORMED, f"unexpected {type(exc).__name__}: {exc}", now)
            acks = self._store(batches, now)
        except StoreUnavailable:
            # Nothing of this batch is acked: all of it is checked again once the store is back (what was
            # committed meanwhile comes back as duplicates, which are acked then).
            self._queue = queue + self._queue
            raise
        finally:
            self._view = None
        self.stats.acks += len(acks)
        return acks

    def _store(self, batches: dict[str, _Batch], now: float) -> list[tuple[str, bytes]]:
        """Append every vehicle's batch with one append_all (those whose heads another collector moved: block by
        block), then sign the acks of the heads as stored."""
        todo = {v: b.blocks for v, b in batches.items() if b.blocks}
        try:
            failed, already = self.registry.append_all(todo, now) if todo else (set(), 0)
        except StoreUnavailable:
            raise
        except StoreError as exc:  # e.g. one damaged chain: the others are stored one vehicle at a time
            log.warning("collect: the flush's transaction failed (%s); storing vehicle by vehicle", exc)
            failed, already = set(todo), 0
        self.stats.accepted += sum(len(b) for v, b in todo.items() if v not in failed) - already
        self.stats.duplicates += already
        acks = []
        for vehicle, batch in batches.items():
            if vehicle in failed:
                self._one_by_one(vehicle, batch, now)
            acks += self._acks(vehicle, batch.acks, None if vehicle in failed else batch.heads)
        return acks

    def _key(self, vehicle: str) -> VerifyKey | None:
        """The vehicle's enrolled key: as the flush's prefetch read it (every vehicle of its topics), else from the store."""
        return self._view.keys.get(vehicle) if self._view is not None else self.registry.key(vehicle)

    def _pending(self, vehicle: str, stream: str, seq: int) -> tuple[bytes, bytes] | None:
        """The block held for (stream, seq); not asked when the flush's prefetch found none held for the stream."""
        if self._view is not None and (vehicle, stream) not in self._view.held:
            return None
        return self.registry.pending(vehicle, stream, seq)

    def _problem(self, topic: topics.Topic | None, seq: int | None, kind: str, detail: str, now: float) -> None:
        self.stats.rejected += 1
        vehicle = topic.vehicle if topic else None
        stream = topic.stream if topic else None
        log.warning("collect: %s %s seq %s: %s: %s", vehicle, stream, seq, kind, detail)
        self.registry.problem(vehicle, stream, seq, kind, detail, now)

    def _one(self, topic_name: str, payload: bytes, batches: dict[str, _Batch], now: float) -> None:
        topic = topics.parse(topic_name)
        if topic is None or topic.kind != topics.BLOCK:
            self._problem(None, None, MALFORMED, f"not a block topic: {topic_name[:120]!r}", now)
            return
        key = self._key(topic.vehicle)
        if key is None:
            self._problem(topic, None, UNKNOWN_VEHICLE, f"a block from vehicle {topic.vehicle!r}, which is not enrolled", now)
            return
        try:
            message = unpack_block(payload)
            block = open_received(message, key)
        except BadSignature as exc:
            self._bad_signature(topic, message, str(exc), now)
            return
        except MalformedBlock as exc:
            self._problem(topic, None, exc.kind, str(exc), now)
            return
        if block.header.stream != topic.stream:
            self._problem(topic, block.seq, REPLAY, f"a block of stream {block.header.stream!r} published as {topic.stream!r}", now)
            return
        if block.header.vid != topic.vehicle:  # the enrolled key may sign for other ids (the car's own streams): file none of them here
            self._problem(topic, block.seq, REPLAY, f"a block signed as vehicle {block.header.vid!r} published as "
                                                   f"{topic.vehicle!r}; not kept", now)
            return
        self._place(topic.vehicle, block, message, batches.setdefault(topic.vehicle, _Batch()), now)

    def _bad_signature(self, topic: topics.Topic, message: bytes, detail: str, now: float) -> None:
        """Another enrolled vehicle's valid block under this topic is a replay; anything else a bad signature."""
        try:
            key_id = cose.decode_sign1(message).protected.get(cose.HDR_KID)
            other = self.registry.vehicle_of_kid(key_id) if isinstance(key_id, bytes) else None
            if other is not None and other[0] != topic.vehicle:
                blk = open_block(message, other[1], allow_bare=True)
                self._problem(topic, blk.seq, REPLAY, f"a block of vehicle {other[0]!r} (stream {blk.stream!r}) "
                                                      f"published as {topic.vehicle!r}", now)
                return
        except MalformedBlock:
            pass
        self._problem(topic, None, BadSignature.kind, detail, now)

    # -- chains ------------------------------------------------------------------------------

    def _head(self, vehicle: str, batch: _Batch, stream: str) -> tuple[int, bytes] | None:
        if stream not in batch.heads:
            view = self._view
            batch.heads[stream] = (view.heads[(vehicle, stream)] if view is not None and (vehicle, stream) in view.heads
                                   else self.registry.stream_head(vehicle, stream))
        return batch.heads[stream]

    def _stored(self, vehicle: str, batch: _Batch, stream: str, seq: int) -> tuple[bytes, bytes, bool] | None:
        """(digest, bare COSE_Sign1, stored with its records) of the block the chain holds at (stream, seq)."""
        for blk in batch.blocks:
            if blk.stream == stream and blk.seq == seq:
                return blk.digest, blk.sign1, not blk.bare
        return self.registry.stored(vehicle, stream, seq)

    def _copy(self, topic: topics.Topic, block: SealedBlock, sign1: bytes, with_records: bool, now: float) -> bool:
        """Whether `block` is exactly the one kept with its digest; reports it when it is another copy of it.

        With one digest, the signed header is the same and so are any records
        (the signed Merkle root): what can differ is whether the records came
        with it, and the signature's bytes. Neither copy replaces the one kept.
        """
        if block.sign1 != sign1:
            self._problem(topic, block.seq, ALTERED_COPY, "another message with the digest of the block kept "
                          f"({block.digest.hex()[:16]}…): other signature bytes; not kept", now)
            return False
        if block.bare and with_records:
            self._problem(topic, block.seq, STRIPPED, "a copy without its records of the block kept "
                          f"({block.digest.hex()[:16]}…); not kept", now)
            return False
        return True

    def _place(self, vehicle: str, block: SealedBlock, message: bytes, batch: _Batch, now: float) -> None:
        """Append, count as duplicate, hold behind a gap (or until a bare block's drop is declared), or keep as fork evidence."""
        stream, seq = block.stream, block.seq
        head = self._head(vehicle, batch, stream)
        head_seq = -1 if head is None else head[0]
        topic = topics.Topic(vehicle, stream, topics.BLOCK)
        if seq <= head_seq:
            stored = self._stored(vehicle, batch, stream, seq)
            if stored is not None and stored[0] == block.digest:
                if self._copy(topic, block, stored[1], stored[2], now):
                    self.stats.duplicates += 1
                    self.registry.count(vehicle, stream, duplicates=1, now=now)
                    batch.acks.add(stream)  # its ack may have been lost: say it again
                return
            self._fork(topic, block, message, f"seq {seq} differs from the stored block "
                                              f"({(stored[0] if stored else b'').hex()[:16]}…): two blocks with one sequence number", now)
            return
        held = self._pending(vehicle, stream, seq)
        if held is not None and held[0] != block.digest and seq > head_seq + 1:
            self._fork(topic, block, message, f"seq {seq} differs from the block already held for it", now)
            return
        copy = held is not None and held[0] == block.digest
        if copy and held[1] != message and not self._held_copy(topic, block, held[1], now):
            return
        if seq == head_seq + 1 and not (block.bare and not _covers(self._declared(vehicle, stream, seq), seq)):
            expected = ZERO_DIGEST if head is None else head[1]
            if block.header.prev != expected:
                self._fork(topic, block, message, f"seq {seq} links to {block.header.prev.hex()[:16]}…, not to the "
                                                  f"stored seq {head_seq} ({expected.hex()[:16]}…)", now)
                return
            batch.blocks.append(block)
            batch.heads[stream] = (seq, block.digest)
            batch.acks.add(stream)
            self._link_held(vehicle, stream, batch, now)
            return
        if copy:
            if held[1] == message:
                self.stats.duplicates += 1
            return  # the very same block, or its full copy now in place of the bare one
        if self.registry.hold(vehicle, stream, seq, block.digest, message, now):
            self.stats.held += 1
            if self._view is not None:
                self._view.held.add((vehicle, stream))
                self._view.blocks.pop((vehicle, stream), None)
            if _drops(block) and self._pending(vehicle, stream, head_seq + 1) is not None:
                self._link_held(vehicle, stream, batch, now)  # it may declare the records of a bare block held there
                if batch.heads[stream] != head:
                    batch.acks.add(stream)
        else:
            self._problem(topic, seq, OVERFLOW, "too many blocks held behind a gap; dropped (the vehicle sends it again)", now)

    def _held_copy(self, topic: topics.Topic, block: SealedBlock, held: bytes, now: float) -> bool:
        """Another message with a held block's digest: True when it is the full copy of a bare one, which takes its place."""
        bare_held = open_block(held, self._key(topic.vehicle), allow_bare=True)
        if not bare_held.bare or block.bare:
            self._copy(topic, block, bare_held.sign1, not bare_held.bare, now)
            return False
        self._problem(topic, block.seq, STRIPPED, f"a copy without its records of block seq {block.seq} "
                                                   "arrived before it; the block with its records takes its place", now)
        self.registry.replace_pending(topic.vehicle, topic.stream, block.seq, block.message())
        if self._view is not None:
            self._view.blocks.pop((topic.vehicle, topic.stream), None)
        return True

    def _declared(self, vehicle: str, stream: str, seq: int) -> list[tuple[int, int]]:
        """The seq ranges of `stream` whose drop the signed retention or eviction events of its held blocks after `seq` declare."""
        if self._view is not None and (vehicle, stream) not in self._view.held:
            return []
        key = self._key(vehicle)
        ranges = []
        for _seq, message in self.registry.pending_after(vehicle, stream, seq):
            try:
                later = open_block(message, key, allow_bare=True)
            except MalformedBlock:
                continue
            ranges += [r for detail in _drops(later) for r in _ranges(detail, stream)]
        return ranges

    def _fork(self, topic: topics.Topic, block: SealedBlock, message: bytes, detail: str, now: float) -> None:
        kept = self.registry.keep_evidence(topic.vehicle, topic.stream, block.seq, block.digest, message, now)
        self._problem(topic, block.seq, FORK, detail + ("; kept as evidence" if kept else ""), now)

    def _link_held(self, vehicle: str, stream: str, batch: _Batch, now: float) -> None:
        """Move held blocks that now continue the chain into the batch (a bare one only once its drop is declared).

        They are read in one query and stay held until the append that stores
        them releases them (in its transaction on PostgreSQL).
        """
        if self._view is not None and (vehicle, stream) not in self._view.held:
            return
        head = batch.heads[stream]
        after = -1 if head is None else head[0]
        key = self._key(vehicle)
        declared: list[tuple[int, int]] | None = None  # looked up once, at the first bare block
        read = self._view.blocks.get((vehicle, stream)) if self._view is not None else None
        held = [(q, m) for q, m in read if q > after] if read is not None else self.registry.pending_after(vehicle, stream, after)
        for seq, message in held:
            head = batch.heads[stream]
            nxt, prev = (0, ZERO_DIGEST) if head is None else (head[0] + 1, head[1])
            if seq != nxt:
                return
            try:
                block = open_received(message, key)
            except MalformedBlock as exc:  # it verified when held: only a damaged database gets here
                self._release(vehicle, stream, nxt)
                self._problem(topics.Topic(vehicle, stream, topics.BLOCK), nxt, exc.kind, f"held block: {exc}", now)
                return
            if block.bare:
                if declared is None:
                    declared = self._declared(vehicle, stream, nxt)
                if not _covers(declared, nxt):
                    return  # it waits for its records (or their declared drop); check_gaps reports it
            if block.header.prev != prev:
                self._release(vehicle, stream, nxt)
                self._fork(topics.Topic(vehicle, stream, topics.BLOCK), block, message,
                           f"held seq {nxt} does not link to seq {nxt - 1} ({prev.hex()[:16]}…)", now)
                return
            batch.blocks.append(block)
            batch.heads[stream] = (nxt, block.digest)

    def _release(self, vehicle: str, stream: str, upto_seq: int) -> None:
        self.registry.release(vehicle, stream, upto_seq)
        if self._view is not None:
            self._view.blocks.pop((vehicle, stream), None)

    def _one_by_one(self, vehicle: str, batch: _Batch, now: float) -> None:
        """Append a batch block by block, after another collector moved one of its heads: the blocks it stored
        too are duplicates, the others wait in the pending table for their gap check."""
        store = self.registry
        done = []
        for block in batch.blocks:
            try:
                store.append(vehicle, [block], now)
                done.append(block)
            except StoreUnavailable:
                raise
            except StoreError:
                stored = store.stored(vehicle, block.stream, block.seq)
                if stored is not None and stored[0] == block.digest:
                    self.stats.duplicates += 1  # the other collector stored the very same block
                else:
                    self.registry.hold(vehicle, block.stream, block.seq, block.digest, block.message(), now)
        if done:
            store.accepted(vehicle, done, now)
        self.stats.accepted += len(done)

    def _acks(self, vehicle: str, streams: set[str], heads: dict[str, tuple[int, bytes] | None] | None = None
              ) -> list[tuple[str, bytes]]:
        """Acks of the streams' heads: `heads` as this flush stored them, else read from the store."""
        out = []
        for stream in sorted(streams):
            head = heads[stream] if heads is not None and stream in heads else self.registry.stream_head(vehicle, stream)
            if head is not None:
                ack = Ack(vehicle, stream, head[0], head[1], self._receipt(vehicle, stream, head[0] + 1))
                out.append((topics.ack(vehicle, stream), self.signer.ack(ack)))
        return out

    def _receipt(self, vehicle: str, stream: str, size: int) -> str | None:
        """The receipt the ack carries: the ack key's cosignature of the stream's tree of `size` blocks as stored here.

        The tree and its root are the car's (one log per stream, leaf = the
        block's COSE_Sign1 without records: docs/transparency.md), computed
        from the blocks this collector verified, so the car finds the very
        checkpoint text of its own log. None when it cannot be computed.
        """
        from carledger.ledger.checkpoints import origin_for

        key = self._key(vehicle)
        try:
            root = self.registry.tree_root(vehicle, stream, size)
        except (StoreError, MalformedBlock, ValueError) as exc:  # e.g. a replica older than its stored hashes
            if (vehicle, stream) not in self._no_receipt:
                self._no_receipt.add((vehicle, stream))
                log.warning("collect: %s %s: acks go without a receipt: %s", vehicle, stream, exc)
            return None
        return None if key is None else self.signer.receipt(origin_for(bytes(key), stream), size, root)

    # -- gaps --------------------------------------------------------------------------------

    def check_gaps(self) -> list[tuple[str, bytes]]:
        """Link held blocks another collector's append made linkable; report gaps older than `gap_wait`.

        One prefetch for every stream with held blocks, one query per linkable
        stream, one append_all: it runs between two network turns, so it must
        stay short whatever the number of waiting streams. Returns the acks to
        publish for streams that moved.
        """
        now = self.clock()
        rows = self.registry.waiting()
        if not rows:
            return []
        chains = sorted({(v, s) for v, s, *_ in rows})
        self._view = view = self.registry.prefetch(sorted({v for v, _ in chains}), chains)
        try:
            batches: dict[str, _Batch] = {}
            for vehicle, stream, low, high, oldest, count in rows:
                if vehicle not in view.keys:
                    continue  # no longer enrolled (re-keyed): its held blocks went with its chains
                head = view.heads.get((vehicle, stream))
                head_seq = -1 if head is None else head[0]
                if low <= head_seq + 1:
                    if low <= head_seq:
                        self.registry.release(vehicle, stream, head_seq)
                    batch = batches.setdefault(vehicle, _Batch())
                    batch.heads[stream] = head
                    before = len(batch.blocks)
                    self._link_held(vehicle, stream, batch, now)
                    if len(batch.blocks) > before:
                        batch.acks.add(stream)
                    elif now - oldest >= self.gap_wait:
                        self.registry.problem(vehicle, stream, head_seq + 1, STRIPPED,
                                              f"seq {head_seq + 1} arrived without its records and no signed retention or "
                                              "eviction event declares them dropped; waiting for the block with its records", now)
                    continue
                if now - oldest >= self.gap_wait:
                    missing = f"seq {head_seq + 1}" if low == head_seq + 2 else f"seq {head_seq + 1}..{low - 1}"
                    self.registry.problem(vehicle, stream, head_seq + 1, GAP,
                                          f"missing {missing}; {count} later blocks (up to seq {high}) wait since "
                                          f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(oldest))}", now)
            acks = self._store(batches, now)
        finally:
            self._view = None
        self.stats.acks += len(acks)
        return acks


_loads = cbor2.loads
# (type(kind), kind, type(t), type(name), name == "", type(value)) of a well-formed 4-item sample record
_SAMPLE_SHAPES = frozenset({(int, 0, int, str, False, int), (int, 0, int, str, False, float), (int, 0, int, str, False, str)})


def open_received(message: bytes, key: VerifyKey) -> SealedBlock:
    """open_block(message, key, allow_bare=True), with the per-record check done for the whole block at once.

    The same checks and the same answers: signature, header, count and Merkle
    root as open_block does them, then every record must be exactly what
    `decode_record` accepts. Blocks of plain samples (the fleet's) take one
    pass over all their records: each decoded, its fields' types checked, and
    each re-encoded deterministically and compared with its bytes, as
    decode_record does one record at a time (about 1.5 µs instead of 10 per
    record). Anything else (events, a 5-item sample, any record that fails)
    goes through decode_record record by record, which names the first
    failing record exactly as open_block would.
    """
    block = _Received(*open_block(message, key, check_records=False, allow_bare=True))
    block._message = message
    records = block.records
    if records and not _plain_samples(records):
        try:
            check_each_record(records)
        except MalformedBlock:
            raise
        except Exception as exc:  # as open_block: whatever hostile input trips is a malformed block
            raise MalformedBlock(f"unreadable block: {type(exc).__name__}: {exc}") from None
    return block


class _Received(SealedBlock):
    """A block as received: `message()` gives the bytes that were verified instead of encoding them again.

    open_block has checked that a message with records is deterministic CBOR,
    so it is byte for byte what with_records(sign1, records) would build; a
    block without records is built as before (a message may carry an empty
    record list or none).
    """

    def message(self, include_records: bool = True) -> bytes:
        raw = self.__dict__.get("_message")
        if include_records and self.records and raw is not None:
            return raw
        return SealedBlock.message(self, include_records)


def _plain_samples(records: list[bytes]) -> bool:
    """True when every record is a 4-item sample that decode_record accepts; False means: check one by one."""
    try:
        objs = list(map(_loads, records))
        if {type(o) for o in objs} != {list} or {len(o) for o in objs} != {4}:
            return False
        if not {(type(k), k, type(t), type(n), n == "", type(v)) for k, t, n, v in objs} <= _SAMPLE_SHAPES:
            return False
        # deterministic CBOR, and nothing after the item: each record is exactly its value's canonical encoding
        return list(map(_canonical, objs)) == records
    except Exception:
        return False


def _drops(block: SealedBlock) -> list[dict]:
    """The details of the block's retention and eviction events (records open_block has checked)."""
    out = []
    for raw in block.records:
        rec = decode_record(raw)
        if isinstance(rec, Event) and rec.kind in DROP_EVENTS:
            out.append(rec.detail)
    return out


def _ranges(detail: object, stream: str) -> list[tuple[int, int]]:
    """The seq ranges of `stream` a retention or eviction event's detail names (block-format.md: `stream`, `seqs`)."""
    if not isinstance(detail, dict) or detail.get("stream", stream) != stream or not isinstance(detail.get("seqs"), list):
        return []
    return [(r[0], r[1]) for r in detail["seqs"]
            if isinstance(r, (list, tuple)) and len(r) == 2 and all(type(x) is int for x in r)]


def _covers(ranges: list[tuple[int, int]], seq: int) -> bool:
    return any(lo <= seq <= hi for lo, hi in ranges)
