"""The audit: every disclosure and every owner decision, read back from the ledger itself.

A *disclosure* is a run of blocks of one stream sealed under one policy
version: which stream, recipient and purpose, which blocks (seq range) and
time range, under which policy version and consent, how many records, and
how many of those blocks the broker and the recipient have acknowledged.
The recipient, purpose and consent come from the policy document the
`audit` stream recorded when that version was applied, so the answer is in
the signed ledger, not in a file that could have changed since. Owner
decisions are the `audit` stream's events (policy applied, consent granted
or revoked, pause, resume, retention, wipe).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from carledger.edr.captures import CRASH_STREAM
from carledger.ledger import Event, Header, Store, cose, decode_record, decode_records
from carledger.owner.actions import AUDIT_STREAM

Progress = Callable[[int, int], None]
_OWN = frozenset({"health", AUDIT_STREAM})


@dataclass
class Disclosure:
    stream: str
    recipient: str | None
    purpose: str | None
    local: bool
    policy_version: int | None
    policy_digest: str
    consent: dict[str, str] | None
    first_seq: int
    last_seq: int
    blocks: int = 0
    records: int = 0
    t0: float = 0.0
    t1: float = 0.0
    synced: int = 0
    acked: int = 0


@dataclass
class Decision:
    t: float
    kind: str
    detail: dict[str, Any]


@dataclass
class AuditReport:
    vehicle: str | None
    disclosures: list[Disclosure] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "vehicle": self.vehicle,
            "disclosures": [asdict(d) for d in self.disclosures],
            "decisions": [asdict(d) for d in self.decisions],
        }


def audit_store(path: str, progress: Progress | None = None) -> AuditReport:
    """Read the audit from a store (read-only: it may run while the agent writes)."""
    with Store.open_readonly(path) as store:
        meta = store.meta()
        report = AuditReport(meta.get("vehicle") if isinstance(meta.get("vehicle"), str) else None)
        total = store.block_count()
        done = 0
        versions: dict[str, tuple[int, dict[str, Any]]] = {}  # digest -> (version, stream name -> stream document)
        for row in store.iter_blocks(AUDIT_STREAM):
            done += 1
            if row.records is None:
                continue
            for data in decode_records(row.records):
                rec = decode_record(data)
                if isinstance(rec, Event):
                    report.decisions.append(Decision(rec.t / 1e6, rec.kind, dict(rec.detail)))
                    if rec.kind == "policy-applied" and "digest" in rec.detail:
                        doc = rec.detail.get("document") or {}
                        streams = {s.get("name"): s for s in doc.get("streams", []) if isinstance(s, dict)}
                        edr = doc.get("edr")
                        if isinstance(edr, dict):  # crash captures: the [edr] section says who gets them
                            streams[CRASH_STREAM] = {
                                "recipient": edr.get("recipient"), "purpose": edr.get("purpose") or "crash capture",
                                "local": edr.get("recipient") is None, "consent": edr.get("consent"),
                            }
                        versions[rec.detail["digest"]] = (rec.detail.get("version"), streams)
        for name in sorted(s for s in store.streams() if s not in _OWN):
            current: Disclosure | None = None
            for row in store.iter_blocks(name):
                done += 1
                if progress is not None and done % 256 == 0:
                    progress(done, total)
                header = Header.decode(cose.decode_sign1(row.sign1).payload)
                digest = header.policy.hex()
                if current is None or current.policy_digest != digest or header.seq != current.last_seq + 1:
                    current = _disclosure(name, digest, header.seq, versions.get(digest))
                    report.disclosures.append(current)
                current.last_seq = header.seq
                current.blocks += 1
                current.records += header.count
                current.t0 = header.t0 / 1e6 if current.blocks == 1 else current.t0
                current.t1 = header.t1 / 1e6
                current.synced += int(bool(row.synced))
                current.acked += int(bool(row.acked))
        if progress is not None:
            progress(total, total)
    return report


def _disclosure(stream: str, digest: str, seq: int, version: tuple[int, dict[str, Any]] | None) -> Disclosure:
    doc = version[1].get(stream, {}) if version else {}
    return Disclosure(
        stream=stream,
        recipient=doc.get("recipient"),
        purpose=doc.get("purpose"),
        local=bool(doc.get("local", False)),
        policy_version=version[0] if version else None,
        policy_digest=digest,
        consent=doc.get("consent"),
        first_seq=seq,
        last_seq=seq - 1,
    )
