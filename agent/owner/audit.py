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

A disclosure's time range is the earliest and latest time any of its blocks
covers (a stream's first block holds its start event at the time the policy
was applied, which can be later than the samples of a replayed log). Its
consent is the one the policy document gave, as the owner's later consent
decisions for that stream left it: a revoked consent shows when it was
revoked, not the expiry it no longer has.

Like `log list`, the audit reads the owner's own store without checking
signatures (it is the owner's view of their car, and can run while the
agent writes); `carledger verify` checks every block it reads from.

`sent` merges the `disclosure` events (one per ack) into runs: consecutive
acks of one stream to one recipient, with no other audit event between
them, become one run with the blocks, the records and the period the data
covers. The JSON keeps every event in `decisions` as well.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from carledger.edr.captures import CRASH_STREAM
from carledger.ledger import Event, Header, Store, cose, decode_record, decode_records
from carledger.owner.actions import AUDIT_STREAM

Progress = Callable[[int, int], None]
_OWN = frozenset({"health", AUDIT_STREAM})
DISCLOSURE = "disclosure"
#: What the owner decided (everything else in the audit stream the car did by itself).
OWNER_DECISIONS = frozenset({"policy-applied", "consent-granted", "consent-revoked", "pause", "resume", "wipe",
                             "class-allowed", "class-withdrawn"})
#: `consent-expired` is the car's: it ended the stream when the consent the owner gave ran out.
_CONSENT_EVENTS = ("consent-granted", "consent-revoked")


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

    @property
    def by(self) -> str:
        return "owner" if self.kind in OWNER_DECISIONS else "car"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "by": self.by}


@dataclass
class Sent:
    """Consecutive acked disclosures of one stream to one recipient, merged: what left the car, in one line."""

    stream: str
    recipient: str | None
    t: float  # the first ack
    t_last: float  # the last ack
    seqs: list[list[int]] = field(default_factory=list)  # [[first, last], ...], merged
    records: int = 0
    acks: int = 0  # disclosure events merged into this run
    t0: float | None = None  # the period the blocks cover (from their signed headers)
    t1: float | None = None
    # What the blocks held, as the disclosure events name it (None: an event of a version that did not name it)
    policy: dict[str, Any] | None = None  # {"version", "digest"}
    consent_id: str | None = None
    signals: list[str] | None = None
    aggregates: list[str] | None = None
    metrics: list[str] | None = None

    @staticmethod
    def key(event: Decision) -> tuple:
        """Disclosures merge only while they name the same stream, recipient, policy and consent."""
        d = event.detail
        policy = d.get("policy") if isinstance(d.get("policy"), dict) else {}
        return d.get("stream"), d.get("recipient"), policy.get("digest"), d.get("consent_id")

    def named(self, event: Decision) -> None:
        """Take what the first event of the run names (every event of a run names the same)."""
        d = event.detail
        self.policy = d.get("policy") if isinstance(d.get("policy"), dict) else None
        self.consent_id = d.get("consent_id") if isinstance(d.get("consent_id"), str) else None
        for what in ("signals", "aggregates", "metrics"):
            items = d.get(what)
            setattr(self, what, [str(x) for x in items] if isinstance(items, list) else None)

    def add(self, event: Decision) -> None:
        self.t_last = event.t
        self.acks += 1
        records = event.detail.get("records")
        self.records += records if type(records) is int else 0
        ranges = [r for r in event.detail.get("seqs") or [] if _is_range(r)]
        self.seqs = merge_ranges(self.seqs + [list(r) for r in ranges])


@dataclass
class AuditReport:
    vehicle: str | None
    disclosures: list[Disclosure] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "vehicle": self.vehicle,
            "disclosures": [asdict(d) for d in self.disclosures],
            "decisions": [d.to_json() for d in self.decisions],
            "sent": [asdict(s) for s in self.sent],
        }


def audit_store(path: str, progress: Progress | None = None) -> AuditReport:
    """Read the audit from a store (read-only: it may run while the agent writes)."""
    with Store.open_readonly(path) as store:
        meta = store.meta()
        report = AuditReport(meta.get("vehicle") if isinstance(meta.get("vehicle"), str) else None)
        total = store.block_count()
        done = 0
        versions: dict[str, tuple[int, dict[str, Any], float]] = {}  # digest -> (version, streams by name, applied at)
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
                        versions[rec.detail["digest"]] = (rec.detail.get("version"), streams, rec.t / 1e6)
        report.sent = _sent_runs(report.decisions)
        periods: dict[str, dict[int, tuple[float, float]]] = {run.stream: {} for run in report.sent}
        for name in sorted(s for s in store.streams() if s not in _OWN):
            current: Disclosure | None = None
            period = periods.get(name)
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
                t0, t1 = header.t0 / 1e6, header.t1 / 1e6
                current.t0 = t0 if current.blocks == 1 else min(current.t0, t0)
                current.t1 = t1 if current.blocks == 1 else max(current.t1, t1)
                if period is not None:
                    period[header.seq] = (t0, t1)
                current.synced += int(bool(row.synced))
                current.acked += int(bool(row.acked))
        if progress is not None:
            progress(total, total)
    for d in report.disclosures:
        d.consent = _consent_now(d, versions.get(d.policy_digest), report.decisions)
    for run in report.sent:
        _cover(run, periods.get(run.stream, {}))
    return report


def _consent_now(d: Disclosure, version: tuple[int, dict[str, Any], float] | None, decisions: list[Decision]) -> dict[str, str] | None:
    """The disclosure's consent as the owner's later decisions on its stream left it (revoked: no expiry)."""
    if d.local or version is None:
        return d.consent
    consent = d.consent
    for e in decisions:
        if e.kind in _CONSENT_EVENTS and e.detail.get("stream") == d.stream and e.t >= version[2]:
            if e.kind == "consent-revoked":
                consent = {k: v for k, v in {"granted": (consent or {}).get("granted"), "revoked": e.detail.get("revoked")}.items() if v}
            else:
                consent = {"granted": e.detail.get("granted"), "expires": e.detail.get("expires")}
    return consent


def _sent_runs(decisions: list[Decision]) -> list[Sent]:
    """Disclosure events merged per (stream, recipient) until any other audit event comes between."""
    runs: list[Sent] = []
    running: dict[tuple[Any, Any], Sent] = {}
    for e in decisions:
        if e.kind != DISCLOSURE:
            running.clear()
            continue
        stream, recipient = e.detail.get("stream"), e.detail.get("recipient")
        if not isinstance(stream, str):
            continue
        key = Sent.key(e)
        run = running.get(key)
        if run is None:
            for other in [k for k in running if k[:2] == key[:2]]:
                del running[other]  # another policy or consent: that run of the stream is over
            run = running[key] = Sent(stream, recipient if isinstance(recipient, str) else None, e.t, e.t)
            run.named(e)
            runs.append(run)
        run.add(e)
    return runs


def _cover(run: Sent, period: dict[int, tuple[float, float]]) -> None:
    """The period a run's blocks cover, from their signed headers (blocks the store no longer holds: left out)."""
    times = [period[seq] for first, last in run.seqs for seq in range(first, last + 1) if seq in period]
    if times:
        run.t0 = min(t for t, _ in times)
        run.t1 = max(t for _, t in times)


def _is_range(r: Any) -> bool:
    return isinstance(r, (list, tuple)) and len(r) == 2 and all(type(x) is int for x in r) and r[0] <= r[1]


def merge_ranges(ranges: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], last)
        else:
            out.append([first, last])
    return out


def _disclosure(stream: str, digest: str, seq: int, version: tuple[int, dict[str, Any], float] | None) -> Disclosure:
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
