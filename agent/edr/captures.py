"""Reading crash captures back: the list anyone holding the store may see, and the content only a key opens.

A capture is a run of blocks in the `crash` stream (docs/edr.md):

    seq a      cleartext  event `capture`      id, trigger, deployment, policy, key ids
    a+1 .. b-1 encrypted  samples and events   the pre-crash ticks, the event, the post-crash window
    seq b      cleartext  event `capture-end`  the data's seqs and record count, the final deployment

and, when the capture is overwritten later (a non-deployment capture beyond
the policy's number), a cleartext `capture-overwritten` event that declares
its data blocks' seqs before their records are dropped. The metadata stays
readable without a key so that the car can keep its overwrite rule and the
owner can list captures; what the car did is encrypted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from carledger.ledger import Event, MalformedBlock, Sample, Store, decode_record, open_block
from carledger.ledger.encrypt import PrivateKey, is_sealed, open_sealed, recipient_kid

CRASH_STREAM = "crash"
CAPTURE = "capture"
CAPTURE_END = "capture-end"
OVERWRITTEN = "capture-overwritten"
END_OF_EVENT = "end-of-event"
DELTA_V = "edr.DeltaV.Longitudinal"  # km/h since the start of the trigger window, recorded during the event


@dataclass
class CaptureInfo:
    """What the cleartext metadata says of one capture."""

    capture: int
    t: float  # the trigger, seconds since the epoch
    start_seq: int
    trigger: dict[str, Any]
    deployment: bool
    policy: dict[str, Any]
    keys: list[dict[str, str]]
    end_seq: int | None = None
    data_seqs: tuple[int, int] | None = None  # first and last data block, from capture-end
    records: int | None = None
    end_of_event: float | None = None
    interrupted: bool = False
    overwritten: bool = False
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.overwritten:
            return "overwritten"
        if self.end_seq is None:
            return "recording"
        return "interrupted" if self.interrupted else "complete"

    def to_json(self) -> dict[str, Any]:
        return {
            "capture": self.capture, "t": self.t, "trigger": self.trigger, "deployment": self.deployment,
            "status": self.status, "policy": self.policy, "keys": self.keys, "seqs": [self.start_seq, self.end_seq],
            "data_seqs": list(self.data_seqs) if self.data_seqs else None, "records": self.records,
            "end_of_event": self.end_of_event,
        }


class CaptureError(Exception):
    """A capture that cannot be read: unknown, overwritten, or failing verification."""


def _cleartext_events(store: Store, verify_key: Any = None) -> Iterator[tuple[int, Event]]:
    """(seq, event) of every cleartext event in the crash stream, checked against the vehicle key when given."""
    for row in store.iter_blocks(CRASH_STREAM):
        if row.records is None:
            continue
        records = store.records(row)
        if is_sealed(records):
            continue
        if verify_key is not None:
            records = open_block(store.message(row), verify_key).records
        for raw in records:
            rec = decode_record(raw)
            if isinstance(rec, Event):
                yield row.seq, rec


def read_captures(store: Store, verify_key: Any = None) -> list[CaptureInfo]:
    """Every capture of the store, oldest first, from the cleartext metadata alone."""
    captures: dict[int, CaptureInfo] = {}
    for seq, event in _cleartext_events(store, verify_key):
        d = event.detail
        number = d.get("capture")
        if type(number) is not int:
            continue
        if event.kind == CAPTURE:
            captures[number] = CaptureInfo(
                capture=number, t=event.t / 1e6, start_seq=seq, trigger=dict(d.get("trigger") or {}),
                deployment=bool(d.get("deployment")), policy=dict(d.get("policy") or {}),
                keys=list(d.get("keys") or []), detail=dict(d),
            )
        elif number in captures and event.kind == CAPTURE_END:
            info = captures[number]
            info.end_seq = seq
            seqs = d.get("seqs") or []
            if seqs and isinstance(seqs[0], list) and len(seqs[0]) == 2:
                info.data_seqs = (seqs[0][0], seqs[0][1])
            info.records = d.get("records")
            info.deployment = info.deployment or bool(d.get("deployment"))
            info.end_of_event = d.get("end_of_event")
            info.interrupted = bool(d.get("interrupted"))
        elif number in captures and event.kind == OVERWRITTEN:
            captures[number].overwritten = True
    return sorted(captures.values(), key=lambda c: c.capture)


@dataclass
class CaptureContent:
    """A capture opened with a recipient's key, every block verified.

    Its `records` are what the car recorded during the capture (samples and
    events such as end-of-event), the count the capture-end event signs and
    every command reports; the cleartext capture and capture-end events are
    its metadata, not records of it.
    """

    info: CaptureInfo
    samples: list[Sample]
    events: list[Event]
    blocks: int
    sample_seqs: list[int] = field(default_factory=list)  # the block seq of each sample
    event_seqs: list[int] = field(default_factory=list)

    @property
    def data_events(self) -> list[Event]:
        return [e for e in self.events if e.kind not in (CAPTURE, CAPTURE_END)]

    @property
    def records(self) -> int:
        return len(self.samples) + len(self.data_events)


def open_capture(store: Store, number: int, key: PrivateKey, verify_key: Any) -> CaptureContent:
    """Verify and decrypt capture `number`: signatures, the chain through its blocks, the record count.

    CaptureError names the first block that fails, or says that `key` is not
    one of the keys the capture's signed metadata names; DecryptError when a
    block's own key list disagrees with that metadata.
    """
    infos = {c.capture: c for c in read_captures(store, verify_key)}
    info = infos.get(number)
    if info is None:
        known = ", ".join(str(n) for n in infos) or "none"
        raise CaptureError(f"no capture {number} in {store.path} (captures: {known})")
    if info.overwritten:
        raise CaptureError(f"capture {number} was overwritten (its data is gone; the metadata remains)")
    mine = recipient_kid(key.public_key).hex()
    if info.keys and mine not in {k.get("kid") for k in info.keys}:  # the signed metadata names its keys
        names = ", ".join(str(k.get("name", "?")) for k in info.keys)
        raise CaptureError(f"capture {number} is not encrypted to key {mine} (its keys: {names})")
    last = info.end_seq if info.end_seq is not None else None
    content = CaptureContent(info, [], [], 0)
    prev_digest = None
    expected = info.start_seq
    for row in store.iter_blocks(CRASH_STREAM):
        if row.seq < info.start_seq or (last is not None and row.seq > last):
            continue
        if row.seq != expected:
            raise CaptureError(f"capture {number}: block seq {expected} is missing")
        expected += 1
        if row.records is None:
            raise CaptureError(f"capture {number}: the records of block seq {row.seq} are gone")
        try:
            block = open_block(store.message(row), verify_key)
        except MalformedBlock as exc:
            raise CaptureError(f"capture {number}: block seq {row.seq}: {exc}") from None
        if prev_digest is not None and block.header.prev != prev_digest:
            raise CaptureError(f"capture {number}: block seq {row.seq} does not link to seq {row.seq - 1}")
        prev_digest = block.digest
        content.blocks += 1
        records = block.records
        if is_sealed(records):
            try:
                records = open_sealed(block.header, records, key)
            except MalformedBlock as exc:
                raise CaptureError(f"capture {number}: block seq {row.seq}: {exc}") from None
        for raw in records:
            rec = decode_record(raw)
            if isinstance(rec, Sample):
                content.samples.append(rec)
                content.sample_seqs.append(row.seq)
            else:
                content.events.append(rec)  # type: ignore[arg-type]
                content.event_seqs.append(row.seq)
        if last is None and any(e.kind == CAPTURE_END for e in content.events):
            break
    if info.records is not None and content.records != info.records:
        raise CaptureError(f"capture {number}: {content.records} records, the capture-end event says {info.records}")
    return content


def capture_bundle(store: Store, info: CaptureInfo) -> dict[str, Any]:
    """A proof bundle (docs/transparency.md, "Portable proofs") of one capture: its blocks start_seq..end_seq.

    The window is the capture's own blocks' time span, so the bundle holds
    them whole (the data blocks are ciphertext: the investigator opens them
    with a key the policy's [edr] names), the blocks just outside as edges,
    and the crash stream's newest checkpoint with its cosignatures. Refused
    while the capture is recording, once it was overwritten, or while no
    signed checkpoint covers its end block yet.
    """
    from carledger.ledger.proofs import ProofError, build_bundle

    if info.overwritten or info.end_seq is None:
        raise CaptureError(f"capture {info.capture} is {info.status}: no proof of a whole capture")
    signed = store.latest_checkpoint(CRASH_STREAM)
    if signed is None or signed.checkpoint.size <= info.end_seq:
        raise CaptureError(f"capture {info.capture}: no signed checkpoint of the crash stream covers its last block "
                           f"{info.end_seq} yet (the agent signs one when it stops)")
    rows = store.blocks_between(CRASH_STREAM, info.start_seq, info.end_seq)
    try:
        return build_bundle(store, CRASH_STREAM, min(r.t0 for r in rows), max(r.t1 for r in rows))
    except (ProofError, ValueError) as exc:
        raise CaptureError(f"capture {info.capture}: {exc}") from None
