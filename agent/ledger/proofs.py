"""Portable proofs: a few seconds of one stream, provable offline without the rest (docs/transparency.md).

A bundle (JSON, `carledger/proof-bundle/v1`) holds:

- `checkpoint`: a signed checkpoint of the stream's log with the witnesses'
  cosignature lines (a C2SP note);
- `blocks`: the blocks of the stream whose time span meets the window, in seq
  order, each as its COSE_Sign1 (header only) with its RFC 6962 inclusion
  proof into the checkpoint (C2SP tlog-proof's index and hashes: the index
  is the block's seq) and the selected records, each with its inclusion
  proof into the block's Merkle root;
- the block just before and just after (when the checkpoint covers it),
  header and proof only: their times show no other block meets the window;
- `window`: a signed note (`carledger/proof-window/v1`) the car signs at
  prove time with the stream's own key, naming the stream's log, the window
  and the checkpoint (size, root): the window's numbers are signed too, so no
  byte of the bundle can change without the bundle failing.

Nothing else of the stream is in it: the headers of those blocks (time
span, record count, policy digest, chain link) and the hashes the proofs
need. `verify_bundle` needs only the bundle and the keys of a policy.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from carledger.ledger import cose, encrypt, merkle
from carledger.ledger.block import Header, decode_record
from carledger.ledger.checkpoints import NoteSigner, Signed, origin_for
from carledger.ledger.errors import KeyFileError, LedgerError, MalformedBlock
from carledger.ledger.keys import FileSigner, Signer, VerifyKey, key_path, kid, load_signing_key
from carledger.ledger.store import Store
from carledger.transparency import note, tlog
from carledger.transparency.checkpoint import CheckpointError, open_checkpoint

__all__ = ["FORMAT", "ProofError", "Policy", "parse_policy", "build_bundle", "verify_bundle", "Verified"]

FORMAT = "carledger/proof-bundle/v1"
WINDOW_FORMAT = "carledger/proof-window/v1"


class ProofError(LedgerError):
    """A bundle that cannot be built, or that does not verify: the message says which part and why."""


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ProofError(f"{what}: not a base64 string")
    try:
        return note.b64decode_strict(text)
    except ValueError as exc:
        raise ProofError(f"{what}: {exc}") from None


def _hashes(items: Any, what: str) -> list[bytes]:
    """An inclusion proof: a list of base64 hashes (none, or missing, for a tree of one)."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise ProofError(f"{what}: not a list of base64 hashes")
    return [_unb64(h, what) for h in items]


def _record_time(data: bytes) -> int | None:
    try:
        return decode_record(data).t
    except MalformedBlock:
        return None


def _window_text(origin: str, t_from: int, t_to: int, size: int, root: bytes) -> str:
    """The window statement's text: its first line can never be a checkpoint's origin, so neither passes for the other."""
    return f"{WINDOW_FORMAT}\n{origin}\n{t_from}\n{t_to}\n{size}\n{_b64(root)}\n"


def stream_signer(store: Store, stream: str, vehicle: Signer | None = None) -> Signer:
    """The stream's own key, which signs a bundle's window statement as it signs the stream's blocks and checkpoints.

    The vehicle key (`vehicle`, default STORE/keys/vehicle.key) for the car's
    own streams and those sent under the VIN; for a recipient's pseudonymous
    stream, that recipient's key, derived again from STORE/keys/pseudonym.key
    for the recipient the vehicle key's statement names (docs/ledger-keys.md).
    """
    from carledger.ledger.identity import pseudonym_signer
    from carledger.ledger.keys import load_secret

    wanted = store.stream_key(stream)
    if vehicle is None:
        try:
            vehicle = FileSigner(load_signing_key(key_path(store.path)))
        except (KeyFileError, OSError) as exc:
            raise ProofError(f"{key_path(store.path)}: the stream's key is needed to sign the window: {exc} "
                             "(a vehicle key kept elsewhere: give --key, or -c with the agent's configuration)") from None
    if wanted is None or bytes(vehicle.public_key) == bytes(wanted):
        return vehicle
    cert = next((c for c in store.keyring().by_kid.values() if c.public_key == bytes(wanted)), None)
    secret = load_secret(store.path)
    if cert is None or secret is None:
        raise ProofError(f"stream {stream!r}: its key {kid(bytes(wanted)).hex()} is neither the vehicle key nor one "
                         "the vehicle key certified with a secret this store holds; the window needs the log's key")
    return pseudonym_signer(secret, store.vehicle_id, cert.recipient)


def build_bundle(store: Store, stream: str, t_from: int, t_to: int, signer: Signer | None = None) -> dict[str, Any]:
    """The bundle of `stream`'s records with times in [t_from, t_to] (microseconds), under its newest checkpoint.

    An encrypted block is disclosed whole (its two records are one
    ciphertext; the Merkle root covers that ciphertext, not the plaintext).
    `signer` (default: the stream's own key, `stream_signer`) must be the stream's log key:
    it signs the window statement.
    """
    if t_from > t_to:
        raise ProofError(f"--from is after --to ({t_from} > {t_to} µs)")
    signed: Signed | None = store.latest_checkpoint(stream)
    if signed is None:
        raise ProofError(f"stream {stream!r}: no signed checkpoint yet (the agent signs them as it seals)")
    size = signed.checkpoint.size
    rows = store.blocks_between(stream, 0, size - 1)
    meets = [r for r in rows if r.t1 >= t_from and r.t0 <= t_to]
    if not meets:
        raise ProofError(f"stream {stream!r}: no block of the first {size} (the newest checkpoint) meets that window")
    first, last = meets[0].seq, meets[-1].seq
    cosigs = store.cosignatures_of(signed.row)
    read = store.hash_reader(stream)
    blocks = []
    for row in rows[max(first - 1, 0): min(last + 2, size)]:
        entry: dict[str, Any] = {"sign1": _b64(bytes(row.sign1)),
                                 "proof": [_b64(h) for h in tlog.prove_record(size, row.seq, read)]}
        if first <= row.seq <= last:
            if row.records is None and row.count:
                raise ProofError(f"stream {stream!r}: block {row.seq}'s records were dropped by retention")
            records = store.records(row)
            whole = encrypt.is_sealed(records)
            picked = [i for i, r in enumerate(records) if whole or t_from <= (_record_time(r) or -1) <= t_to]
            entry["records"] = [{"index": i, "data": _b64(records[i]),
                                 "proof": [_b64(h) for h in merkle.inclusion_proof(records, i)]} for i in picked]
        blocks.append(entry)
    signer = signer or stream_signer(store, stream)
    origin = signed.checkpoint.origin
    if origin_for(bytes(signer.public_key), stream) != origin:
        raise ProofError(f"stream {stream!r}: its log {origin!r} is signed with another key than "
                         f"{kid(bytes(signer.public_key)).hex()} (a recipient's own key?); the window needs the log's key")
    window = note.sign_note(_window_text(origin, t_from, t_to, size, signed.checkpoint.root_hash),
                            [NoteSigner(origin, signer)])
    return {"format": FORMAT, "stream": stream, "from_us": t_from, "to_us": t_to, "window": window.decode(),
            "checkpoint": signed.note.decode() + "".join(cosigs), "blocks": blocks}


@dataclass(frozen=True)
class Policy:
    """Whom a verifier trusts, in the spirit of C2SP tlog-policy: the log's key, witness keys, a quorum."""

    log: note.Ed25519Verifier
    witnesses: tuple[note.Verifier, ...]
    quorum: int


def parse_policy(text: str, where: str) -> Policy:
    """Lines `log VKEY`, `witness VKEY` (repeatable), `quorum N`; '#' comments. ProofError names the line."""
    log_key, witnesses, quorum = None, [], None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        try:
            if word == "log" and log_key is None:
                log_key = note.parse_verifier_key(rest)
                if log_key.alg != note.ALG_ED25519:  # a cosignature (0x04) key is an Ed25519Verifier too
                    raise ProofError("the log key must be an Ed25519 (0x01) note key")
            elif word == "witness":
                witnesses.append(note.parse_verifier_key(rest))
            elif word == "quorum" and quorum is None and rest.isascii() and rest.isdigit():
                quorum = int(rest)
            else:
                raise ProofError("expected `log VKEY` (once), `witness VKEY` or `quorum N` (once)")
        except (note.NoteError, ProofError) as exc:
            raise ProofError(f"{where}:{number}: {exc}") from None
    if log_key is None:
        raise ProofError(f"{where}: no `log VKEY` line")
    quorum = len(witnesses) if quorum is None else quorum
    if quorum > len(witnesses):
        raise ProofError(f"{where}: quorum {quorum} of {len(witnesses)} witnesses can never be met")
    return Policy(log_key, tuple(witnesses), quorum)


@dataclass(frozen=True)
class Verified:
    stream: str
    size: int
    witnesses: tuple[str, ...]  # who cosigned, by key name
    blocks: tuple[int, int]  # seqs of the first and last block that meet the window
    records: list  # the disclosed records, decoded (Sample / Event), in order


def verify_bundle(bundle: Any, policy: Policy) -> Verified:
    """Every signature and proof in the bundle, with nothing but the policy's keys; ProofError names the first failure."""
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise ProofError(f"not a {FORMAT} bundle")
    stream, t_from, t_to = bundle.get("stream"), bundle.get("from_us"), bundle.get("to_us")
    if not isinstance(stream, str) or type(t_from) is not int or type(t_to) is not int:
        raise ProofError("stream, from_us, to_us: missing or of the wrong type")
    try:
        cp, opened = open_checkpoint(str(bundle.get("checkpoint", "")).encode(), [policy.log, *policy.witnesses],
                                     policy.log.name)
    except (note.NoteError, CheckpointError) as exc:
        raise ProofError(f"checkpoint: {exc}") from None
    if not any(s.name == policy.log.name and s.key_id == policy.log.key_id for s in opened.sigs):
        raise ProofError("checkpoint: not signed by the log's key (only by witnesses)")
    if not cp.origin.endswith("/" + stream):
        raise ProofError(f"checkpoint: the log {cp.origin!r} is not stream {stream!r}'s")
    cosigners = {s.name for s in opened.sigs if s.name != policy.log.name}
    if len(cosigners) < policy.quorum:
        raise ProofError(f"checkpoint: cosigned by {len(cosigners)} of the policy's witnesses, quorum {policy.quorum}")
    _check_window(bundle.get("window"), policy, cp.origin, t_from, t_to, cp.size, cp.root_hash)
    key = VerifyKey(policy.log.public_key)
    entries = bundle.get("blocks")
    if not isinstance(entries, list) or not entries:
        raise ProofError("blocks: missing or empty")
    prev: tuple[int, bytes] | None = None
    meets: list[int] = []
    edges = [False, False]  # the first / last entry is a block outside the window
    records: list = []
    for n, entry in enumerate(entries):
        what = f"blocks[{n}]"
        if not isinstance(entry, dict):
            raise ProofError(f"{what}: not an object")
        sign1 = _unb64(entry.get("sign1"), f"{what}.sign1")
        try:
            msg = cose.decode_sign1(sign1)
            if not cose.verify_sign1(msg, key):
                raise MalformedBlock("the signature does not verify with the log's key")
            header = Header.decode(msg.payload)
        except MalformedBlock as exc:
            raise ProofError(f"{what}: {exc}") from None
        proof = _hashes(entry.get("proof"), f"{what}.proof")
        if header.stream != stream or not tlog.check_record(proof, cp.size, cp.root_hash, header.seq,
                                                             merkle.leaf_hash(sign1)):
            raise ProofError(f"{what}: block {header.seq} is not in the checkpoint's tree (inclusion proof fails)")
        if prev is not None and (header.seq != prev[0] + 1 or header.prev != prev[1]):
            raise ProofError(f"{what}: block {header.seq} does not follow block {prev[0]} in the chain")
        prev = (header.seq, hashlib.sha256(msg.payload).digest())
        if header.t1 >= t_from and header.t0 <= t_to:
            meets.append(header.seq)
            records += _check_records(entry.get("records"), header, t_from, t_to, what)
        elif "records" in entry:
            raise ProofError(f"{what}: block {header.seq} is outside the window but carries records")
        elif n == 0 and len(entries) > 1:
            edges[0] = True
        elif n == len(entries) - 1 and meets:
            edges[1] = True
        else:
            raise ProofError(f"{what}: block {header.seq} is outside the window and not at its edge")
    if not meets:
        raise ProofError("no block of the bundle meets its window")
    if meets[0] > 0 and not edges[0]:
        raise ProofError(f"block {meets[0] - 1}, before the window, is missing: the bundle does not show it complete")
    if meets[-1] + 1 < cp.size and not edges[1]:
        raise ProofError(f"block {meets[-1] + 1}, after the window, is missing: the bundle does not show it complete")
    return Verified(stream, cp.size, tuple(sorted(cosigners)), (meets[0], meets[-1]), records)


def _check_window(window: Any, policy: Policy, origin: str, t_from: int, t_to: int, size: int, root: bytes) -> None:
    """The car's signed window statement must name exactly this bundle's log, window and checkpoint."""
    try:
        opened = note.open_note(str(window or "").encode(), [policy.log])
    except note.NoteError as exc:
        raise ProofError(f"window: {exc}") from None
    if opened.text != _window_text(origin, t_from, t_to, size, root):
        raise ProofError("window: the signed statement names another log, window or checkpoint than the bundle")


def _check_records(items: Any, header: Header, t_from: int, t_to: int, what: str) -> list:
    if not isinstance(items, list):
        raise ProofError(f"{what}.records: missing")
    out = []
    datas = []
    for i, item in enumerate(items):
        where = f"{what}.records[{i}]"
        if not isinstance(item, dict) or type(item.get("index")) is not int:
            raise ProofError(f"{where}: needs index, data, proof")
        data = _unb64(item.get("data"), f"{where}.data")
        proof = _hashes(item.get("proof"), f"{where}.proof")
        if not merkle.verify_inclusion(merkle.leaf_hash(data), item["index"], header.count, proof, header.root):
            raise ProofError(f"{where}: not record {item['index']} of block {header.seq} (inclusion proof fails)")
        datas.append(data)
    indices = [item["index"] for item in items]
    if t_from <= header.t0 and header.t1 <= t_to and indices != list(range(header.count)):
        raise ProofError(f"{what}.records: block {header.seq} lies inside the window but the bundle carries records "
                         f"{_spans(indices)} of its {header.count}: it does not show the block complete")
    sealed = encrypt.is_sealed(datas) and len(datas) == header.count
    for i, data in enumerate(datas):
        try:
            record = decode_record(data)
        except MalformedBlock as exc:
            raise ProofError(f"{what}.records[{i}]: {exc}") from None
        if not sealed and not t_from <= record.t <= t_to:
            raise ProofError(f"{what}.records[{i}]: time {record.t} µs is outside the window")
        out.append(record)
    return out


def _spans(indices: list[int]) -> str:
    """A short list of indices for an error line (the first few, then how many)."""
    shown = ", ".join(map(str, indices[:6]))
    return f"[{shown}{', …' if len(indices) > 6 else ''}] ({len(indices)})"


def dumps(bundle: dict[str, Any]) -> str:
    return json.dumps(bundle, indent=1, sort_keys=True) + "\n"
