"""Pseudonymous vehicle identifiers, one per recipient.

A recipient never sees the VIN (unless the owner's policy says
``identity = "vin"``); it sees ``pseudonym(secret, vin, recipient)``, an
HMAC-SHA256 of the VIN and the recipient's name under a per-vehicle secret
(32 random bytes that never leave the car). The same recipient always gets
the same identifier, so its data stays linkable for it; two recipients get
unrelated identifiers, and without the secret nobody can compute one from a
VIN (VINs are far too guessable for a plain hash).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SECRET_BYTES = 32
_DOMAIN = b"carledger/pseudonym/v1"


def new_secret() -> bytes:
    """A fresh per-vehicle secret (32 random bytes)."""
    return secrets.token_bytes(SECRET_BYTES)


def _field(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(4, "big") + raw


def pseudonym(secret: bytes, vin: str, recipient: str) -> str:
    """The identifier `recipient` knows this vehicle by: 32 lowercase hex characters.

    The VIN is compared without surrounding spaces and case-insensitively
    (VINs are upper case); the recipient name exactly as the policy spells it.
    """
    if not isinstance(secret, (bytes, bytearray)) or len(secret) < SECRET_BYTES:
        raise ValueError(f"the pseudonym secret must be at least {SECRET_BYTES} random bytes")
    if not vin.strip():
        raise ValueError("empty VIN")
    if not recipient:
        raise ValueError("empty recipient")
    message = _DOMAIN + _field(vin.strip().upper()) + _field(recipient)
    return hmac.new(bytes(secret), message, hashlib.sha256).hexdigest()[:32]


__all__ = ["SECRET_BYTES", "new_secret", "pseudonym"]
