"""Per-recipient signing keys and the key statements that tie them to the vehicle key (docs/ledger-keys.md).

A recipient knows the car by its own pseudonym. Were its blocks signed with
the one vehicle key, two recipients could link their data through the key
(or its COSE kid). So each pseudonymous stream is signed with a key of its
recipient's own: an Ed25519 seed derived from the pseudonym secret (never
from the vehicle key, which may live in a TPM or a secure element behind the
`Signer` interface and cannot be read).

Trust stays rooted in the vehicle key: each pseudonym key is certified by a
*key statement*, a COSE_Sign1 the vehicle key signs over (vehicle id,
recipient, pseudonym, public key, created). The store keeps the statements
(table `key_statements`); every reader checks each statement's signature
with the vehicle key before it lets the key verify anything, so editing the
table cannot make a key trusted. A statement given to a third party (`carledger
remote identity --prove`) is the owner's proof that the pseudonym is this car.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from carledger.ledger import cbor, cose
from carledger.ledger.errors import MalformedBlock
from carledger.ledger.keys import FileSigner, Signer, SigningKey, VerifyKey, kid, public_key_problem

if TYPE_CHECKING:
    from carledger.ledger.block import SealedBlock

__all__ = [
    "KEY_DOMAIN",
    "STATEMENT_TYPE",
    "Certified",
    "KeyRing",
    "derive_signing_key",
    "make_statement",
    "open_statement",
    "read_statements",
    "keyring",
    "pseudonym_signer",
]

KEY_DOMAIN = b"carledger/pseudonym-key/v1"
STATEMENT_TYPE = "carledger/key-statement/v1"
_FIELDS = ("type", "vehicle", "recipient", "pseudonym", "public_key", "created")


def _field(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(4, "big") + raw


def derive_signing_key(secret: bytes, vehicle_id: str, recipient: str) -> SigningKey:
    """The recipient's own signing key: seed = HMAC-SHA256(secret, domain || len+vehicle id || len+recipient).

    Length prefixes keep ("ab", "c") and ("a", "bc") apart. The vehicle id is
    taken as the pseudonym takes it (no surrounding spaces, upper case); a
    new secret (`carledger wipe`) gives new keys.
    """
    if not isinstance(secret, (bytes, bytearray)) or len(secret) < 32:
        raise ValueError("the pseudonym secret must be at least 32 random bytes")
    if not vehicle_id.strip() or not recipient:
        raise ValueError("a pseudonym key needs a vehicle id and a recipient")
    message = KEY_DOMAIN + _field(vehicle_id.strip().upper()) + _field(recipient)
    return SigningKey(hmac.new(bytes(secret), message, hashlib.sha256).digest())


@dataclass(frozen=True)
class Certified:
    """What a key statement the vehicle key signed says: this key speaks for this car to this recipient."""

    vehicle: str
    recipient: str
    pseudonym: str
    public_key: bytes
    created: int  # POSIX seconds
    statement: bytes  # the COSE_Sign1 itself

    @property
    def key_id(self) -> bytes:
        return kid(self.public_key)

    def as_json(self) -> dict[str, Any]:
        return {"vehicle": self.vehicle, "recipient": self.recipient, "pseudonym": self.pseudonym,
                "public_key": self.public_key.hex(), "kid": self.key_id.hex(), "created": self.created}


def make_statement(vehicle_signer: Signer, vehicle_id: str, recipient: str, pseudonym: str,
                   public_key: bytes, created: int | None = None) -> bytes:
    """The key statement, signed through the vehicle's Signer (deterministic CBOR payload, COSE_Sign1)."""
    payload = cbor.encode({
        "type": STATEMENT_TYPE, "vehicle": vehicle_id, "recipient": recipient, "pseudonym": pseudonym,
        "public_key": bytes(public_key), "created": int(time.time()) if created is None else int(created),
    })
    return cose.sign1(payload, vehicle_signer, {cose.HDR_ALG: cose.ALG_EDDSA, cose.HDR_KID: vehicle_signer.key_id})


def open_statement(statement: bytes, vehicle_key: VerifyKey) -> Certified:
    """The statement's content if the vehicle key signed it and it is well formed; MalformedBlock saying why not."""
    if not isinstance(statement, bytes):
        raise MalformedBlock("key statement: not a byte string")
    msg = cose.decode_sign1(statement)
    if msg.protected.get(cose.HDR_KID) not in (None, kid(vehicle_key)) or not cose.verify_sign1(msg, vehicle_key):
        raise MalformedBlock("key statement: not signed by the vehicle key")
    body = cbor.decode(msg.payload, what="key statement")
    if not isinstance(body, dict) or sorted(body) != sorted(_FIELDS) or body["type"] != STATEMENT_TYPE:
        raise MalformedBlock(f"key statement: expected the fields {', '.join(_FIELDS)} and type {STATEMENT_TYPE}")
    if cbor.encode(body) != msg.payload:
        raise MalformedBlock("key statement: not deterministic CBOR")
    texts = [body[f] for f in ("vehicle", "recipient", "pseudonym")]
    if not all(type(t) is str and t for t in texts) or type(body["created"]) is not int:
        raise MalformedBlock("key statement: vehicle, recipient, pseudonym must be text and created an integer")
    pub = body["public_key"]
    problem = public_key_problem(pub) if isinstance(pub, bytes) else "not a byte string"
    if problem is not None:
        raise MalformedBlock(f"key statement: public_key refused: {problem}")
    return Certified(*texts, pub, body["created"], statement)


def read_statements(conn: sqlite3.Connection) -> list[tuple[Any, Any]]:
    """(pseudonym, statement) rows of the store's `key_statements` table, as stored ([] for a store without one)."""
    try:
        return conn.execute("SELECT pseudonym, statement FROM key_statements ORDER BY rowid").fetchall()
    except sqlite3.OperationalError:
        return []


class KeyRing:
    """Which public key verifies which block: the vehicle key for any vehicle id, a certified key only for its pseudonym.

    `problems` names each stored statement that was refused (and so verifies nothing).
    """

    def __init__(self, vehicle_key: VerifyKey, rows: Iterable[tuple[Any, Any]] = ()):
        self.vehicle_key = vehicle_key
        self.vehicle_kid = kid(vehicle_key)
        self.by_kid: dict[bytes, Certified] = {}
        self.problems: list[str] = []
        for i, (pseudonym, statement) in enumerate(rows):
            try:
                cert = open_statement(statement, vehicle_key)
            except MalformedBlock as exc:
                self.problems.append(f"key_statements row {i + 1} ({str(pseudonym)[:40]!r}): {exc}; ignored")
                continue
            if cert.pseudonym != pseudonym:
                self.problems.append(f"key_statements row {i + 1}: filed as {str(pseudonym)[:40]!r}, "
                                     f"the signed statement says {cert.pseudonym!r}; ignored")
                continue
            self.by_kid[cert.key_id] = cert

    def key_for(self, key_id: Any, vid: str | None) -> VerifyKey | None:
        """The key that may verify a block with COSE kid `key_id` naming vehicle `vid`, None when no key may.

        (The per-stream key lookup: a checkpoint of a recipient's stream is
        signed, and verified, with the same key as its blocks.)
        """
        if key_id is None or key_id == self.vehicle_kid:
            return self.vehicle_key
        cert = self.by_kid.get(key_id) if isinstance(key_id, bytes) else None
        if cert is None or cert.pseudonym != vid:
            return None
        return VerifyKey(cert.public_key)

    def open_block(self, message: bytes, **options: Any) -> "SealedBlock":
        """block.open_block with the key this block's kid and vehicle id call for (the vehicle key when none may)."""
        from carledger.ledger.block import Header, open_block, split_records

        try:
            msg = cose.decode_sign1(split_records(message)[0])
            key = self.key_for(msg.protected.get(cose.HDR_KID), Header.decode(msg.payload).vid)
        except Exception:  # open_block says what is wrong with it
            key = None
        return open_block(message, key or self.vehicle_key, **options)

    def for_pseudonym(self, pseudonym: str) -> Certified | None:
        return next((c for c in self.by_kid.values() if c.pseudonym == pseudonym), None)


def keyring(conn: sqlite3.Connection, vehicle_key: VerifyKey) -> KeyRing:
    """The store's key ring: the vehicle key and every stored statement it signed."""
    return KeyRing(vehicle_key, read_statements(conn))


def pseudonym_signer(secret: bytes, vehicle_id: str, recipient: str) -> FileSigner:
    """The recipient's key as a Signer (it is derived in this process, so it is always a file-like key)."""
    return FileSigner(derive_signing_key(secret, vehicle_id, recipient))
