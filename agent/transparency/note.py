"""C2SP signed notes (c2sp.org/signed-note), as Go's golang.org/x/mod/sumdb/note does them.

A signed note is a text ending in a newline, a blank line, and one or more
signature lines "— <key name> <base64(key id || signature)>". The key id is
the first four bytes, big-endian, of SHA-256(name || 0x0A || alg || public
key): alg 0x01 is Ed25519 over the text, alg 0x04 a tlog cosignature
(cosignature.py). Keys travel as strings:

    verifier key  name+<key id, 8 hex digits>+base64(alg || public key)
    signer key    PRIVATE+KEY+name+<key id>+base64(alg || 32-byte seed)

`open_note` is as strict as the spec and Go: valid UTF-8, no control
character but newline, at most MAX_SIGNATURES lines (and MAX_NOTE_SIZE
bytes), signatures of unknown keys kept apart and never trusted, a known
key's bad signature rejects the note, and at least one known signature must
verify. Stricter than Go: base64 must be canonical, and an Ed25519 key must
pass carledger's key rule (agent/ledger/keys.py, docs/ledger-keys.md).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Sequence

import nacl.signing

from carledger.ledger.keys import public_key_problem, verify_signature

__all__ = [
    "ALG_ED25519",
    "MAX_NOTE_SIZE",
    "MAX_SIGNATURES",
    "NoteError",
    "MalformedNoteError",
    "KeyFormatError",
    "UnverifiedNoteError",
    "InvalidSignatureError",
    "AmbiguousKeyError",
    "Verifier",
    "Signer",
    "Signature",
    "Note",
    "Verifiers",
    "Ed25519Verifier",
    "Ed25519Signer",
    "key_id",
    "valid_name",
    "b64decode_strict",
    "verifier_key",
    "signer_key",
    "parse_verifier_key",
    "parse_signer_key",
    "generate_key",
    "open_note",
    "sign_note",
]

ALG_ED25519 = 0x01
MAX_SIGNATURES = 100  # Go's limit; the spec asks for at least 16
MAX_NOTE_SIZE = 1 << 20  # bytes: room for 100 post-quantum signatures (about 5 kB each) and a long text
SIG_PREFIX = "— "  # em dash U+2014, space


class NoteError(ValueError):
    """Any signed-note problem; the message says which."""


class MalformedNoteError(NoteError):
    def __init__(self, why: str = "") -> None:
        super().__init__("malformed note" + (f": {why}" if why else ""))


class KeyFormatError(NoteError):
    """A verifier or signer key string that is not well formed, or whose key id does not match."""


class UnverifiedNoteError(NoteError):
    """No signature of a known key: the note is still returned for its unverified signatures."""

    def __init__(self, note: "Note") -> None:
        super().__init__("note has no verifiable signatures")
        self.note = note


class InvalidSignatureError(NoteError):
    def __init__(self, name: str, kid: int) -> None:
        super().__init__(f"invalid signature for key {name}+{kid:08x}")
        self.name, self.key_id = name, kid


class AmbiguousKeyError(NoteError):
    def __init__(self, name: str, kid: int) -> None:
        super().__init__(f"ambiguous key {name}+{kid:08x}")


class Verifier(Protocol):
    """Checks signatures of one key: what `open_note` needs (Go's note.Verifier)."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> int: ...

    def verify(self, msg: bytes, sig: bytes) -> bool: ...


class Signer(Protocol):
    """Signs with one key (Go's note.Signer)."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> int: ...

    def sign(self, msg: bytes) -> bytes: ...


def key_id(name: str, alg: int, public_key: bytes) -> int:
    """SHA-256(name || 0x0A || alg || public key)[:4] as a big-endian uint32 (the spec's recommended key id)."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + bytes(public_key)).digest()
    return int.from_bytes(digest[:4], "big")


def valid_name(name: str) -> bool:
    """Non-empty, no Unicode space, no '+', and (stricter than Go) no control character."""
    return isinstance(name, str) and _valid_text(name)


@functools.lru_cache(maxsize=256)
def _valid_text(name: str) -> bool:
    """`valid_name` of a string, remembered: a signer signs thousands of lines under one name (a collector's
    receipts), where the character scan was a tenth of each line's cost; bounded, as names also come from input."""
    return name != "" and "+" not in name and not any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in name)


def b64decode_strict(text: str) -> bytes:
    """Standard padded base64 in its one canonical spelling, else ValueError."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64: {exc}") from None
    if base64.b64encode(raw).decode() != text:
        raise ValueError("not canonical base64")
    return raw


@dataclass(frozen=True)
class Signature:
    """One signature line: key name, key id, and the base64 of key id || signature as written."""

    name: str
    key_id: int
    b64: str

    @property
    def payload(self) -> bytes:
        """The signature bytes after the 4-byte key id."""
        return base64.b64decode(self.b64)[4:]

    def line(self) -> str:
        return f"{SIG_PREFIX}{self.name} {self.b64}\n"


@dataclass
class Note:
    """A note's text with its verified signatures and, apart, the ones no known key checked."""

    text: str
    sigs: list[Signature] = field(default_factory=list)
    unverified_sigs: list[Signature] = field(default_factory=list)


class Verifiers:
    """Known keys by (name, key id), as Go's VerifierList: two keys under one pair are ambiguous."""

    def __init__(self, verifiers: Iterable[Verifier] = ()) -> None:
        self._map: dict[tuple[str, int], list[Verifier]] = {}
        for v in verifiers:
            self._map.setdefault((v.name, v.key_id), []).append(v)

    def lookup(self, name: str, kid: int) -> Verifier | None:
        """The key, None for an unknown one; AmbiguousKeyError when two keys share both name and id."""
        found = self._map.get((name, kid))
        if not found:
            return None
        if len(found) > 1:
            raise AmbiguousKeyError(name, kid)
        return found[0]


class Ed25519Verifier:
    """A 0x01 key: Ed25519 over the note text, with carledger's strict key and signature checks."""

    alg = ALG_ED25519

    def __init__(self, name: str, public_key: bytes) -> None:
        public_key = bytes(public_key)
        if not valid_name(name):
            raise KeyFormatError(f"invalid key name {name!r}")
        problem = public_key_problem(public_key)
        if problem is not None:
            raise KeyFormatError(f"key {name}: Ed25519 public key refused: {problem}")
        self.name = name
        self.public_key = public_key
        self.key_id = key_id(name, self.alg, public_key)
        self._vk = nacl.signing.VerifyKey(public_key)

    def verify(self, msg: bytes, sig: bytes) -> bool:
        return verify_signature(self._vk, msg, sig)

    def vkey(self) -> str:
        return verifier_key(self.name, self.alg, self.public_key)


class Ed25519Signer:
    """A 0x01 signer from a 32-byte seed (or a PyNaCl SigningKey)."""

    alg = ALG_ED25519

    def __init__(self, name: str, seed: bytes | nacl.signing.SigningKey) -> None:
        if not valid_name(name):
            raise KeyFormatError(f"invalid key name {name!r}")
        self._sk = seed if isinstance(seed, nacl.signing.SigningKey) else nacl.signing.SigningKey(bytes(seed))
        self.name = name
        self.public_key = bytes(self._sk.verify_key)
        self.key_id = key_id(name, self.alg, self.public_key)

    @property
    def seed(self) -> bytes:
        return bytes(self._sk)

    def sign(self, msg: bytes) -> bytes:
        return self._sk.sign(msg).signature

    def verifier(self) -> Ed25519Verifier:
        return Ed25519Verifier(self.name, self.public_key)

    def skey(self) -> str:
        return signer_key(self.name, self.alg, self.seed, self.public_key)


def _algorithms() -> dict[int, tuple[Callable[[str, bytes], Verifier], Callable[[str, bytes], Signer]]]:
    """alg byte -> (verifier from public key, signer from seed); 0x04 is cosignature.py's."""
    from carledger.transparency import cosignature  # imports this module: only at call time

    return {
        ALG_ED25519: (Ed25519Verifier, Ed25519Signer),
        cosignature.ALG_COSIGNATURE_V1: (cosignature.CosignatureVerifier, cosignature.CosignatureSigner),
    }


def verifier_key(name: str, alg: int, public_key: bytes) -> str:
    """name+keyid+base64(alg || public key)."""
    kid = key_id(name, alg, public_key)
    return f"{name}+{kid:08x}+{base64.b64encode(bytes([alg]) + bytes(public_key)).decode()}"


def signer_key(name: str, alg: int, seed: bytes, public_key: bytes) -> str:
    """PRIVATE+KEY+name+keyid+base64(alg || seed); the key id is over the public key."""
    kid = key_id(name, alg, public_key)
    return f"PRIVATE+KEY+{name}+{kid:08x}+{base64.b64encode(bytes([alg]) + bytes(seed)).decode()}"


def _split_key(text: str, what: str) -> tuple[str, int, int, bytes]:
    """name+hash+base64 -> (name, key id, alg, key bytes), checking the spelling only."""
    name, _, rest = text.partition("+")
    hash16, _, key64 = rest.partition("+")
    if not valid_name(name):
        raise KeyFormatError(f"malformed {what}: invalid key name {name!r}")
    if len(hash16) != 8 or any(c not in "0123456789abcdefABCDEF" for c in hash16):
        raise KeyFormatError(f"malformed {what} {name}: key id must be 8 hex digits")
    try:
        raw = b64decode_strict(key64)
    except ValueError as exc:
        raise KeyFormatError(f"malformed {what} {name}: key: {exc}") from None
    if len(raw) < 2:
        raise KeyFormatError(f"malformed {what} {name}: no key")
    return name, int(hash16, 16), raw[0], raw[1:]


def parse_verifier_key(vkey: str) -> Verifier:
    """A Verifier from name+hash+base64(alg || key); KeyFormatError names what is wrong."""
    name, kid, alg, key = _split_key(vkey.strip(), "verifier key")
    if kid != key_id(name, alg, key):
        raise KeyFormatError(f"verifier key {name}: key id {kid:08x} does not match the key")
    factories = _algorithms()
    if alg not in factories:
        raise KeyFormatError(f"verifier key {name}: unknown algorithm 0x{alg:02x}")
    if len(key) != 32:
        raise KeyFormatError(f"verifier key {name}: {len(key)}-byte key, expected 32")
    return factories[alg][0](name, key)


def parse_signer_key(skey: str) -> Signer:
    """A Signer from PRIVATE+KEY+name+hash+base64(alg || seed); the key id must match the derived public key."""
    skey = skey.strip()
    if not skey.startswith("PRIVATE+KEY+"):
        raise KeyFormatError("malformed signer key: it must start with PRIVATE+KEY+")
    name, kid, alg, seed = _split_key(skey[len("PRIVATE+KEY+") :], "signer key")
    factories = _algorithms()
    if alg not in factories:
        raise KeyFormatError(f"signer key {name}: unknown algorithm 0x{alg:02x}")
    if len(seed) != 32:
        raise KeyFormatError(f"signer key {name}: {len(seed)}-byte seed, expected 32")
    signer = factories[alg][1](name, seed)
    if signer.key_id != kid:
        raise KeyFormatError(f"signer key {name}: key id {kid:08x} does not match the key")
    return signer


def generate_key(name: str, alg: int = ALG_ED25519) -> tuple[str, str]:
    """A fresh (signer key, verifier key) pair, as Go's note.GenerateKey."""
    factories = _algorithms()
    if alg not in factories:
        raise KeyFormatError(f"unknown algorithm 0x{alg:02x}")
    signer = factories[alg][1](name, secrets.token_bytes(32))
    return signer.skey(), signer.verifier().vkey()  # type: ignore[attr-defined]


def _check_text(data: bytes) -> str:
    """UTF-8 without control characters other than newline, else MalformedNoteError."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedNoteError("not valid UTF-8") from None
    for c in text:
        if ord(c) < 0x20 and c != "\n":
            raise MalformedNoteError(f"control character U+{ord(c):04X}")
    return text


def parse_signature_line(line: str) -> Signature:
    """One line without its newline: "— name base64", the payload at least a key id and one byte."""
    if not line.startswith(SIG_PREFIX):
        raise MalformedNoteError("a signature line must start with an em dash and a space")
    name, _, b64 = line[len(SIG_PREFIX) :].partition(" ")
    if not valid_name(name) or not b64:
        raise MalformedNoteError("bad signature line")
    try:
        raw = b64decode_strict(b64)
    except ValueError:
        raise MalformedNoteError(f"signature of {name} is not canonical base64") from None
    if len(raw) < 5:
        raise MalformedNoteError(f"signature of {name} is too short")
    return Signature(name, int.from_bytes(raw[:4], "big"), b64)


def open_note(msg: bytes, known: Verifiers | Iterable[Verifier] = ()) -> Note:
    """Parse and verify a signed note (Go's note.Open); raises a NoteError subclass."""
    if not isinstance(known, Verifiers):
        known = Verifiers(known)
    if len(msg) > MAX_NOTE_SIZE:
        raise MalformedNoteError(f"over {MAX_NOTE_SIZE} bytes")
    whole = _check_text(bytes(msg))
    split = whole.rfind("\n\n")
    if split < 0:
        raise MalformedNoteError("no blank line before the signatures")
    text, sigs = whole[: split + 1], whole[split + 2 :]
    if not sigs or not sigs.endswith("\n"):
        raise MalformedNoteError("no signature lines, or the last one has no newline")
    note = Note(text)
    text_bytes = text.encode()
    lines = sigs[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNoteError(f"more than {MAX_SIGNATURES} signatures")
    seen: set[tuple[str, int]] = set()
    seen_unverified: set[str] = set()
    for line in lines:
        sig = parse_signature_line(line)
        verifier = known.lookup(sig.name, sig.key_id)
        if verifier is None:
            if line not in seen_unverified:
                seen_unverified.add(line)
                note.unverified_sigs.append(sig)
            continue
        if verifier.name != sig.name or verifier.key_id != sig.key_id:
            raise NoteError("verifier name or hash doesn't match signature")
        if (sig.name, sig.key_id) in seen:
            continue
        seen.add((sig.name, sig.key_id))
        if not verifier.verify(text_bytes, sig.payload):
            raise InvalidSignatureError(sig.name, sig.key_id)
        note.sigs.append(sig)
    if not note.sigs:
        raise UnverifiedNoteError(note)
    return note


def signature_for(text: str, signer: Signer) -> Signature:
    """The signature line of one signer over `text`."""
    if not valid_name(signer.name):
        raise NoteError(f"invalid signer name {signer.name!r}")
    raw = signer.key_id.to_bytes(4, "big") + signer.sign(text.encode())
    return Signature(signer.name, signer.key_id, base64.b64encode(raw).decode())


def sign_note(text: str, signers: Sequence[Signer], keep: Sequence[Signature] = ()) -> bytes:
    """The signed note: `text`, a blank line, the signers' lines, then `keep` (e.g. signatures already on it).

    As Go's note.Sign, a kept signature of a key that signs again here is dropped.
    """
    if not text.endswith("\n"):
        raise MalformedNoteError("the text must end with a newline")
    _check_text(text.encode())
    new = [signature_for(text, s) for s in signers]
    mine = {(s.name, s.key_id) for s in new}
    lines = [s.line() for s in new] + [s.line() for s in keep if (s.name, s.key_id) not in mine]
    return (text + "\n" + "".join(lines)).encode()
