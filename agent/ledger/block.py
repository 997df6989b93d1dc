"""Records, block headers and sealed blocks, exactly as docs/block-format.md says."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import cbor2
import nacl.signing

from carledger.ledger import cbor, cose, merkle
from carledger.ledger.errors import BadMerkleRoot, BadSignature, CBOREncodeError, LedgerError, MalformedBlock
from carledger.ledger.keys import FileSigner, Signer, as_signer, kid

__all__ = [
    "FORMAT_VERSION",
    "LABEL_RECORDS",
    "ZERO_DIGEST",
    "KIND_SAMPLE",
    "KIND_EVENT",
    "Sample",
    "Event",
    "Header",
    "SealedBlock",
    "encode_sample",
    "encode_event",
    "decode_record",
    "check_each_record",
    "protected_header",
    "seal_block",
    "with_records",
    "split_records",
    "encode_records",
    "decode_records",
    "open_block",
    "valid_stream_name",
]

FORMAT_VERSION = 1
LABEL_RECORDS = -65537
ZERO_DIGEST = bytes(32)
KIND_SAMPLE = 0
KIND_EVENT = 1

_UINT_MAX = (1 << 64) - 1
_INT_MIN = -(1 << 64)
_dumps = cbor2.dumps
_loads = cbor2.loads
_sha256 = hashlib.sha256
_STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")


def valid_stream_name(name: Any) -> bool:
    """1-64 characters of [A-Za-z0-9._:-], starting alphanumeric (a stream is an MQTT topic level)."""
    return type(name) is str and _STREAM_NAME.match(name) is not None


class Sample(NamedTuple):
    t: int  # microseconds
    name: str
    value: int | float | str
    source: str | None = None


class Event(NamedTuple):
    t: int  # microseconds
    kind: str
    detail: dict


# -- records -------------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    return type(x) is int


def encode_sample(t_us: int, name: str, value: int | float | str, source: str | None = None) -> bytes:
    """`[0, t, name, value]`, or `[0, t, name, value, source]` when source differs from name."""
    if not _is_int(t_us):
        raise CBOREncodeError(f"sample time must be int microseconds, got {type(t_us).__name__}")
    if type(name) is not str or not name:
        raise CBOREncodeError("sample name must be non-empty text")
    if type(value) not in (int, float, str):
        raise CBOREncodeError(f"sample {name}: value must be int, float or text, got {type(value).__name__}")
    if source is None or source == name:
        return _dumps((KIND_SAMPLE, t_us, name, value), canonical=True)
    if type(source) is not str:
        raise CBOREncodeError(f"sample {name}: source must be text")
    return _dumps((KIND_SAMPLE, t_us, name, value, source), canonical=True)


def encode_event(t_us: int, kind: str, detail: Mapping | None = None) -> bytes:
    """`[1, t, kind, detail]` (detail is a map, {} when None)."""
    if not _is_int(t_us):
        raise CBOREncodeError(f"event time must be int microseconds, got {type(t_us).__name__}")
    if type(kind) is not str or not kind:
        raise CBOREncodeError("event kind must be non-empty text")
    if detail is None:
        detail = {}
    if not isinstance(detail, Mapping):
        raise CBOREncodeError(f"event {kind}: detail must be a map")
    return cbor.encode([KIND_EVENT, t_us, kind, dict(detail)])


def decode_record(data: bytes) -> Sample | Event:
    """Parse one record; MalformedBlock (with the reason) unless it is exactly what encode_* writes."""
    # cbor2.loads ignores trailing bytes and keeps the last of duplicate keys, but the
    # re-encoding comparison below rejects both (and every other non-deterministic form).
    try:
        obj = _loads(data)
    except Exception as exc:
        raise MalformedBlock(f"record: not valid CBOR ({exc})") from None
    if type(obj) is not list or not obj:
        raise MalformedBlock("record: expected a non-empty array")
    kind = obj[0]
    if kind == KIND_SAMPLE and _is_int(kind):
        if len(obj) not in (4, 5):
            raise MalformedBlock(f"sample record: {len(obj)} items, expected 4 or 5")
        t, name, value = obj[1], obj[2], obj[3]
        source = obj[4] if len(obj) == 5 else None
        if not _is_int(t):
            raise MalformedBlock("sample record: t is not an integer")
        if type(name) is not str or not name:
            raise MalformedBlock("sample record: name is not non-empty text")
        if type(value) not in (int, float, str):
            raise MalformedBlock(f"sample record {name}: value of type {type(value).__name__}")
        if len(obj) == 5 and (type(source) is not str or source == name):
            raise MalformedBlock(f"sample record {name}: source must be text that differs from the name")
        again = _dumps(obj, canonical=True)
        rec: Sample | Event = Sample(t, name, value, source)
    elif kind == KIND_EVENT and _is_int(kind):
        if len(obj) != 4:
            raise MalformedBlock(f"event record: {len(obj)} items, expected 4")
        t, ekind, detail = obj[1], obj[2], obj[3]
        if not _is_int(t):
            raise MalformedBlock("event record: t is not an integer")
        if type(ekind) is not str or not ekind:
            raise MalformedBlock("event record: kind is not non-empty text")
        if not isinstance(detail, Mapping):
            raise MalformedBlock(f"event record {ekind}: detail is not a map")
        try:
            again = cbor.encode(obj)
        except CBOREncodeError as exc:
            raise MalformedBlock(f"event record {ekind}: {exc}") from None
        rec = Event(t, ekind, detail)
    else:
        raise MalformedBlock(f"record: unknown record kind {kind!r}")
    if again != bytes(data):
        raise MalformedBlock("record: not deterministic CBOR")
    return rec


def encode_records(records: Sequence[bytes]) -> bytes:
    """The store's `records` column: a CBOR array of the records' byte strings."""
    return _dumps(list(records), canonical=True)


def decode_records(data: bytes) -> list[bytes]:
    obj = cbor.decode(data, what="records")
    if type(obj) is not list or any(type(r) is not bytes for r in obj):
        raise MalformedBlock("records: expected an array of byte strings")
    return obj


# -- header --------------------------------------------------------------------------------------

_FIELDS = ("v", "vid", "stream", "seq", "prev", "t0", "t1", "policy", "count", "root")


@dataclass(frozen=True, slots=True)
class Header:
    """The signed payload of a block."""

    v: int
    vid: str
    stream: str
    seq: int
    prev: bytes
    t0: int
    t1: int
    policy: bytes
    count: int
    root: bytes

    def validate(self) -> None:
        """MalformedBlock naming the first field whose type, length or range is wrong."""

        def bad(field: str, why: str) -> MalformedBlock:
            return MalformedBlock(f"block header field '{field}': {why}")

        if not _is_int(self.v):
            raise bad("v", "not an integer")
        if self.v != FORMAT_VERSION:
            raise bad("v", f"unsupported format version {self.v}")
        if type(self.vid) is not str or not self.vid:
            raise bad("vid", "not non-empty text")
        if not valid_stream_name(self.stream):
            raise bad("stream", f"{str(self.stream)[:80]!r} is not 1-64 of [A-Za-z0-9._:-] starting alphanumeric")
        for field in ("seq", "count"):
            value = getattr(self, field)
            if not _is_int(value) or not 0 <= value <= _UINT_MAX:
                raise bad(field, "not an unsigned integer")
        for field in ("t0", "t1"):
            value = getattr(self, field)
            if not _is_int(value) or not _INT_MIN <= value <= _UINT_MAX:
                raise bad(field, "not an integer")
        if self.t1 < self.t0:
            raise bad("t1", f"{self.t1} is before t0 {self.t0}")
        for field in ("prev", "policy", "root"):
            value = getattr(self, field)
            if type(value) is not bytes or len(value) != 32:
                raise bad(field, "not a 32-byte string")

    def to_map(self) -> dict:
        return {f: getattr(self, f) for f in _FIELDS}

    def encode(self) -> bytes:
        self.validate()
        return cbor.encode(self.to_map())

    @classmethod
    def decode(cls, data: bytes) -> "Header":
        """Parse and validate payload bytes; they must be deterministic CBOR."""
        obj = cbor.decode(data, what="block header")
        if not isinstance(obj, Mapping):
            raise MalformedBlock(f"block header: expected a map, got {type(obj).__name__}")
        missing = [f for f in _FIELDS if f not in obj]
        if missing:
            raise MalformedBlock(f"block header: missing field '{missing[0]}'")
        unknown = [k for k in obj if k not in _FIELDS]
        if unknown:
            raise MalformedBlock(f"block header: unknown field {unknown[0]!r}")
        header = cls(**{f: obj[f] for f in _FIELDS})
        header.validate()
        if cbor.encode(header.to_map()) != bytes(data):
            raise MalformedBlock("block header: not deterministic CBOR")
        return header


# -- sealed blocks -------------------------------------------------------------------------------


class SealedBlock(NamedTuple):
    header: Header
    payload: bytes  # the header's bytes: what is signed
    digest: bytes  # SHA-256(payload): the next block's `prev`
    sign1: bytes  # tagged COSE_Sign1 with an empty unprotected header
    records: list[bytes]  # the records' bytes ([] when not carried)

    @property
    def stream(self) -> str:
        return self.header.stream

    @property
    def seq(self) -> int:
        return self.header.seq

    @property
    def bare(self) -> bool:
        """True for a block read without the records its header commits to (open_block's allow_bare)."""
        return self.header.count > 0 and not self.records

    def message(self, include_records: bool = True) -> bytes:
        """The COSE message to send: with the records in the unprotected header, or bare."""
        return with_records(self.sign1, self.records) if include_records else self.sign1


def protected_header(verify_key: nacl.signing.VerifyKey) -> dict:
    return {cose.HDR_ALG: cose.ALG_EDDSA, cose.HDR_KID: kid(verify_key)}


def seal_block(
    *,
    vid: str,
    stream: str,
    seq: int,
    prev: bytes,
    t0: int,
    t1: int,
    policy: bytes,
    records: Sequence[bytes],
    signing_key: nacl.signing.SigningKey | Signer,
    root: bytes | None = None,
) -> SealedBlock:
    """Build the header over `records` (their count and Merkle root), sign it, return the block.

    `signing_key` is the vehicle key or any `keys.Signer` (a TPM or secure
    element backend). `root` may be passed when the caller already computed
    it over the same records.
    """
    records = list(records)
    if root is None:
        root = merkle.root(records)
    header = Header(FORMAT_VERSION, vid, stream, seq, bytes(prev), t0, t1, bytes(policy), len(records), root)
    payload = header.encode()
    signer = as_signer(signing_key)
    protected = {cose.HDR_ALG: cose.ALG_EDDSA, cose.HDR_KID: signer.key_id}
    sign1 = cose.sign1(payload, signer, protected, {})
    if not isinstance(signer, FileSigner):
        # a device we do not run the code of: a block it signed wrongly would be sealed, then refused by everyone
        if signer.key_id != kid(signer.public_key):
            raise LedgerError(f"the key backend {signer!r} names key id {signer.key_id.hex()}, "
                              f"but its public key's is {kid(signer.public_key).hex()}")
        if not cose.verify_sign1(sign1, nacl.signing.VerifyKey(signer.public_key)):
            raise LedgerError(f"the key backend {signer!r} returned a signature its own public key does not verify")
    return SealedBlock(header, payload, _sha256(payload).digest(), sign1, records)


def with_records(sign1: bytes, records: Sequence[bytes]) -> bytes:
    """The COSE_Sign1 message carrying `records` in unprotected label -65537 (signature unchanged)."""
    msg = cose.decode_sign1(sign1)
    unprotected = dict(msg.unprotected)
    unprotected[LABEL_RECORDS] = [bytes(r) for r in records]
    return cose.encode_sign1(msg.protected_bytes, unprotected, msg.payload, msg.signature)


def split_records(message: bytes) -> tuple[bytes, list[bytes] | None]:
    """(bare COSE_Sign1, records or None when the message carries none).

    The unprotected header is the only part of a block no signature covers, so
    it may hold nothing but the records (label -65537, which the signed count
    and Merkle root then check): any other label is refused, never ignored.
    The message must also be deterministic CBOR, so that two messages of one
    block differ only where one of them is not the block (docs/block-format.md).
    """
    msg = cose.decode_sign1(message)
    unprotected = dict(msg.unprotected)
    records = unprotected.pop(LABEL_RECORDS, None)
    if unprotected:
        label = sorted(unprotected, key=str)[0]
        raise MalformedBlock(
            f"COSE_Sign1 unprotected header: unknown label {label!r} (only {LABEL_RECORDS}, the records, is defined)"
        )
    if LABEL_RECORDS in msg.unprotected and (
        not isinstance(records, (list, tuple)) or any(type(r) is not bytes for r in records)
    ):
        raise MalformedBlock(f"COSE_Sign1 unprotected label {LABEL_RECORDS}: expected an array of byte strings")
    try:
        bare = cose.encode_sign1(msg.protected_bytes, {}, msg.payload, msg.signature)
        again = bare if records is None else cose.encode_sign1(msg.protected_bytes, msg.unprotected, msg.payload, msg.signature)
    except CBOREncodeError as exc:
        raise MalformedBlock(f"COSE_Sign1: {exc}") from None
    if again != bytes(message):
        raise MalformedBlock("COSE_Sign1: not deterministic CBOR")
    return bare, (list(records) if records is not None else None)


def open_block(
    message: bytes, verify_key: nacl.signing.VerifyKey, *, check_records: bool = True, allow_bare: bool = False
) -> SealedBlock:
    """Parse and check a received block message: it carries exactly the records its header commits to.

    Raises BadSignature, BadMerkleRoot or MalformedBlock (all MalformedBlock).
    A message without its records (a bare header of a block with count > 0)
    is MalformedBlock unless `allow_bare`: only a reader that knows why the
    records are gone may accept one (a store whose records a signed retention
    or eviction event dropped, which `verify` checks; the collector, which
    holds it until its records or such an event arrive). Then `records` is []
    and `bare` is true. With check_records, every record must also parse.
    """
    try:
        return _open_block(message, verify_key, check_records, allow_bare)
    except MalformedBlock:
        raise
    except Exception as exc:  # hostile input: whatever it trips is still just a malformed block
        raise MalformedBlock(f"unreadable block: {type(exc).__name__}: {exc}") from None


def _open_block(
    message: bytes, verify_key: nacl.signing.VerifyKey, check_records: bool, allow_bare: bool
) -> SealedBlock:
    bare, records = split_records(message)
    msg = cose.decode_sign1(bare)
    if msg.protected.get(cose.HDR_KID) not in (None, kid(verify_key)):
        raise BadSignature("signed with another key (kid %s)" % _hex(msg.protected.get(cose.HDR_KID)))
    if not cose.verify_sign1(msg, verify_key):
        raise BadSignature("signature does not verify")
    header = Header.decode(msg.payload)
    if records is None and header.count and not allow_bare:
        raise MalformedBlock(
            f"block seq {header.seq} of stream {header.stream!r} without its records: the signed header commits to "
            f"{header.count}"
        )
    if records is not None:
        check_records_root(header, records)
        if check_records:
            check_each_record(records)
    return SealedBlock(header, msg.payload, _sha256(msg.payload).digest(), bare, records or [])


def check_each_record(records: Sequence[bytes]) -> None:
    """MalformedBlock naming the first record `decode_record` refuses, if any (open_block's check_records)."""
    for i, rec in enumerate(records):
        try:
            decode_record(rec)
        except MalformedBlock as exc:
            raise MalformedBlock(f"record {i}: {exc}") from None


def check_records_root(header: Header, records: Sequence[bytes]) -> None:
    """BadMerkleRoot unless `records` are exactly the header's count and root."""
    if len(records) != header.count:
        raise BadMerkleRoot(f"{len(records)} records, the header says {header.count}")
    got = merkle.root(records)
    if got != header.root:
        raise BadMerkleRoot(f"Merkle root {got.hex()[:16]}… of the records differs from the signed {header.root.hex()[:16]}…")


def _hex(value: Any) -> str:
    return value.hex() if isinstance(value, (bytes, bytearray)) else repr(value)
