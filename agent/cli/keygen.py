"""`carledger keygen`: keys for the people around a car (the vehicle's own key is made by the agent).

- `recipient`: an X25519 key pair; the public half goes in the owner's policy
  (`encrypt_to`), the private half stays with the recipient for `carledger read --key`.
- `owner`: an Ed25519 key pair; the public half is enrolled in the agent
  (`carledger remote enroll-owner`), the private half signs policy updates.

Both halves are written: NAME.key (private, 0600) and NAME.pub beside it.
Each file starts with a kind line (`# carledger owner key, private
(Ed25519)`), which the key readers skip: the two kinds are both 64 hex
digits, and the line is what lets `remote sign-policy` refuse a recipient
key given as the owner's. It is a label the file's holder wrote, not a
proof: a file without it is still read (keys made before it existed).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

KINDS = {"owner": "Ed25519", "recipient": "X25519"}
_KIND_LINE = re.compile(r"#\s*carledger (\w+) key, (private|public)\b")


def public_path(private: str | os.PathLike) -> Path:
    """Where the public half of `private` goes: owner.key -> owner.pub, anything else -> NAME.pub."""
    path = Path(private)
    return path.with_suffix(".pub") if path.suffix == ".key" else path.with_name(path.name + ".pub")


def key_kind(path: str | os.PathLike) -> tuple[str, str] | None:
    """(kind, "private"|"public") from a key file's kind line; None for a file without one (or unreadable)."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            first = fh.readline()
    except OSError:
        return None
    match = _KIND_LINE.match(first.strip())
    return (match.group(1), match.group(2)) if match else None


def _kind_line(kind: str, half: str) -> bytes:
    return f"# carledger {kind} key, {half} ({KINDS[kind]})\n".encode("ascii")

from carledger.cli._store import exit_status


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keygen", help="make a recipient (X25519) or owner (Ed25519) key; prints the public key",
        description="Write a new private key (hex, mode 0600) and its public key beside it (owner.key -> owner.pub), "
        "never overwriting either, and print the public key.",
        epilog=exit_status("written", "a file exists already (nothing written)"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=tuple(KINDS), help="recipient: encryption key; owner: policy signing key")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="private key file to create (NAME.key)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carledger.ledger.encrypt import PrivateKey
    from carledger.ledger.keys import SigningKey, _write_private

    private, public = Path(args.output), public_path(args.output)
    for path in (private, public):
        if path.exists():
            print(f"carledger keygen: {path}: exists already; nothing written", file=sys.stderr)
            return 1
    if args.kind == "recipient":
        secret = PrivateKey.generate()
        raw_public = bytes(secret.public_key)
    else:
        secret = SigningKey.generate()
        raw_public = bytes(secret.verify_key)
    try:
        if not _write_private(private, _kind_line(args.kind, "private") + bytes(secret).hex().encode("ascii") + b"\n"):
            print(f"carledger keygen: {private}: exists already; nothing written", file=sys.stderr)
            return 1
        fd = os.open(public, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(_kind_line(args.kind, "public") + raw_public.hex().encode("ascii") + b"\n")
    except OSError as exc:
        print(f"carledger keygen: {exc.filename or private}: cannot write: {exc.strerror}", file=sys.stderr)
        return 2
    print(raw_public.hex())
    print(f"wrote {private} (private, keep it secret) and {public}", file=sys.stderr)
    return 0
