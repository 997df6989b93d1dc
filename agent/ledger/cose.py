"""COSE_Sign1 (RFC 9052, CBOR tag 18) with Ed25519 (alg -8, EdDSA) through PyNaCl."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import cbor2
import nacl.exceptions
import nacl.signing

from carledger.ledger import cbor
from carledger.ledger.errors import MalformedBlock
from carledger.ledger.keys import Signer, as_signer, verify_signature

__all__ = [
    "TAG_SIGN1",
    "ALG_EDDSA",
    "HDR_ALG",
    "HDR_KID",
    "Sign1",
    "sig_structure",
    "sign1",
    "encode_sign1",
    "decode_sign1",
    "verify_sign1",
]

TAG_SIGN1 = 18
HDR_ALG = 1
HDR_KID = 4
ALG_EDDSA = -8
SIGNATURE_SIZE = 64


class Sign1(NamedTuple):
    protected_bytes: bytes  # the protected header exactly as sent (what is signed)
    protected: dict  # its decoded map ({} for an empty bstr)
    unprotected: dict
    payload: bytes
    signature: bytes


def protected_bytes(protected: Mapping) -> bytes:
    """The protected header as signed (RFC 9052 §3: an empty one is a zero-length byte string)."""
    return cbor.encode(dict(protected)) if protected else b""


def sig_structure(protected_bytes: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """ToBeSigned: Sig_structure1 = ["Signature1", protected, external_aad, payload]."""
    return cbor.encode(["Signature1", bytes(protected_bytes), bytes(external_aad), bytes(payload)])


def encode_sign1(protected_bytes: bytes, unprotected: Mapping, payload: bytes, signature: bytes) -> bytes:
    """The tagged COSE_Sign1 message from its parts (deterministic CBOR)."""
    return cbor.encode(
        cbor2.CBORTag(TAG_SIGN1, [bytes(protected_bytes), dict(unprotected), bytes(payload), bytes(signature)])
    )


def sign1(
    payload: bytes,
    signing_key: nacl.signing.SigningKey | Signer,
    protected: Mapping,
    unprotected: Mapping | None = None,
) -> bytes:
    """Sign `payload` (with a key or any ledger.keys.Signer) and return the tagged COSE_Sign1 message."""
    pbytes = protected_bytes(protected)
    signature = as_signer(signing_key).sign(sig_structure(pbytes, payload))
    return encode_sign1(pbytes, unprotected or {}, payload, signature)


def _as_dict(value: Any, what: str) -> dict:
    if not isinstance(value, Mapping):
        raise MalformedBlock(f"COSE_Sign1 {what}: expected a map, got {type(value).__name__}")
    out = dict(value)
    for key in out:
        if type(key) not in (int, str):
            raise MalformedBlock(f"COSE_Sign1 {what}: label {key!r} is neither int nor text")
    return out


def decode_sign1(data: bytes, *, require_tag: bool = True) -> Sign1:
    """Parse a COSE_Sign1 message. Raises MalformedBlock, with the reason, for anything else."""
    obj = cbor.decode(data, what="COSE_Sign1")
    if isinstance(obj, cbor2.CBORTag):
        if obj.tag != TAG_SIGN1:
            raise MalformedBlock(f"COSE_Sign1: CBOR tag {obj.tag}, expected {TAG_SIGN1}")
        obj = obj.value
    elif require_tag:
        raise MalformedBlock(f"COSE_Sign1: not tagged {TAG_SIGN1}")
    if not isinstance(obj, (list, tuple)) or len(obj) != 4:
        n = len(obj) if isinstance(obj, (list, tuple)) else type(obj).__name__
        raise MalformedBlock(f"COSE_Sign1: expected an array of 4 items, got {n}")
    pbytes, unprotected, payload, signature = obj
    if not isinstance(pbytes, bytes):
        raise MalformedBlock("COSE_Sign1 protected header: expected a byte string")
    protected = {} if pbytes == b"" else _as_dict(cbor.decode(pbytes, what="COSE_Sign1 protected header"), "protected header")
    if pbytes and not protected:
        raise MalformedBlock("COSE_Sign1 protected header: an empty map must be sent as an empty byte string")
    unprotected = _as_dict(unprotected, "unprotected header")
    both = set(protected) & set(unprotected)
    if both:
        raise MalformedBlock(f"COSE_Sign1: labels {sorted(both, key=str)} in both protected and unprotected headers")
    if payload is None:
        raise MalformedBlock("COSE_Sign1 payload: detached payloads are not supported")
    if not isinstance(payload, bytes):
        raise MalformedBlock("COSE_Sign1 payload: expected a byte string")
    if not isinstance(signature, bytes):
        raise MalformedBlock("COSE_Sign1 signature: expected a byte string")
    return Sign1(pbytes, protected, unprotected, payload, signature)


def verify_sign1(msg: bytes | Sign1, verify_key: nacl.signing.VerifyKey) -> bool:
    """True when `msg` is an EdDSA (alg -8) COSE_Sign1 whose signature verifies with `verify_key`.

    False for a bad signature or another algorithm; MalformedBlock when `msg`
    is bytes that do not parse.
    """
    if not isinstance(msg, Sign1):
        msg = decode_sign1(msg)
    if msg.protected.get(HDR_ALG) != ALG_EDDSA or len(msg.signature) != SIGNATURE_SIZE:
        return False
    return verify_signature(verify_key, sig_structure(msg.protected_bytes, msg.payload), msg.signature)
