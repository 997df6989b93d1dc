"""What a disclosure names: the signals, the policy version and the consent under which blocks left the car.

Every `disclosure` event in the `audit` stream says, besides the stream, the
recipient and the blocks, exactly what those blocks could hold, so that the
audit answers "what did the insurer get?" without the policy file at hand:

- `policy`: the version and digest each block's signed header names (blocks
  acked together but sealed under two versions make two events);
- `signals`: the raw signals that version sends on the stream, resolved
  against the car's signals (its DBCs) and the classes the stream allows;
  `aggregates` and `metrics`: what is computed in the car and sent instead;
- `consent` (`granted`, `expires`) and `consent_id`: the consent in force
  when the recipient acked them (the car sends a stream only while one is).

A consent id is the SHA-256 (hex) of the deterministic CBOR of the map
{"stream", "recipient", "purpose", "granted", "expires"} (times in the form
every owner record uses, 2027-06-03T00:00:00Z), so anyone holding the audit,
or the recipient holding its chain's consent details, can recompute it.
"""

from __future__ import annotations

import hashlib
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from carledger.ledger import Header, cose
from carledger.ledger.cbor import encode
from carledger.owner.state import OwnerState, iso, seconds
from carledger.policy import Consent, Policy, Stream, load_policy
from carledger.policy.document import KnownSignals, PolicyError

#: Record names of the on-board metrics (carledger.policy.metrics), by the policy's metric key.
METRIC_RECORDS = {
    "distance": "metric.distance_km",
    "harsh_braking": "metric.harsh_braking_count",
    "harsh_acceleration": "metric.harsh_acceleration_count",
    "night_driving": "metric.night_share",
    "over_speed": "metric.over_speed_share",
}


def consent_id(stream: str, recipient: str | None, purpose: str | None, granted: str | None, expires: str | None) -> str:
    """The id of one consent: SHA-256 over what it is (who, what for, which stream, from when, until when)."""
    fields = {"stream": stream, "recipient": recipient, "purpose": purpose, "granted": granted, "expires": expires}
    return hashlib.sha256(encode(fields)).hexdigest()


def consent_fields(stream: Stream, consent: Consent | None) -> dict[str, Any]:
    """`consent` and `consent_id` of a stream's consent, for an audit event; {} without one."""
    if consent is None or stream.local:
        return {}
    granted, expires = iso(seconds(consent.granted)), iso(seconds(consent.expires))
    return {"consent": {"granted": granted, "expires": expires},
            "consent_id": consent_id(stream.name, stream.recipient, stream.purpose, granted, expires)}


def resolved(policy: Policy, stream: Stream, known: KnownSignals | None) -> dict[str, list[str]]:
    """What the stream's records can name under `policy`: raw signals, aggregates, metrics.

    Without the car's signals (`known` None) the raw signals are the policy's patterns as written.
    """
    pairs = [(item, None) if isinstance(item, str) else (item[0], item[1]) for item in known or ()]
    if known is None:
        raw = list(stream.signals) if stream.raw else []
    else:
        raw = sorted({n for n, s in pairs if policy.allowed(stream, n, s)})
    aggregates = sorted({f"{name}.{fn}" for a in stream.aggregates for name in _names(a.signals, pairs, known)
                         for fn in a.functions})
    enabled = stream.metrics.enabled() if stream.metrics is not None else ()
    metrics = [METRIC_RECORDS.get(m, m) for m in enabled]
    if {"night_driving", "over_speed"} & set(enabled):
        metrics.append("metric.driving_time_s")  # the weight of the shares (carledger.policy.engine)
    return {"signals": raw, "aggregates": aggregates, "metrics": metrics}


def _names(patterns: tuple[str, ...], pairs: list[tuple[str, str | None]], known: KnownSignals | None) -> list[str]:
    if known is None:
        return list(patterns)
    return [n for n, s in pairs if any(fnmatchcase(n, p) or (s is not None and fnmatchcase(s, p)) for p in patterns)]


def disclosure_events(
    store: Any, state: OwnerState, known: KnownSignals | None,
    stream_name: str, recipient: str | None, first: int, last: int, records: int,
) -> list[dict[str, Any]]:
    """The detail of each `disclosure` event for blocks first..last of a stream: one per policy version they name."""
    runs: list[tuple[str, list[int], int]] = []  # (policy digest, [first, last], records)
    for row in store.blocks_between(stream_name, first, last):
        digest = Header.decode(cose.decode_sign1(row.sign1).payload).policy.hex()
        if runs and runs[-1][0] == digest and runs[-1][1][1] == row.seq - 1:
            runs[-1] = (digest, [runs[-1][1][0], row.seq], runs[-1][2] + row.count)
        else:
            runs.append((digest, [row.seq, row.seq], row.count))
    if not runs:  # the store no longer holds them: what the collector's ack said
        runs = [("", [first, last], records)]
    effective = {s.name: s for s in state.effective_policy().streams}
    policies: dict[str, Policy | None] = {}
    out = []
    for digest, seqs, count in runs:
        detail: dict[str, Any] = {"stream": stream_name, "recipient": recipient, "seqs": [seqs], "records": count}
        policy = policies.setdefault(digest, _policy_of(state, digest))
        stream = _stream(policy, stream_name)
        if policy is not None:
            detail["policy"] = {"version": policy.version, "digest": digest}
        if stream is not None:
            detail["purpose"] = stream.purpose
            detail.update(resolved(policy, stream, known))  # type: ignore[arg-type]
        now = effective.get(stream_name)
        if now is not None:
            detail.update(consent_fields(now, now.consent))
        out.append({k: v for k, v in detail.items() if v is not None})
    return out


def _stream(policy: Policy | None, name: str) -> Stream | None:
    if policy is None:
        return None
    try:
        return policy.stream(name)
    except KeyError:
        return None


def _policy_of(state: OwnerState, digest: str) -> Policy | None:
    """The policy version with this digest: the one in force, or the copy STORE/owner/policies/ keeps.

    Those files are not signed, but a file is taken only when its digest is
    the one the blocks' signed headers name: an edited file is not used.
    """
    if not digest:
        return None
    if state.policy.digest().hex() == digest:
        return state.policy
    for path in state.history():
        if not path.stem.endswith(digest[:12]):
            continue
        try:
            policy = load_policy(Path(path), check_expiry=False)
        except PolicyError:
            continue
        if policy.digest().hex() == digest:
            return policy
    return None


__all__ = ["METRIC_RECORDS", "consent_fields", "consent_id", "disclosure_events", "resolved"]
