"""End-to-end encryption of a block's records to one or more recipients (docs/block-format.md).

At seal time the records of a block are compressed, encrypted under a fresh
per-block key (XSalsa20-Poly1305, PyNaCl's SecretBox) and that key is wrapped
to each recipient's X25519 public key (SealedBox). The two resulting event
records are what the block signs: its count and Merkle root cover the
ciphertext, so brokers and collectors check signature, chain and root without
being able to read anything, and only a recipient's private key opens them.

    writer.sealer = RecordSealer([insurer_pub, owner_pub])   # at seal time
    records = open_sealed(block.header, block.records, private_key)   # at the recipient
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

import nacl.exceptions
import nacl.public
import nacl.secret
import nacl.utils
import zstandard

from carledger.ledger.block import Event, Header, decode_record, decode_records, encode_event, encode_records
from carledger.ledger.errors import KeyFileError, LedgerError, MalformedBlock
from carledger.ledger.keys import _parse_hex_key, _read_private_hex, _write_private

__all__ = [
    "KEYS_EVENT",
    "SEALED_EVENT",
    "DecryptError",
    "PrivateKey",
    "PublicKey",
    "RecordSealer",
    "is_sealed",
    "unzstd",
    "open_sealed",
    "recipient_kid",
    "parse_public_key",
    "load_private_key",
    "create_private_key",
]

KEYS_EVENT = "sealed-keys"
SEALED_EVENT = "sealed"
WRAP_ALG = "x25519-sealedbox"
BOX_ALG = "xsalsa20poly1305"
ZIP = "zstd"
MAX_PLAINTEXT = 64 << 20  # a block's records, decompressed: refuse anything larger (hostile input)

PrivateKey = nacl.public.PrivateKey
PublicKey = nacl.public.PublicKey


class DecryptError(LedgerError):
    """A sealed block this key cannot open (not a recipient, or the ciphertext was altered)."""


def recipient_kid(public_key: PublicKey | bytes) -> bytes:
    """First 8 bytes of SHA-256 of the raw 32-byte X25519 public key: names a recipient in a block."""
    return hashlib.sha256(bytes(public_key)).digest()[:8]


def parse_public_key(text: str | bytes) -> PublicKey:
    """An X25519 public key from 64 hex digits (a policy's `encrypt_to`) or raw 32 bytes; ValueError otherwise."""
    try:
        raw = bytes(text) if isinstance(text, (bytes, bytearray)) else _parse_hex_key(text, "an X25519 public key")
    except KeyFileError as exc:
        raise ValueError(str(exc)) from None
    if len(raw) != 32:
        raise ValueError(f"an X25519 public key is 32 bytes, got {len(raw)}")
    return PublicKey(raw)


def load_private_key(path_or_hex: str | os.PathLike) -> PrivateKey:
    """A recipient's X25519 private key from a key file (64 hex digits, mode 0600) or the hex itself."""
    text = os.fspath(path_or_hex)
    if len(text.strip()) == 64 and not os.path.exists(text):
        return PrivateKey(_parse_hex_key(text, "the recipient key"))
    return PrivateKey(_read_private_hex(Path(text), "the recipient key"))


def parse_private_key(text: str, what: str) -> PrivateKey:
    """A recipient's X25519 private key from a key file's text already in memory (the console's upload):
    never written anywhere; an error names `what`, never the text."""
    return PrivateKey(_parse_hex_key(text, what))


def create_private_key(path: str | os.PathLike) -> PrivateKey:
    """Generate a recipient key and write it as hex to `path` (mode 0600, never overwriting)."""
    key = PrivateKey.generate()
    path = Path(path)
    if not _write_private(path, bytes(key).hex().encode("ascii") + b"\n"):
        raise KeyFileError(f"{path}: exists already; not overwritten")
    return key


class RecordSealer:
    """`StreamWriter.sealer` for a stream encrypted to `recipients` (X25519 public keys).

    Called with the encoded records and their time range, returns the two
    event records the block signs instead. Each block gets a fresh key.
    """

    def __init__(self, recipients: Iterable[PublicKey | bytes | str], level: int = 9):
        keys = [k if isinstance(k, PublicKey) else parse_public_key(k) for k in recipients]
        if not keys:
            raise ValueError("a sealed stream needs at least one recipient key")
        self.recipients = [(recipient_kid(k), nacl.public.SealedBox(k)) for k in keys]
        self._zip = zstandard.ZstdCompressor(level=level)

    def __call__(self, records: list[bytes], t0: int, t1: int) -> list[bytes]:
        block_key = nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE)
        plaintext = self._zip.compress(encode_records(records))
        box = bytes(nacl.secret.SecretBox(block_key).encrypt(plaintext))
        wrapped = [[rkid, bytes(sealed.encrypt(block_key))] for rkid, sealed in self.recipients]
        return [
            encode_event(t0, KEYS_EVENT, {"alg": WRAP_ALG, "to": wrapped}),
            encode_event(t1, SEALED_EVENT, {"alg": BOX_ALG, "zip": ZIP, "box": box}),
        ]


def unzstd(data: bytes, limit: int, what: str) -> bytes:
    """Decompress one zstd frame of at most `limit` bytes; MalformedBlock for anything else.

    The frame's declared size is checked before decompressing: zstandard
    ignores `max_output_size` when the frame declares its size, so a small
    frame could otherwise expand to gigabytes.
    """
    try:
        size = zstandard.frame_content_size(data)
        if size > limit:
            raise MalformedBlock(f"{what}: declares {size} bytes, more than the limit of {limit}")
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=limit)
    except zstandard.ZstdError as exc:
        raise MalformedBlock(f"{what}: not one zstd frame within {limit} bytes ({exc})") from None


def is_sealed(records: Sequence[bytes]) -> bool:
    """True when `records` are the two records of an encrypted block."""
    if len(records) != 2:
        return False
    try:
        first, second = decode_record(records[0]), decode_record(records[1])
    except MalformedBlock:
        return False
    return (
        isinstance(first, Event) and first.kind == KEYS_EVENT and isinstance(second, Event) and second.kind == SEALED_EVENT
    )


def _field(detail, key: str, kind: type, what: str):
    value = detail.get(key)
    if type(value) is not kind:
        raise MalformedBlock(f"{what} record: field {key!r} missing or not {kind.__name__}")
    return value


def open_sealed(header: Header, records: Sequence[bytes], private_key: PrivateKey) -> list[bytes]:
    """The plaintext records of an encrypted block, checked against its header's time range.

    `records` are the block's verified records (open_block checked them
    against the signed Merkle root). DecryptError when this key is not a
    recipient or the ciphertext fails authentication; MalformedBlock when the
    sealed records are not in the format at all.
    """
    if not is_sealed(records):
        raise MalformedBlock("not an encrypted block (expected a sealed-keys and a sealed record)")
    keys, sealed = decode_record(records[0]), decode_record(records[1])
    if _field(keys.detail, "alg", str, KEYS_EVENT) != WRAP_ALG:
        raise MalformedBlock(f"{KEYS_EVENT} record: unknown key wrapping {keys.detail.get('alg')!r}")
    if _field(sealed.detail, "alg", str, SEALED_EVENT) != BOX_ALG or sealed.detail.get("zip") != ZIP:
        raise MalformedBlock(f"{SEALED_EVENT} record: unknown cipher or compression")
    box = _field(sealed.detail, "box", bytes, SEALED_EVENT)
    mine = recipient_kid(private_key.public_key)
    wrapped = [w for w in _field(keys.detail, "to", list, KEYS_EVENT) if isinstance(w, list) and len(w) == 2 and w[0] == mine]
    if not wrapped:
        raise DecryptError(f"not encrypted to key {mine.hex()}")
    try:
        block_key = nacl.public.SealedBox(private_key).decrypt(bytes(wrapped[0][1]))
        compressed = nacl.secret.SecretBox(block_key).decrypt(box)
    except (nacl.exceptions.CryptoError, TypeError, ValueError) as exc:
        raise DecryptError(f"cannot decrypt: {exc}") from None
    inner = decode_records(unzstd(compressed, MAX_PLAINTEXT, "sealed records"))
    times = []
    for i, rec in enumerate(inner):
        try:
            times.append(decode_record(rec).t)
        except MalformedBlock as exc:
            raise MalformedBlock(f"sealed record {i}: {exc}") from None
    if not times or (min(times), max(times)) != (header.t0, header.t1):
        raise MalformedBlock(f"sealed records span {min(times, default=None)}..{max(times, default=None)}, "
                             f"the header says {header.t0}..{header.t1}")
    return inner
