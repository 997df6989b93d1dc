"""`carledger keygen`: keys for the people around a car (the vehicle's own key is made by the agent).

- `recipient`: an X25519 key pair; the public half goes in the owner's policy
  (`encrypt_to`), the private half stays with the recipient for `carledger read --key`.
- `owner`: an Ed25519 key pair; the public half is enrolled in the agent
  (`carledger remote enroll-owner`), the private half signs policy updates.
"""

from __future__ import annotations

import argparse
import sys

from carledger.cli._store import exit_status


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keygen", help="make a recipient (X25519) or owner (Ed25519) key; prints the public key",
        description="Write a new private key (hex, mode 0600, never overwriting) and print its public key.",
        epilog=exit_status("written", "the key file exists already or cannot be written"),
    )
    parser.add_argument("kind", choices=("recipient", "owner"), help="recipient: encryption key; owner: policy signing key")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="private key file to create")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from carledger.ledger import KeyFileError
    from carledger.ledger.encrypt import create_private_key
    from carledger.ledger.keys import SigningKey, _write_private

    try:
        if args.kind == "recipient":
            public = bytes(create_private_key(args.output).public_key)
        else:
            key = SigningKey.generate()
            if not _write_private(Path(args.output), bytes(key).hex().encode("ascii") + b"\n"):
                raise KeyFileError(f"{args.output}: exists already; not overwritten")
            public = bytes(key.verify_key)
    except (KeyFileError, OSError) as exc:
        print(f"carledger keygen: {exc}", file=sys.stderr)
        return 1
    print(public.hex())
    return 0

