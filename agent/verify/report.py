"""The verifier's report: per-stream summaries and problems."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "KINDS",
    "MALFORMED",
    "BAD_SIGNATURE",
    "ROW_MISMATCH",
    "BAD_MERKLE_ROOT",
    "GAP",
    "BROKEN_LINK",
    "DUPLICATE",
    "FORK",
    "OUT_OF_ORDER",
    "TRUNCATED",
    "KEY_MISMATCH",
    "Problem",
    "StreamSummary",
    "Report",
]

MALFORMED = "malformed"  # a block (or record) that does not parse or breaks the format
BAD_SIGNATURE = "bad-signature"  # signature does not verify with the pinned key (or another kid/alg)
ROW_MISMATCH = "row-mismatch"  # unsigned columns (blocks row, streams row) disagree with the signed payload
BAD_MERKLE_ROOT = "bad-merkle-root"  # stored records do not match the signed count/root
GAP = "gap"  # sequence numbers missing from a chain
BROKEN_LINK = "broken-link"  # prev is not the digest of the previous block
DUPLICATE = "duplicate"  # the same block stored twice
FORK = "fork"  # two different blocks with one seq, or the recorded head names another block
OUT_OF_ORDER = "out-of-order"  # a block stored after a later block of its stream
TRUNCATED = "truncated"  # blocks up to the recorded head are missing at the end
UNDECLARED_DROP = "undeclared-drop"  # a block's records are gone with no retention/eviction event declaring it
KEY_MISMATCH = "key-mismatch"  # the store's recorded key disagrees with the pinned or private key

KINDS = (
    MALFORMED,
    BAD_SIGNATURE,
    ROW_MISMATCH,
    BAD_MERKLE_ROOT,
    GAP,
    BROKEN_LINK,
    DUPLICATE,
    FORK,
    OUT_OF_ORDER,
    TRUNCATED,
    KEY_MISMATCH,
)


@dataclass
class Problem:
    stream: str | None  # None for a store-wide problem
    seq: int | None
    kind: str
    detail: str

    def to_json(self) -> dict:
        return {"stream": self.stream, "seq": self.seq, "kind": self.kind, "detail": self.detail}

    def __str__(self) -> str:
        where = "store" if self.stream is None else self.stream
        if self.seq is not None:
            where += f" seq {self.seq}"
        return f"{where}: {self.kind}: {self.detail}"


@dataclass
class StreamSummary:
    blocks: int = 0  # rows of this stream (verified or not)
    records: int = 0  # records sealed (sum of the signed counts)
    first_seq: int | None = None  # lowest verified seq
    last_seq: int | None = None  # highest verified seq
    head: str | None = None  # hex digest of the block at last_seq
    dropped: int = 0  # blocks whose records were dropped (retention); not an error

    def to_json(self) -> dict:
        return {
            "blocks": self.blocks,
            "records": self.records,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "head": self.head,
            "dropped": self.dropped,
        }


@dataclass
class Report:
    streams: dict[str, StreamSummary] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    vehicle: str | None = None
    key_id: str | None = None  # hex kid of the key signatures were checked against

    @property
    def ok(self) -> bool:
        return not self.problems

    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "streams": {name: s.to_json() for name, s in sorted(self.streams.items())},
            "problems": [p.to_json() for p in self.problems],
        }
