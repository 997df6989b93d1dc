"""`carledger verify STORE`: check every chain of a store, like a third party would."""

from __future__ import annotations

import argparse
import json
import sys

from carledger.cli._display import TtyProgress, table
from carledger.cli._store import add_store_options, exit_status

EPILOG = """\
examples:
  carledger verify ./ledger
  carledger verify --store ./ledger --key keys/vehicle.pub --json
  carledger verify -c /etc/carledger/agent.toml

""" + exit_status("every chain is intact", "a problem was found")


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="verify the signatures, Merkle roots and chains of a store",
        description="Verify every block of a store: COSE_Sign1 signatures against the pinned key, payloads, "
        "records against their Merkle roots, and each stream's chain (gaps, forks, duplicates, order, head).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_store_options(parser, positional=True)
    parser.add_argument(
        "--key",
        metavar="PUBKEY",
        help="pin the vehicle's public key (64 hex digits or a file such as keys/vehicle.pub); "
        "default: the key the store records",
    )
    parser.set_defaults(func=run)


def _table(report) -> str:
    rows = [("stream", "blocks", "records", "seq", "head")]
    for name, s in sorted(report.streams.items()):
        seqs = "-" if s.first_seq is None else f"{s.first_seq}..{s.last_seq}"
        rows.append((name, str(s.blocks), str(s.records), seqs, (s.head or "-")[:16]))
    return table(rows, right=(1, 2))


def run(args: argparse.Namespace) -> int:
    from carledger.ledger import KeyFileError, StoreError
    from carledger.verify import verify_store

    progress = TtyProgress.if_tty("verifying")
    try:
        report = verify_store(args.store, key=args.key, progress=progress)
    except (StoreError, KeyFileError) as exc:
        if progress:
            progress.clear()
        print(f"carledger verify: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"carledger verify: {args.store}: {exc}", file=sys.stderr)
        return 2
    if progress:
        progress.clear()

    if args.json:
        json.dump(report.to_json(), sys.stdout, sort_keys=False)
        sys.stdout.write("\n")
        return 0 if report.ok else 1

    if report.vehicle is not None:
        print(f"vehicle {report.vehicle}, key {report.key_id or 'none'}")
    if report.streams:
        print(_table(report))
    else:
        print("no streams")
    if report.problems:
        print()
        print(f"problems ({len(report.problems)}):")
        for p in report.problems:
            print(f"  {p}")
    blocks = sum(s.blocks for s in report.streams.values())
    n = len(report.streams)
    if report.ok:
        print(f"OK: {n} stream{'s' * (n != 1)}, {blocks} blocks, every chain intact")
        return 0
    affected = len({p.stream for p in report.problems})
    print(f"FAILED: {len(report.problems)} problem{'s' * (len(report.problems) != 1)} in {affected} "
          f"{'place' if affected == 1 else 'places'} ({', '.join(sorted(report.kinds()))})")
    return 1
