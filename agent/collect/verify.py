"""`carledger collect verify`: re-check every chain a collector store holds, from the signed blocks alone.

A collector directory's chains are carledger stores: `verify_store` checks
them. A PostgreSQL store's blocks are re-opened here one by one, streamed in
pages: each against the vehicle's enrolled key (signature, header, Merkle
root, records), each linking to the one before, seq without holes, and the
stored head being the last block. Nothing the database says is trusted
beyond the bytes the vehicle signed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from carledger.collect.store import CollectorStore
from carledger.ledger import ZERO_DIGEST, MalformedBlock, open_block

__all__ = ["ChainCheck", "verify_collected"]


@dataclass
class ChainCheck:
    """One stream's result: blocks and records checked, and the first problem (None: intact)."""

    vehicle: str
    stream: str
    blocks: int = 0
    records: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_collected(store: CollectorStore, vehicle: str | None = None) -> list[ChainCheck]:
    """Check the chains of `vehicle` (all vehicles when None) in any CollectorStore."""
    from carledger.collect.registry import VEHICLES_DIR, Registry

    out = []
    for vid, raw_key, _ in store.vehicles():
        if vehicle is not None and vid != vehicle:
            continue
        if isinstance(store, Registry):
            from carledger.verify import verify_store

            report = verify_store(store.path / VEHICLES_DIR / vid, key=raw_key.hex())
            for name, s in sorted(report.streams.items()):
                out.append(ChainCheck(vid, name, s.blocks, s.records,
                                      [f"{p.kind}: {p.detail}" for p in report.problems if p.stream in (None, name)]))
            continue
        key = store.key(vid)
        for name, summary in sorted(store.streams(vid).items()):
            check = ChainCheck(vid, name)
            expect_seq, prev = None, ZERO_DIGEST
            for seq, message in store.chain(vid, name):
                try:
                    block = open_block(message, key, allow_bare=True)
                except MalformedBlock as exc:
                    check.problems.append(f"seq {seq}: {exc.kind}: {exc}")
                    break
                # The header's vid may be a recipient's pseudonym: the enrolled key is what binds it to the vehicle.
                if block.seq != seq or block.stream != name:
                    check.problems.append(f"seq {seq}: the signed header says stream {block.stream} seq {block.seq}")
                    break
                if expect_seq is not None and seq != expect_seq:
                    check.problems.append(f"seq {expect_seq}..{seq - 1} missing")
                    break
                if expect_seq is not None and block.header.prev != prev:
                    check.problems.append(f"seq {seq} does not link to seq {seq - 1}")
                    break
                check.blocks += 1
                check.records += 0 if block.bare else block.header.count
                expect_seq, prev = seq + 1, block.digest
            if check.ok and (expect_seq is None or expect_seq - 1 != summary["head_seq"] or prev.hex() != summary["head"]):
                check.problems.append(f"the stored head (seq {summary['head_seq']}) is not the last stored block")
            out.append(check)
    return out
