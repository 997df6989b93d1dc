"""Exceptions of the ledger stage."""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of every error raised by `carledger.ledger`."""


class MalformedBlock(LedgerError, ValueError):
    """Bytes that are not a well-formed block, record, header or COSE message.

    The message says what is wrong and, where there is one, names the field.
    `kind` is the verifier's problem kind for it.
    """

    kind = "malformed"


class BadSignature(MalformedBlock):
    """A block whose COSE_Sign1 signature does not verify with the pinned key."""

    kind = "bad-signature"


class BadMerkleRoot(MalformedBlock):
    """A block whose records do not match the signed count and Merkle root."""

    kind = "bad-merkle-root"


class CBOREncodeError(LedgerError, ValueError):
    """A value that cannot be encoded as deterministic CBOR in our profile."""


class KeyFileError(LedgerError):
    """A key file that is missing, malformed or not private enough."""


class StoreError(LedgerError):
    """A store that cannot be opened, is not a carledger store, or refuses a write."""


class StoreLocked(StoreError):
    """Another process (normally the running agent) holds the store's writer lock."""
