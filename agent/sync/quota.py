"""The disk quota: which records the agent drops when its store grows too large (docs/sync.md).

Only records go (`Store.drop_records`); the signed headers stay, so every
chain still links and verifies. Every drop is declared first by a signed
`eviction` event in the evicted stream's own chain, in the form the verifier
checks (`stream`, `seqs`), so the recipient, holding only its stream, sees why
records are missing. It runs in the pipeline thread, which owns the writer:

    plan = plan_eviction(ledger.store, quota_bytes)
    for stream, detail in plan.events:
        ledger.writer(stream).add_event(now, "eviction", detail)
    ledger.seal()                  # declared and durable before anything goes
    plan.apply(ledger.store)

Retention (records past their stream's age) is the owner's `retention`
action; for an outbound stream it drops only acked blocks
(`Store.expired(..., acked_only=True)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from carledger.ledger import Store

__all__ = ["PROTECTED", "EvictionPlan", "plan_eviction", "seq_ranges"]

PROTECTED = frozenset({"crash", "audit"})  # never evicted: crash captures and the audit trail


def seq_ranges(seqs: Iterable[int]) -> list[list[int]]:
    """Sequence numbers as inclusive ranges: [1, 2, 3, 7] -> [[1, 3], [7, 7]]."""
    out: list[list[int]] = []
    for seq in sorted(seqs):
        if out and seq == out[-1][1] + 1:
            out[-1][1] = seq
        else:
            out.append([seq, seq])
    return out


@dataclass
class EvictionPlan:
    """Blocks whose records go (acked ones first), and the events declaring them, per stream."""

    acked: list[int] = field(default_factory=list)
    unacked: list[int] = field(default_factory=list)
    events: list[tuple[str, dict]] = field(default_factory=list)
    freed: int = 0  # bytes of records dropped

    def __bool__(self) -> bool:
        return bool(self.acked or self.unacked)

    def apply(self, store: Store) -> None:
        """Drop the records. Only after the eviction events are sealed: nothing goes undeclared."""
        if self.acked or self.unacked:
            store.drop_records(self.acked + self.unacked)


def plan_eviction(
    store: Store, quota: int, *, low_water: float = 0.9, locked: Iterable[str] = (), batch: int = 1024
) -> EvictionPlan:
    """Which records to drop to bring the store under `quota` bytes (down to `low_water` of it).

    The oldest acked blocks first (their recipient has them), then the oldest
    unacked. Each stream gets one `eviction` event detail: reason, stream,
    seqs (ranges), blocks, records and how many of them were unacked. Crash
    captures, the audit trail and `locked` streams are never planned. An
    empty plan when the store is under quota.
    """
    plan = EvictionPlan()
    size = store.stored_bytes()
    if size <= quota:
        return plan
    target = size - int(quota * low_water)
    exclude = sorted(PROTECTED | set(locked))
    runs: dict[str, dict] = {}
    for acked in (True, False):
        after = 0
        while plan.freed < target:
            rows = store.oldest_with_records(acked=acked, exclude=exclude, after_id=after, limit=batch)
            if not rows:
                break
            for block_id, stream, seq, count, nbytes in rows:
                if plan.freed >= target:
                    break
                (plan.acked if acked else plan.unacked).append(block_id)
                plan.freed += nbytes or 0
                run = runs.setdefault(stream, {"seqs": [], "records": 0, "unacked": 0})
                run["seqs"].append(seq)
                run["records"] += count
                run["unacked"] += 0 if acked else 1
            after = rows[-1][0]
    for stream, run in runs.items():
        plan.events.append((stream, {
            "reason": "disk-quota", "stream": stream, "seqs": seq_ranges(run["seqs"]), "blocks": len(run["seqs"]),
            "records": run["records"], "unacked": run["unacked"],
        }))
    return plan
