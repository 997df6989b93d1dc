"""C2SP tlog-checkpoint (c2sp.org/tlog-checkpoint): a log's signed tree head as a note text.

    <origin>                 the log's identity, e.g. carledger.example/vehicle/<id>/<stream>
    <tree size>              ASCII decimal, no leading zero (the empty tree is "0")
    <root hash>              base64 of the 32-byte RFC 6962 root of the first <tree size> leaves
    [<extension line>...]    optional, opaque, each non-empty

Every line ends in a newline; the note's signature lines follow a blank line
(note.py). Parsing is exact: anything that `Checkpoint.text` would not write
back byte for byte is refused.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Iterable, Sequence

from carledger.ledger.merkle import HASH_SIZE
from carledger.transparency import note

__all__ = ["MAX_TREE_SIZE", "CheckpointError", "Checkpoint", "sign_checkpoint", "open_checkpoint"]

MAX_TREE_SIZE = 2**63 - 1  # Go's int64 tree sizes; more leaves than any car will ever write


class CheckpointError(ValueError):
    """A note text that is not a well-formed checkpoint, or one from another log than expected."""


def _parse_size(line: str, what: str) -> int:
    if not line.isascii() or not line.isdigit() or (line != "0" and line.startswith("0")):
        raise CheckpointError(f"{what} {line!r} is not a decimal without leading zeroes")
    size = int(line)
    if size > MAX_TREE_SIZE:
        raise CheckpointError(f"{what} {size} exceeds 2^63 - 1")
    return size


def _parse_hash(line: str, what: str) -> bytes:
    try:
        raw = note.b64decode_strict(line)
    except ValueError as exc:
        raise CheckpointError(f"{what}: {exc}") from None
    if len(raw) != HASH_SIZE:
        raise CheckpointError(f"{what} is {len(raw)} bytes, expected {HASH_SIZE}")
    return raw


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise CheckpointError("the origin must be one non-empty line")
        if not isinstance(self.size, int) or not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError(f"tree size {self.size!r} out of range")
        if len(self.root_hash) != HASH_SIZE:
            raise CheckpointError(f"root hash is {len(self.root_hash)} bytes, expected {HASH_SIZE}")
        if any(not e or "\n" in e for e in self.extensions):
            raise CheckpointError("extension lines must be single non-empty lines")

    def text(self) -> str:
        """The note text: origin, size, base64 root, extension lines, each with its newline."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode(), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> "Checkpoint":
        """The checkpoint in a note text; CheckpointError names the line that is wrong."""
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError(f"checkpoint has {len(lines)} lines, needs origin, tree size and root hash")
        origin, size_line, hash_line, *ext = lines
        if not origin:
            raise CheckpointError("empty origin line")
        if any(not e for e in ext):
            raise CheckpointError("empty extension line")
        return cls(origin, _parse_size(size_line, "tree size"), _parse_hash(hash_line, "root hash"), tuple(ext))


def sign_checkpoint(cp: Checkpoint, signers: Sequence[note.Signer], keep: Sequence[note.Signature] = ()) -> bytes:
    """The signed checkpoint note."""
    return note.sign_note(cp.text(), signers, keep)


def open_checkpoint(
    msg: bytes, log_keys: Iterable[note.Verifier], origin: str | None = None
) -> tuple[Checkpoint, note.Note]:
    """Verify a signed checkpoint against the log's keys and parse it.

    With `origin`, the checkpoint must be that log's. Signatures of other keys
    (witnesses' cosignatures among them) are kept in the Note, unverified.
    """
    n = note.open_note(msg, log_keys)
    cp = Checkpoint.parse(n.text)
    if origin is not None and cp.origin != origin:
        raise CheckpointError(f"checkpoint of {cp.origin!r}, expected {origin!r}")
    return cp, n
