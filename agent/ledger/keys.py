"""The vehicle's Ed25519 signing key in STORE/keys/, public keys for verifiers, and the Signer the ledger signs through.

The ledger never holds key material itself: it signs through a `Signer`
(sign, public key, key id). `FileSigner` (the hex seed in STORE/keys/) is the
default; a backend that keeps the key in a TPM or a secure element plugs in
by implementing the same three members (docs/key-protection.md).
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import stat
from pathlib import Path
from typing import Protocol, runtime_checkable

import nacl.bindings
import nacl.exceptions
import nacl.signing

from carledger.ledger.errors import KeyFileError
from carledger.ledger.files import fsync_dir as _fsync_dir
from carledger.ledger.files import private_dir, repair_private, write_private

__all__ = [
    "KEY_DIR",
    "KEY_FILE",
    "PUB_FILE",
    "SigningKey",
    "VerifyKey",
    "key_path",
    "load_or_create_secret",
    "load_secret",
    "load_or_create_signing_key",
    "load_signing_key",
    "load_verify_key",
    "kid",
    "public_key_problem",
    "enrolment_key",
    "verify_signature",
    "Signer",
    "FileSigner",
    "KeyBackendUnavailable",
    "as_signer",
    "check_key_spec",
    "signer_from_spec",
]

SigningKey = nacl.signing.SigningKey
VerifyKey = nacl.signing.VerifyKey

KEY_DIR = "keys"
KEY_FILE = "vehicle.key"
PUB_FILE = "vehicle.pub"
PSEUDONYM_FILE = "pseudonym.key"  # the secret behind each recipient's pseudonym of the VIN


def key_path(store_dir: str | os.PathLike) -> Path:
    return Path(store_dir) / KEY_DIR / KEY_FILE


def kid(verify_key: VerifyKey | bytes) -> bytes:
    """Key id: the first 8 bytes of SHA-256 of the raw 32-byte public key."""
    raw = bytes(verify_key)
    return hashlib.sha256(raw).digest()[:8]


_P = 2**255 - 19  # the field prime: a y coordinate at or above it is a non-canonical encoding
_L = 2**252 + 27742317777372353535851937790883648493  # the order of the prime-order subgroup
_IDENTITY = (1).to_bytes(32, "little")
_L_MINUS_1 = (_L - 1).to_bytes(32, "little")


def _in_prime_order_subgroup(raw: bytes) -> bool:
    """[L]P is the identity: checked as [L-1]P == -P, one scalar multiplication in libsodium (~70 µs).

    libsodium 1.0.18 (bundled with PyNaCl 1.4, and what many systems ship)
    tests only that X of [L]P is zero, which also holds for a point plus the
    order-2 point (0, -1): its crypto_core_ed25519_is_valid_point accepts such
    a key (C2SP CCTV's fe894df1...). For P = Q + T with Q in the subgroup and
    T of order 2, 4 or 8: L-1 is even, so [L-1]P = -Q + [L-1]T, which is -P
    only when T is the identity. The scalar is not clamped, and L-1 < L is
    left as it is by every libsodium; a point libsodium refuses to multiply is
    not in the subgroup. (Was 326 point additions, ~5 ms, which a collector
    paid for each car it had not seen lately.)
    """
    try:
        multiple = nacl.bindings.crypto_scalarmult_ed25519_noclamp(_L_MINUS_1, raw)
    except nacl.exceptions.RuntimeError:
        return False
    return multiple == nacl.bindings.crypto_core_ed25519_sub(_IDENTITY, raw)


# A collector checks every enrolled key of the fleet in turn, block after block: with the subgroup check
# as 326 point additions (~5 ms), a cache smaller than the fleet missed on every block and dominated a
# worker's time (bench_fleet, 2,000 cars: 6.4 ms CPU per block against 2.1 at 200). The check is now one
# scalar multiplication; the cache still saves it for the fleet's keys. 65,536 keys are about 10 MB at most.
@functools.lru_cache(maxsize=1 << 16)
def public_key_problem(raw: bytes) -> str | None:
    """None for a public key carledger accepts, else why not (docs/ledger-keys.md).

    Accepted: the canonical encoding of a point of the prime-order subgroup
    other than the identity (libsodium's crypto_core_ed25519_is_valid_point,
    with the subgroup checked here too: see _in_prime_order_subgroup).
    Refused: small-order points, non-canonical encodings, non-points, and
    points with a small-order component, which libsodium's verify alone lets
    through. Cached: a collector checks the same keys (its fleet's) for every block.
    """
    raw = bytes(raw)
    if len(raw) != 32:
        return f"{len(raw)} bytes, expected 32"
    if nacl.bindings.crypto_core_ed25519_is_valid_point(raw) and _in_prime_order_subgroup(raw):
        return None
    if int.from_bytes(raw, "little") & ((1 << 255) - 1) >= _P:
        return "a non-canonical encoding (y >= 2^255 - 19)"
    try:  # only to say why: point addition takes any curve point, so [8]P tells small order apart
        p8 = raw
        for _ in range(3):
            p8 = nacl.bindings.crypto_core_ed25519_add(p8, p8)
    except nacl.exceptions.RuntimeError:
        return "not a point of the curve"
    if p8 == _IDENTITY:
        return "a small-order point"
    return "a point with a small-order component (outside the prime-order subgroup)"


def enrolment_key(public_key: "str | os.PathLike | bytes | VerifyKey") -> "VerifyKey":
    """`load_verify_key`, and KeyFileError for a key no signature should ever be checked against."""
    key = load_verify_key(public_key)
    problem = public_key_problem(bytes(key))
    if problem is not None:
        raise KeyFileError(f"public key {bytes(key).hex()}: refused: {problem} (docs/ledger-keys.md)")
    return key


def verify_signature(verify_key: "VerifyKey", message: bytes, signature: bytes) -> bool:
    """The one Ed25519 check of carledger: the key rule above, then libsodium's strict verify.

    libsodium refuses a signature that is not 64 bytes' worth of a small-order
    R, a non-canonical R (the R it recomputes must match byte for byte), or
    S >= L, and checks the cofactorless equation [S]B = R + [k]A.
    """
    if len(signature) != 64 or public_key_problem(bytes(verify_key)) is not None:
        return False
    try:
        verify_key.verify(message, signature)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def _parse_hex_key(text: str, what: str) -> bytes:
    """32 bytes from 64 hex digits; lines starting with '#' (the kind line `carledger keygen` writes) are skipped."""
    text = "".join(line for line in text.splitlines() if not line.lstrip().startswith("#")).strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(f"{what}: not hex") from None
    if len(raw) != 32:
        raise KeyFileError(f"{what}: {len(raw)} bytes, expected 32")
    return raw


def load_signing_key(path: str | os.PathLike, *, check_mode: bool = True) -> SigningKey:
    """Read a hex seed file; refuse one that group or others can read (unless check_mode=False)."""
    return SigningKey(_read_private_hex(Path(path), "the signing key", check_mode))


def _read_private_hex(path: Path, what: str, check_mode: bool = True) -> bytes:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such file") from None
    if check_mode and st.st_mode & 0o077:
        raise KeyFileError(
            f"{path}: {what} is accessible to group/others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 600 {path}"
        )
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read {what}: {exc}") from None
    return _parse_hex_key(text, str(path))


def _write_private(path: Path, data: bytes) -> bool:
    """Create `path` atomically with mode 0600; False when it already exists."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic and never replaces: a concurrent first run keeps one key
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _key_dir(store_dir: str | os.PathLike) -> Path:
    kdir = Path(store_dir) / KEY_DIR
    if not kdir.exists():
        private_dir(kdir)
        _fsync_dir(kdir.parent)
        return kdir
    try:
        repair_private(kdir, "the keys directory")  # others who can write it could swap the key
    except OSError as exc:
        raise KeyFileError(f"{kdir}: group/others can use the keys directory and it cannot be made 0700: {exc}") from None
    return kdir


def _create_private_hex(kdir: Path, name: str, raw: bytes) -> Path:
    path = kdir / name
    if not path.exists() and _write_private(path, raw.hex().encode("ascii") + b"\n"):
        _fsync_dir(kdir)
    return path


def load_or_create_secret(store_dir: str | os.PathLike, name: str = PSEUDONYM_FILE) -> bytes:
    """A 32-byte secret in STORE/keys/NAME (mode 0600), created on first use; it never leaves the car."""
    path = _create_private_hex(_key_dir(store_dir), name, secrets.token_bytes(32))
    return _read_private_hex(path, "the secret")


def load_secret(store_dir: str | os.PathLike, name: str = PSEUDONYM_FILE) -> bytes | None:
    """The secret in STORE/keys/NAME, None when the car has not made it yet (readers never create it)."""
    path = Path(store_dir) / KEY_DIR / name
    return _read_private_hex(path, "the secret") if path.exists() else None


def load_or_create_signing_key(store_dir: str | os.PathLike) -> SigningKey:
    """The vehicle key in STORE/keys/vehicle.key, created (mode 0600, dir 0700) on first use.

    Also writes STORE/keys/vehicle.pub (hex public key) when it is missing.
    """
    kdir = _key_dir(store_dir)
    path = _create_private_hex(kdir, KEY_FILE, bytes(SigningKey.generate()))
    key = load_signing_key(path)
    pub = kdir / PUB_FILE
    want = bytes(key.verify_key).hex()
    try:
        have = pub.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        have = None
    if have != want:
        write_private(pub, (want + "\n").encode("ascii"))
    return key


def load_verify_key(path_or_hex: str | os.PathLike | bytes | VerifyKey) -> VerifyKey:
    """A public key from 64 hex digits, raw 32 bytes, or a file holding hex (vehicle.pub).

    A private key file (vehicle.key) is accepted too: its public half is used.
    """
    if isinstance(path_or_hex, VerifyKey):
        return path_or_hex
    if isinstance(path_or_hex, (bytes, bytearray)):
        if len(path_or_hex) != 32:
            raise KeyFileError(f"public key: {len(path_or_hex)} bytes, expected 32")
        return VerifyKey(bytes(path_or_hex))
    text = os.fspath(path_or_hex)
    stripped = text.strip()
    if len(stripped) == 64 and all(c in "0123456789abcdefABCDEF" for c in stripped) and not os.path.exists(text):
        return VerifyKey(bytes.fromhex(stripped))
    path = Path(text)
    try:
        content = path.read_text(encoding="ascii")
    except FileNotFoundError:
        if stripped and all(c in "0123456789abcdefABCDEF" for c in stripped):
            raise KeyFileError(f"{text}: {len(stripped)} hex digits, expected 64 (and no such file)") from None
        raise KeyFileError(f"{text}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{text}: cannot read the key: {exc}") from None
    raw = _parse_hex_key(content, str(path))
    if path.name == KEY_FILE or path.suffix == ".key":
        return SigningKey(raw).verify_key
    try:
        return VerifyKey(raw)
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:  # pragma: no cover - 32 bytes always load
        raise KeyFileError(f"{path}: not an Ed25519 public key: {exc}") from None


@runtime_checkable
class Signer(Protocol):
    """What the ledger needs of the vehicle key, and all it gets: the key itself may never leave its device.

    `sign` returns the 64-byte Ed25519 signature (RFC 8032, pure EdDSA) of the
    message; `public_key` is the raw 32-byte key; `key_id` is `kid(public_key)`.
    """

    @property
    def public_key(self) -> bytes: ...

    @property
    def key_id(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


class FileSigner:
    """The default Signer: an Ed25519 seed held in this process (read from a 0600 file)."""

    def __init__(self, signing_key: SigningKey):
        self.signing_key = signing_key
        self.verify_key = signing_key.verify_key
        self._public = bytes(self.verify_key)
        self._kid = kid(self._public)

    @property
    def public_key(self) -> bytes:
        return self._public

    @property
    def key_id(self) -> bytes:
        return self._kid

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature

    def __repr__(self) -> str:
        return f"<FileSigner kid={self._kid.hex()}>"


def as_signer(key: Signer | SigningKey) -> Signer:
    """A Signer for `key`; a bare PyNaCl SigningKey (owner and collector keys, tests) is wrapped in a FileSigner."""
    if isinstance(key, SigningKey):
        return FileSigner(key)
    if isinstance(key, FileSigner):  # the common case, twice per block: a Protocol isinstance costs ~30 µs
        return key
    if isinstance(key, Signer):
        return key
    raise TypeError(f"not a signing key or Signer: {type(key).__name__}")


class KeyBackendUnavailable(KeyFileError):
    """A key backend named in the configuration that this build cannot use."""


# Schemes of `[agent] key`: file is built in; the others are the hardware backends docs/key-protection.md
# describes, refused by name so that a configuration written for them fails clearly instead of falling back
# to a key file (which would silently defeat the point of the hardware).
_HARDWARE_SCHEMES = {
    "pkcs11": "a PKCS#11 token (tpm2-pkcs11, cryptoauthlib's PKCS#11 for an ATECC608)",
    "tpm2": "a TPM 2.0 through tpm2-tss",
}


def check_key_spec(spec: str) -> str | None:
    """None when `spec` ("file:PATH", "pkcs11:URI", "tpm2:...") can be used here, else the reason (one line)."""
    scheme, sep, rest = spec.partition(":")
    if not sep:
        return f"{spec!r}: expected SCHEME:VALUE, e.g. file:/etc/carledger/vehicle.key (docs/key-protection.md)"
    if scheme == "file":
        return None if rest else "file: needs a path, e.g. file:/etc/carledger/vehicle.key"
    if scheme in _HARDWARE_SCHEMES:
        return (
            f"{scheme}: not available here: this carledger has no backend for {_HARDWARE_SCHEMES[scheme]}; "
            "see docs/key-protection.md"
        )
    return f"{scheme}: unknown key backend (this carledger knows: file)"


def signer_from_spec(spec: str | None, store_dir: str | os.PathLike) -> Signer:
    """The Signer named by `[agent] key`; None means the default STORE/keys/vehicle.key, created on first use.

    Raises KeyBackendUnavailable for a backend this build lacks, KeyFileError
    for a key file that cannot be used.
    """
    if spec is None:
        return FileSigner(load_or_create_signing_key(store_dir))
    problem = check_key_spec(spec)
    if problem is not None:
        raise KeyBackendUnavailable(problem)
    return FileSigner(load_signing_key(spec.partition(":")[2]))
