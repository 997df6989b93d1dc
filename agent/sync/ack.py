"""The collector's signed ack, and the collector keys a car trusts to sign it (docs/sync.md, "Acks").

An ack makes the car mark blocks acked, and retention may then drop their
records, so the car acts only on an ack that the collector of the stream's
recipient signed: a COSE_Sign1 (EdDSA, deterministic CBOR, the profile of the
blocks) whose payload names the vehicle, the stream, the seq and the digest
of the car's block at that seq. A broker, or anyone who can publish on the ack
topic, can then only withhold acks or replay genuine ones, and a genuine ack
names one vehicle's one stream and one block: replayed elsewhere it matches
nothing.

The collector's key is made at its first start in COLLECTOR/keys/collector.key;
the car keeps the public keys it trusts, one per recipient, in
STORE/keys/collectors.json (`carledger sync STORE --enroll-collector`).

Receipts (docs/transparency.md, "Receipts"): the same Ed25519 key also
cosigns, in C2SP `cosignature/v1`, the checkpoint text of the stream's tree as
the collector holds it up to the acked seq, and the ack carries that line. The
two uses cannot be confused: a COSE Sig_structure starts with byte 0x84, a
cosigned message with "cosignature/v1\n". The cosigner's key name is derived
from the key alone (`cosigner_name`), so car and collector agree on it
without naming the recipient.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import time
from typing import Any, Callable, NamedTuple

import cbor2

from carledger.ledger import cbor, cose
from carledger.ledger.cbor import canonical as _canonical
from carledger.ledger.errors import KeyFileError, MalformedBlock
from carledger.ledger.files import private_dir, write_private
from carledger.ledger.keys import KEY_DIR, SigningKey, VerifyKey, kid, load_or_create_secret, load_verify_key
from carledger.transparency import note
from carledger.transparency.checkpoint import Checkpoint
from carledger.transparency.cosignature import CosignatureSigner, CosignatureVerifier, cosignature_times

__all__ = [
    "ACK_TYPE",
    "AckRejected",
    "COLLECTORS_FILE",
    "COLLECTOR_KEY",
    "MAX_ACK",
    "MAX_SEQ",
    "Ack",
    "AckSigner",
    "collector_key",
    "keep_receipt",
    "check_receipt",
    "cosign_tree",
    "cosigner",
    "cosigner_name",
    "collector_keys",
    "enroll_collector",
    "retired_collector_keys",
    "open_ack",
    "sign_ack",
]

ACK_TYPE = "application/carledger-ack+cbor"  # protected header 3 (content type): what the payload is
MAX_ACK = 1024  # bytes: a genuine ack is about 200
MAX_SEQ = (1 << 63) - 1  # a seq the store can hold (SQLite INTEGER); anything above is hostile
COLLECTOR_KEY = "collector.key"  # in COLLECTOR/keys/
COLLECTORS_FILE = "collectors.json"  # in STORE/keys/: {recipient: public key hex}
# In STORE/keys/: {recipient: [{"key": hex, "retired": POSIX seconds}, ...]}, the keys enrolled before, oldest first
RETIRED_COLLECTORS_FILE = "collectors-retired.json"
_FIELDS = ("vehicle", "stream", "seq", "digest")
_OPTIONAL = ("cosignature",)  # the receipt line; an ack without one still acks
MAX_LINE = 200  # bytes of a cosignature line: a genuine one is about 150
COSIGNER_PREFIX = "carledger.example/collector"

# Causes an ack is ignored for (counted per cause by the syncer).
MALFORMED, NO_KEY, BAD_SIGNATURE, WRONG_SUBJECT, OUT_OF_RANGE = (
    "malformed", "no-collector-key", "bad-signature", "wrong-subject", "out-of-range")


class AckRejected(Exception):
    """An ack the car must not act on; `cause` is one of the constants above."""

    def __init__(self, cause: str, detail: str):
        super().__init__(detail)
        self.cause = cause


class Ack(NamedTuple):
    vehicle: str
    stream: str
    seq: int
    digest: bytes
    cosignature: str | None = None  # the collector's cosignature/v1 line over the tree up to seq (unchecked here)


def cosigner_name(public_key: bytes) -> str:
    """The note key name of a collector's cosigning key: derived from the key, so both sides compute it."""
    return f"{COSIGNER_PREFIX}/{kid(public_key).hex()}"


def cosigner(public_key: Any) -> CosignatureVerifier:
    """The 0x04 verifier of an enrolled collector key: what checks its receipts."""
    raw = bytes(load_verify_key(public_key))
    return CosignatureVerifier(cosigner_name(raw), raw)


def cosign_tree(key: SigningKey, origin: str, size: int, root: bytes, clock: Callable[[], float] = time.time) -> str:
    """The collector's receipt: its cosignature line over the checkpoint text (origin, size, root) of what it holds."""
    return AckSigner(key, clock).receipt(origin, size, root)


def check_receipt(public_key: Any, text: str, line: str) -> int:
    """The time a collector's receipt line states, if it is `public_key`'s cosignature of the checkpoint `text`.

    ValueError (why) otherwise: malformed, another key, or a signature over another text.
    """
    verifier = cosigner(public_key)
    try:
        opened = note.open_note(text.encode() + b"\n" + line.encode() + b"\n", [verifier])
    except note.NoteError as exc:
        raise ValueError(f"not a cosignature by {verifier.name} of this checkpoint: {exc}") from None
    return cosignature_times(opened, [verifier])[verifier.name]


def sign_ack(key: SigningKey, ack: Ack) -> bytes:
    """The collector holds and verified every block of `ack.stream` up to `ack.seq`, whose digest is `ack.digest`."""
    return AckSigner(key).ack(ack)


class AckSigner:
    """A collector key's acks and receipts, with what does not change between two of them made once.

    `sign_ack` and `cosign_tree` make one for a single message; a collector
    signing thousands a second keeps one: the ack's protected header is encoded
    once, and the cosigner (its name's check, key id and key object, most of a
    receipt's cost) is made once. The ack body's keys and values are of fixed
    plain types (`Ack`), so canonical CBOR encodes it deterministically without
    the generic encoder's checks; tests/test_collect_fastpath.py compares both
    messages with the generic COSE and note constructions, byte for byte
    (Ed25519 is deterministic).
    """

    def __init__(self, key: SigningKey, clock: Callable[[], float] = time.time):
        self.key = key
        self._protected = cose.protected_bytes({cose.HDR_ALG: cose.ALG_EDDSA, 3: ACK_TYPE, cose.HDR_KID: kid(key.verify_key)})
        self._cosigner = CosignatureSigner(cosigner_name(bytes(key.verify_key)), key, clock)

    def ack(self, ack: Ack) -> bytes:
        """The signed ack: a COSE_Sign1 of the ack's body."""
        body: dict[str, Any] = {"vehicle": ack.vehicle, "stream": ack.stream, "seq": ack.seq, "digest": ack.digest}
        if ack.cosignature is not None:
            body["cosignature"] = ack.cosignature
        payload = _canonical(body)
        signature = self.key.sign(_canonical(["Signature1", self._protected, b"", payload])).signature
        return _canonical(cbor2.CBORTag(cose.TAG_SIGN1, [self._protected, {}, payload, signature]))

    def receipt(self, origin: str, size: int, root: bytes) -> str:
        """The cosignature line over the checkpoint text of the tree (origin, size, root)."""
        return note.signature_for(Checkpoint(origin, size, root).text(), self._cosigner).line().rstrip("\n")


def open_ack(payload: bytes, key: VerifyKey | None, vehicle: str, stream: str) -> Ack:
    """The ack in `payload` if `key` signed it for this vehicle and stream; AckRejected (with the cause) otherwise.

    Every field is checked for type and range before anything reaches the
    store: the seq is 0..2^63-1 and the digest 32 bytes.
    """
    if len(payload) > MAX_ACK:
        raise AckRejected(MALFORMED, f"an ack of {len(payload)} bytes (at most {MAX_ACK})")
    try:
        message = cose.decode_sign1(bytes(payload))
    except MalformedBlock as exc:
        raise AckRejected(MALFORMED, f"not a signed ack: {exc}") from None
    if message.protected.get(3) != ACK_TYPE or message.unprotected:
        raise AckRejected(MALFORMED, f"not a signed ack: content type {message.protected.get(3)!r}")
    if key is None:
        raise AckRejected(NO_KEY, "no collector key is enrolled for this stream's recipient")
    if not cose.verify_sign1(message, key):
        raise AckRejected(BAD_SIGNATURE, "the ack is not signed by the enrolled collector key")
    try:
        body: Any = cbor.decode(message.payload, what="ack payload")
    except MalformedBlock as exc:
        raise AckRejected(MALFORMED, str(exc)) from None
    if not isinstance(body, dict) or not set(_FIELDS) <= set(body) or not set(body) <= {*_FIELDS, *_OPTIONAL}:
        raise AckRejected(MALFORMED, f"ack payload: expected the fields {', '.join(_FIELDS)} (and {', '.join(_OPTIONAL)})")
    line = body.get("cosignature")
    if line is not None and (not isinstance(line, str) or not 0 < len(line.encode()) <= MAX_LINE):
        raise AckRejected(MALFORMED, f"ack cosignature: expected a line of at most {MAX_LINE} bytes")
    seq, digest = body["seq"], body["digest"]
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise AckRejected(OUT_OF_RANGE, f"ack seq {str(seq)[:40]} is not in 0..2^63-1")
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise AckRejected(MALFORMED, "ack digest: expected 32 bytes")
    if body["vehicle"] != vehicle or body["stream"] != stream:
        raise AckRejected(WRONG_SUBJECT, f"an ack for {str(body['vehicle'])[:64]!r}/{str(body['stream'])[:64]!r} "
                                         f"on the topic of {vehicle}/{stream}")
    return Ack(vehicle, stream, seq, digest, line)


def collector_key(collector_dir: str | os.PathLike) -> SigningKey:
    """The collector's ack key, COLLECTOR/keys/collector.key (mode 0600), made at its first use."""
    return SigningKey(load_or_create_secret(collector_dir, COLLECTOR_KEY))


def _collectors_path(store_dir: str | os.PathLike, name: str = COLLECTORS_FILE) -> Path:
    return Path(store_dir) / KEY_DIR / name


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: unreadable: {exc}") from None


def _write_private_json(path: Path, data: Any) -> None:
    """Replace `path` by `data` as JSON, atomically and durably, mode 0600 whatever the umask."""
    private_dir(path.parent)
    write_private(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def collector_keys(store_dir: str | os.PathLike) -> dict[str, VerifyKey]:
    """The collector key enrolled per recipient in this store; {} when none is."""
    path = _collectors_path(store_dir)
    data = _read_json(path, {})
    if not isinstance(data, dict):
        raise KeyFileError(f"{path}: not a JSON object")
    try:
        return {str(recipient): load_verify_key(bytes.fromhex(value)) for recipient, value in data.items()}
    except (ValueError, TypeError, KeyFileError) as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def retired_collector_keys(store_dir: str | os.PathLike) -> dict[str, list[tuple[VerifyKey, float]]]:
    """The keys each recipient had before its current one, with when each was replaced; {} when none was.

    Acks are checked with the current key only. A receipt kept while an older
    key was enrolled still verifies with that key (carledger.owner.receipts).
    """
    path = _collectors_path(store_dir, RETIRED_COLLECTORS_FILE)
    data = _read_json(path, {})
    try:
        return {str(recipient): [(load_verify_key(bytes.fromhex(item["key"])), float(item["retired"])) for item in items]
                for recipient, items in data.items()}
    except (AttributeError, KeyError, ValueError, TypeError, KeyFileError) as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def enroll_collector(store_dir: str | os.PathLike, recipient: str, public_key: Any) -> VerifyKey:
    """Trust `public_key` to sign acks of the streams for `recipient`; the key enrolled before is retired, not lost."""
    if not recipient:
        raise ValueError("the recipient must not be empty")
    key = load_verify_key(public_key)
    current = collector_keys(store_dir)
    previous = current.get(recipient)
    if previous is not None and bytes(previous) != bytes(key):
        retired = {name: [{"key": bytes(k).hex(), "retired": t} for k, t in items]
                   for name, items in retired_collector_keys(store_dir).items()}
        retired.setdefault(recipient, []).append({"key": bytes(previous).hex(), "retired": round(time.time(), 3)})
        _write_private_json(_collectors_path(store_dir, RETIRED_COLLECTORS_FILE), retired)  # first: never lost
    keys = {name: bytes(k).hex() for name, k in current.items()}
    keys[recipient] = bytes(key).hex()
    _write_private_json(_collectors_path(store_dir), keys)
    return key


def keep_receipt(store: Any, recipient: str, key: Any, ack: Ack) -> str:
    """Check the receipt an ack carries against the car's own log and `recipient`'s enrolled key, and keep it.

    The checkpoint text is the car's, built from its store (origin from the
    stream's key, size seq + 1, root of its stored tree): a receipt over any
    other text does not verify. Returns '' when kept (or already kept, or
    none came), else why it was refused (the ack itself still counts).
    """
    if ack.cosignature is None:
        return ""
    from carledger.ledger.checkpoints import origin_for
    from carledger.ledger.errors import StoreError

    size = ack.seq + 1
    try:
        public = store.stream_key(ack.stream)
        if public is None:
            return f"no key for stream {ack.stream!r}"
        text = Checkpoint(origin_for(public, ack.stream), size, store.tree_root(ack.stream, size)).text()
        stated = check_receipt(key, text, ack.cosignature)
    except (ValueError, StoreError, KeyFileError) as exc:
        return str(exc)
    store.add_receipt(ack.stream, recipient, text, size, ack.cosignature, stated)
    return ""
