"""C2SP tlog-cosignature, Ed25519 cosignature/v1 (c2sp.org/tlog-cosignature).

A witness (or a recipient) cosigns a checkpoint with a note signature whose
key id uses signature type 0x04:

    key id   = SHA-256(name || 0x0A || 0x04 || 32-byte Ed25519 public key)[:4]
    payload  = u64 big-endian timestamp (POSIX seconds, <= 2^63 - 1) || 64-byte Ed25519 signature
    message  = "cosignature/v1\\n" "time <timestamp>\\n" || the checkpoint's whole note text

So a cosignature line is "— <name> base64(key id || timestamp || signature)",
and `note.open_note` checks it like any other once the cosigner's verifier is
known. Semantics: as of that time, the consistent tree head with the largest
size the cosigner has observed for that origin has that root hash.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import nacl.signing

from carledger.ledger.keys import verify_signature
from carledger.transparency import note

__all__ = [
    "ALG_COSIGNATURE_V1",
    "MAX_TIMESTAMP",
    "cosigned_message",
    "CosignatureVerifier",
    "CosignatureSigner",
    "timestamp_of",
    "cosignature_times",
]

ALG_COSIGNATURE_V1 = 0x04
MAX_TIMESTAMP = 2**63 - 1
_PAYLOAD_SIZE = 8 + 64


def cosigned_message(text: str | bytes, timestamp: int) -> bytes:
    """What the cosigner's Ed25519 key signs: header line, time line, then the checkpoint text."""
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError(f"cosignature timestamp {timestamp} outside 0..2^63-1")
    body = text.encode() if isinstance(text, str) else bytes(text)
    return b"cosignature/v1\ntime %d\n" % timestamp + body


class CosignatureVerifier(note.Ed25519Verifier):
    """A 0x04 key: checks timestamped cosignatures (Verifier protocol of note.py).

    The key checks and key id are an Ed25519 key's (`note.Ed25519Verifier`), under type 0x04.
    """

    alg = ALG_COSIGNATURE_V1

    def verify(self, msg: bytes, sig: bytes) -> bool:
        if len(sig) != _PAYLOAD_SIZE:
            return False
        timestamp = int.from_bytes(sig[:8], "big")
        if timestamp > MAX_TIMESTAMP:
            return False
        return verify_signature(self._vk, cosigned_message(msg, timestamp), sig[8:])


class CosignatureSigner(note.Ed25519Signer):
    """A 0x04 signer; `clock` gives the POSIX time each cosignature states (whole seconds)."""

    alg = ALG_COSIGNATURE_V1

    def __init__(
        self, name: str, seed: bytes | nacl.signing.SigningKey, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(name, seed)
        self.clock = clock

    def sign(self, msg: bytes) -> bytes:
        timestamp = int(self.clock())
        return timestamp.to_bytes(8, "big") + self._sk.sign(cosigned_message(msg, timestamp)).signature

    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier(self.name, self.public_key)


def timestamp_of(sig: note.Signature) -> int:
    """The time a cosignature states; ValueError for a payload that is not 8 + 64 bytes."""
    payload = sig.payload
    if len(payload) != _PAYLOAD_SIZE:
        raise ValueError(f"signature of {sig.name} is {len(payload)} bytes, not a cosignature/v1 (72)")
    timestamp = int.from_bytes(payload[:8], "big")
    if timestamp > MAX_TIMESTAMP:
        raise ValueError(f"cosignature of {sig.name}: timestamp over 2^63 - 1")
    return timestamp


def cosignature_times(opened: note.Note, cosigners: Iterable[CosignatureVerifier]) -> dict[str, int]:
    """Cosigner name -> stated time, for each given cosigner whose signature `open_note` verified."""
    mine = {(c.name, c.key_id) for c in cosigners}
    return {s.name: timestamp_of(s) for s in opened.sigs if (s.name, s.key_id) in mine}
