"""The collector's store interface: what `Collector` reads and writes, whatever holds it (docs/collector.md).

Like python-can's `BusABC`, one small abstract base and one class per
backend: `Registry` (a directory of SQLite files, the embedded default) and
`PgStore` (PostgreSQL, for workers on many machines). The collector's checks
never know which one they write; `open_store` picks by the location's form.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

from carledger.ledger import SealedBlock, StoreError, VerifyKey

__all__ = ["CollectorStore", "Prefetch", "StoreUnavailable", "open_store", "is_dsn"]


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (a database restarting): try the same work again later."""


@dataclass
class Prefetch:
    """What one flush reads before its checks, fetched together: a backend over a network answers in one round trip.

    `held` names the streams with blocks waiting behind a gap when it was
    read; a stream not in it has none, so the checks skip the pending table
    for it (another collector's held block is linked by its gap check).
    """

    keys: dict[str, VerifyKey] = field(default_factory=dict)
    heads: dict[tuple[str, str], tuple[int, bytes] | None] = field(default_factory=dict)
    held: set[tuple[str, str]] = field(default_factory=set)
    # (seq, message) of the blocks `held` streams hold, by seq, as read; the collector drops a stream's entry
    # when it changes what that stream holds, and asks the store again.
    blocks: dict[tuple[str, str], list[tuple[int, bytes]]] = field(default_factory=dict)


class CollectorStore(ABC):
    """Enrolment, the accepted chains, blocks held behind gaps, fork evidence, problems and counters."""

    # -- vehicles ----------------------------------------------------------------------------
    @abstractmethod
    def enroll(self, vehicle: str, public_key: Any) -> VerifyKey:
        """Enrol (or confirm) a vehicle's key; ValueError when another key is enrolled."""

    @abstractmethod
    def key(self, vehicle: str) -> VerifyKey | None: ...

    @abstractmethod
    def vehicle_of_kid(self, key_id: bytes) -> tuple[str, VerifyKey] | None: ...

    @abstractmethod
    def vehicles(self) -> list[tuple[str, bytes, float]]:
        """(vehicle, raw public key, enrolment time), by vehicle."""

    # -- chains ------------------------------------------------------------------------------
    @abstractmethod
    def stream_head(self, vehicle: str, stream: str) -> tuple[int, bytes] | None:
        """(seq, digest) of the stream's stored head, None before its first block."""

    @abstractmethod
    def stored(self, vehicle: str, stream: str, seq: int) -> tuple[bytes, bytes, bool] | None:
        """(digest, bare COSE_Sign1, stored with its records) of the block the chain holds at seq."""

    @abstractmethod
    def append(self, vehicle: str, blocks: Sequence[SealedBlock], now: float) -> None:
        """Store blocks and move their heads in ONE transaction, each stream locked for it alone.

        Each block must continue its stream's head, else StoreError and nothing is written.
        """

    def prefetch(self, vehicles: Sequence[str], chains: Sequence[tuple[str, str]]) -> Prefetch:
        """The enrolled keys of `vehicles`, the heads of `chains` and which of them hold blocks (one call per item here)."""
        keys = {v: k for v in vehicles if (k := self.key(v)) is not None}
        waiting = {(v, s) for v, s, *_ in self.waiting()}
        held = waiting & set(chains)
        return Prefetch(keys, {c: self.stream_head(*c) for c in chains if c[0] in keys}, held,
                        {c: self.pending_after(*c, -1) for c in held})

    def append_all(self, batches: Mapping[str, Sequence[SealedBlock]], now: float) -> tuple[set[str], int]:
        """Append each vehicle's blocks as `append` does, count them accepted and forget held blocks up to the new heads.

        Returns the vehicles whose blocks did not continue their stored heads
        (another collector moved them): none of their blocks is written, the
        caller places them one by one; and how many blocks the store found
        already stored and left out (0 here). A backend that can stores all of
        it in one transaction; this one takes one per vehicle.
        """
        failed = set()
        for vehicle, blocks in batches.items():
            try:
                self.append(vehicle, blocks, now)
            except StoreUnavailable:
                raise
            except StoreError:
                failed.add(vehicle)
                continue
            self.accepted(vehicle, blocks, now)
        return failed, 0

    def accepted(self, vehicle: str, blocks: Sequence[SealedBlock], now: float) -> None:
        """Count appended blocks per stream and forget the held blocks the new heads reached."""
        heads: dict[str, int] = {}
        for b in blocks:
            heads[b.stream] = max(heads.get(b.stream, -1), b.seq)
        for stream, seq in heads.items():
            self.count(vehicle, stream, accepted=sum(1 for b in blocks if b.stream == stream), now=now)
            self.release(vehicle, stream, seq)

    @abstractmethod
    def replace_key(self, vehicle: str, key: VerifyKey) -> "str | os.PathLike[str]":
        """Enrol `key` in place of the vehicle's key, its previous chains set apart; where they went.

        Only after `carledger.collect.rekey` checked the handover the enrolled key
        signed (docs/owner-state.md, "Change of owner"). In one step: the previous
        key's chains are kept, apart and verifiable with that key, never mixed with
        the new key's, which start from seq 0; its held blocks and counters go.
        """

    @abstractmethod
    def streams(self, vehicle: str) -> dict[str, dict]:
        """{stream: {"blocks", "records", "first_seq", "head_seq", "head" (hex)}} of the stored chains."""

    @abstractmethod
    def blocks(self, vehicle: str | None = None, stream: str | None = None, t_from: int | None = None,
               t_to: int | None = None) -> Iterator[tuple[str, str, int, bytes]]:
        """(vehicle, stream, seq, message) of the stored blocks whose [t0, t1] (µs) meets [t_from, t_to], each
        stream by seq; fetched in pages, so memory stays constant whatever the size (collect export)."""

    def tree_root(self, vehicle: str, stream: str, size: int) -> bytes:
        """Root of the RFC 6962 tree of the stream's first `size` stored blocks: what a receipt cosigns.

        Leaf i is block i's COSE_Sign1 without its records, as the car's log has it
        (docs/transparency.md). Derived from the blocks themselves, read in pages; a
        backend with a cached tree (the SQLite replica) answers from that instead.
        """
        from carledger.ledger import merkle
        from carledger.ledger.block import split_records

        hashes: list[bytes] = []
        for _vehicle, _stream, seq, message in self.blocks(vehicle, stream):
            if seq >= size:
                break
            if seq != len(hashes):
                raise StoreError(f"{vehicle} {stream}: block {len(hashes)} is not stored; no tree of {size} blocks")
            hashes.append(merkle.leaf_hash(split_records(message)[0]))
        if len(hashes) != size:
            raise StoreError(f"{vehicle} {stream}: {len(hashes)} blocks stored; no tree of {size} blocks")
        return merkle.root_from_hashes(hashes)

    # -- blocks waiting for a gap ------------------------------------------------------------
    @abstractmethod
    def pending(self, vehicle: str, stream: str, seq: int) -> tuple[bytes, bytes] | None: ...

    @abstractmethod
    def pending_after(self, vehicle: str, stream: str, seq: int) -> list[tuple[int, bytes]]: ...

    @abstractmethod
    def replace_pending(self, vehicle: str, stream: str, seq: int, message: bytes) -> None: ...

    @abstractmethod
    def hold(self, vehicle: str, stream: str, seq: int, digest: bytes, message: bytes, now: float) -> bool:
        """Keep a verified block that does not link yet; False when the stream holds too many."""

    @abstractmethod
    def release(self, vehicle: str, stream: str, upto_seq: int) -> None: ...

    @abstractmethod
    def waiting(self) -> list[tuple[str, str, int, int, float, int]]:
        """Per stream with held blocks: (vehicle, stream, lowest seq, highest seq, oldest arrival, count)."""

    # -- evidence, problems, counters --------------------------------------------------------
    @abstractmethod
    def keep_evidence(self, vehicle: str, stream: str, seq: int, digest: bytes, message: bytes, now: float) -> bool: ...

    @abstractmethod
    def evidence(self, vehicle: str, stream: str, seq: int) -> list[bytes]: ...

    @abstractmethod
    def problem(self, vehicle: str | None, stream: str | None, seq: int | None, kind: str, detail: str, now: float) -> None: ...

    @abstractmethod
    def problems(self) -> Iterator[dict]: ...

    @abstractmethod
    def count(self, vehicle: str, stream: str, *, accepted: int = 0, duplicates: int = 0, now: float) -> None: ...

    @abstractmethod
    def counters(self) -> dict[tuple[str, str], tuple[int, int, float | None]]: ...

    @abstractmethod
    def close(self) -> None: ...


def is_dsn(location: str | os.PathLike) -> bool:
    """A PostgreSQL connection string (URI or key=value), as opposed to a collector directory."""
    s = str(location)
    return s.startswith(("postgresql://", "postgres://")) or ("=" in s and ("dbname=" in s or "host=" in s))


def open_store(location: str | os.PathLike) -> CollectorStore:
    """The store at `location`: a PostgreSQL DSN opens PgStore, anything else a collector directory."""
    if is_dsn(location):
        from carledger.collect.pgstore import PgStore

        return PgStore(str(location))
    from carledger.collect.registry import Registry

    return Registry(location)
