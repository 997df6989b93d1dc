"""`carledger receipts verify STORE`: every recipient's receipt the store keeps, checked offline."""

from __future__ import annotations

import argparse
import json
import sys

from carledger.cli._display import table
from carledger.cli._store import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, add_store_options, exit_status, fail


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "receipts", help="the recipients' signed receipts (cosignatures of the car's log) the store keeps",
        description="Receipts: each recipient's collector cosigns (C2SP cosignature/v1) the checkpoint of the "
        "stream it verified up to; the car keeps it (docs/transparency.md, Receipts).")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    verify = sub.add_parser(
        "verify", help="check every receipt offline: enrolled key, the stream's log, the root from the blocks",
        description="Check every receipt of STORE with nothing but the store: the recipient's enrolled collector "
        "key (keys/collectors.json), the stream's key (the origin) and the blocks (the root, derived again).",
        epilog=exit_status("every receipt verifies (or there is none)", "a receipt does not verify (each is named)"))
    add_store_options(verify, positional=True)
    verify.set_defaults(func=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    from carledger.ledger import LedgerError
    from carledger.owner.receipts import check_receipts

    try:
        checks = check_receipts(args.store)
    except (LedgerError, OSError) as exc:
        return fail(args, f"receipts: {exc}", EXIT_USAGE)
    bad = [c for c in checks if c.problem]
    if args.json:
        print(json.dumps({"ok": not bad, "receipts": [c._asdict() for c in checks]}, sort_keys=True))
    else:
        from carledger.owner.state import iso

        rows = [("stream", "recipient", "blocks", "root", "cosigned", "verifies")]
        rows += [(c.stream, c.recipient, f"0..{c.size - 1}", c.root[:16], iso(c.stated) or "-",
                  ("yes" if c.key == "current" else "yes (the recipient's previous key)") if c.problem is None
                  else f"NO: {c.problem}") for c in checks]
        sys.stdout.write(table(rows) + "\n" if checks else f"{args.store}: no receipts\n")
    if bad:
        print(f"receipts: {len(bad)} of {len(checks)} receipts do not verify", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK
