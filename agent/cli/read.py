"""`carledger read`: a recipient reads its streams, decrypting what was encrypted to its key.

Every block is checked first (signature with the pinned vehicle key, Merkle
root over the ciphertext), then opened with the recipient's X25519 key and
its plaintext checked against the block's time range. Works on an agent's
store and on a collector's copy (COLLECTOR/vehicles/<vehicle>).
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from carledger.cli._args import stream_name
from carledger.cli._display import BlockProblem, by_cause
from carledger.cli._export import SAMPLE_FORMATS, Clock, add_time_option, event_row, rounding_from, sample_row
from carledger.cli._store import add_store_options, exit_status, open_output, output_path

EPILOG = exit_status("everything verified and decrypted", "a block failed (or is encrypted and no --key fits)") + """

examples:
  carledger keygen recipient -o insurer.key            # prints the public key for the owner's policy
  carledger read ./collected/vehicles/car-1 --key insurer.key --stream insurer
  carledger read ./ledger --key insurer.key --format csv > insurer.csv
  carledger read ./ledger --key insurer.key --format csv --time epoch --dbc car.dbc

Formats and columns: docs/exports.md (the same in `log export` and `edr export`).
"""


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "read", help="read (and decrypt) streams as their recipient, verifying every block",
        description="Print the records of a store's streams, one per line, after checking each block's signature "
        "and Merkle root; blocks encrypted to the recipient are decrypted with --key.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_store_options(parser, positional=True, json_output=False)  # STORE: an agent store or a collector's vehicles/VEHICLE
    parser.add_argument("--key", metavar="RECIPIENT_KEY", help="the recipient's X25519 private key (file or 64 hex digits)")
    parser.add_argument("--stream", action="append", type=stream_name, help="stream to read (repeatable; default: all)")
    parser.add_argument("--vehicle-key", metavar="PUBKEY", help="pin the vehicle's public key (default: the store's)")
    parser.add_argument("--format", choices=tuple(SAMPLE_FORMATS), default="jsonl", help="jsonl (default) or csv")
    parser.add_argument("--events", action="store_true", help="also print declared events (jsonl only)")
    parser.add_argument("--dbc", action="append", default=[], metavar="FILE", help="round values to their signal's resolution in this DBC")
    add_time_option(parser)
    parser.add_argument("-o", "--output", metavar="FILE", help="write here instead of standard output")
    parser.set_defaults(func=run)


def _rows(store, stream: str, vkey, key, problems: list[BlockProblem]):
    """(seq, records) of each block of `stream` that verifies (and decrypts); problems for the rest."""
    from carledger.ledger import MalformedBlock
    from carledger.ledger.encrypt import DecryptError, is_sealed, open_sealed

    ring = store.keyring(vkey)  # a recipient's stream: its own key, which the vehicle key certified
    for row in store.iter_blocks(stream):
        try:
            block = ring.open_block(store.message(row), allow_bare=True)  # records NULL: dropped, checked by verify
            records = block.records
            if records and is_sealed(records):
                if key is None:
                    raise DecryptError("encrypted; pass --key with a recipient's key")
                records = open_sealed(block.header, records, key)
        except (MalformedBlock, DecryptError) as exc:
            problems.append((stream, row.seq, str(exc)))
            continue
        yield row.seq, records


def run(args: argparse.Namespace) -> int:
    from carledger.ledger import KeyFileError, Sample, Store, StoreError, decode_record, load_verify_key
    from carledger.ledger.encrypt import load_private_key

    if args.output:
        output_path(args.output)  # before any work: a directory or a missing parent is a usage error
    try:
        store = Store.open_readonly(args.store)
    except StoreError as exc:
        print(f"carledger read: {exc}", file=sys.stderr)
        return 2
    try:
        key = load_private_key(args.key) if args.key else None
        vkey = load_verify_key(args.vehicle_key) if args.vehicle_key else store.verify_key
    except KeyFileError as exc:
        store.close()
        print(f"carledger read: {exc}", file=sys.stderr)
        return 2
    if vkey is None:
        store.close()
        print(f"carledger read: {args.store} records no vehicle key; pass --vehicle-key", file=sys.stderr)
        return 2
    rounding = rounding_from(args.dbc, "carledger read")
    if rounding is None:
        store.close()
        return 2
    problems: list[BlockProblem] = []
    fmt = SAMPLE_FORMATS[args.format]
    clock = Clock(args.time, machine=fmt.machine)
    out: TextIO = open_output(args.output)
    try:
        with store:
            names = args.stream or store.streams()
            missing = [n for n in names if n not in store.streams()]
            if missing:
                print(f"carledger read: no stream {missing[0]!r} in {args.store}", file=sys.stderr)
                return 1
            writer = fmt.writer(out)
            for name in names:
                for seq, records in _rows(store, name, vkey, key, problems):
                    for raw in records:
                        rec = decode_record(raw)
                        if isinstance(rec, Sample):
                            writer.sample(sample_row(name, seq, rec, clock, rounding))
                        elif args.events:
                            writer.event(event_row(name, seq, rec, clock))
    finally:
        if args.output:
            out.close()
    for line in by_cause(problems):
        print(f"carledger read: {line}", file=sys.stderr)
    return 1 if problems else 0
