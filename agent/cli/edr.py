"""`carledger edr list|export`: crash captures, listed from their cleartext metadata, opened with a named key."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from carledger.cli._display import table
from carledger.cli._store import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, add_store_options, exit_status, fail, open_output, output_path

EPILOG = """\
examples:
  carledger edr list                                   the captures in the store of /etc/carledger/agent.toml
  carledger edr list ./ledger --json
  carledger keygen recipient -o owner.key              prints the public key to name in the policy's [edr] keys
  carledger edr export ./ledger --key owner.key        the newest capture, verified and decrypted, as JSON
  carledger edr export ./collected/vehicles/car-1 --key investigator.key --capture 2 --format csv -o crash.csv

A capture is encrypted to the keys the owner's policy names in [edr] keys
(the owner's, and optionally an investigator's or an escrow key); only those
keys open it. `list` needs no key: it reads the cleartext metadata (when, what
triggered it, whether an airbag deployed, the policy version, which keys).
`export` checks every block's signature, the chain through the capture and
its record count before it prints anything.
""" + exit_status("done", "not verified or not readable with this key")


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "edr", help="crash captures (event data recorder): list them, export one with a named key",
        description="Crash captures: 20 s before a crash at 10 Hz and the seconds after, encrypted to the keys "
        "the owner's policy names.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    listing = commands.add_parser("list", help="every capture: when, trigger, airbag, status, keys",
                                  epilog=exit_status("listed", "the crash stream does not verify"))
    add_store_options(listing, positional=True)  # STORE: an agent store or a collector's vehicles/VEHICLE
    listing.set_defaults(func=list_captures)
    export = commands.add_parser("export", help="verify and decrypt one capture with a recipient's key",
                                 epilog=exit_status("exported", "not verified or not readable with this key"))
    add_store_options(export, positional=True, json_output=False)
    export.add_argument("--key", required=True, metavar="KEY", help="an X25519 private key the capture is encrypted to (file or 64 hex digits)")
    export.add_argument("--capture", type=int, metavar="N", help="the capture's number (default: the newest)")
    export.add_argument("--vehicle-key", metavar="PUBKEY", help="pin the vehicle's public key (default: the store's)")
    export.add_argument("--format", choices=("json", "csv"), default="json", help="json (default): metadata, samples and events; csv: samples")
    export.add_argument("-o", "--output", metavar="FILE", help="write here instead of standard output")
    export.set_defaults(func=export_capture)
    parser.set_defaults(func=lambda args: parser.print_help() or EXIT_USAGE)


def _open_store(args: argparse.Namespace) -> Any:
    from carledger.ledger import Store

    return Store.open_readonly(args.store)


def _iso(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def list_captures(args: argparse.Namespace) -> int:
    from carledger.config import ConfigError
    from carledger.edr import read_captures
    from carledger.ledger import LedgerError, MalformedBlock

    try:
        with _open_store(args) as store:
            captures = read_captures(store, store.verify_key)
    except MalformedBlock as exc:  # a forged or damaged metadata block
        return fail(args, f"the crash stream does not verify: {exc}", EXIT_REFUSED)
    except (ConfigError, LedgerError, OSError) as exc:
        return fail(args, str(exc), EXIT_USAGE)
    if args.json:
        print(json.dumps({"captures": [c.to_json() for c in captures]}, sort_keys=True))
        return EXIT_OK
    if not captures:
        print("no crash captures")
        return EXIT_OK
    rows = [("capture", "trigger time (UTC)", "trigger", "delta-v", "airbag", "status", "policy", "keys")]
    for c in captures:
        rows.append((
            str(c.capture), _iso(c.t), c.trigger.get("kind", "?"), f"{c.trigger.get('delta_v_kmh', 0):.1f} km/h",
            "deployed" if c.deployment else "no", c.status, f"v{c.policy.get('version', '?')}",
            ", ".join(k.get("name", "?") for k in c.keys),
        ))
    print(table(rows, right=(0,)))
    return EXIT_OK


def export_capture(args: argparse.Namespace) -> int:
    from carledger.config import ConfigError
    from carledger.edr import CaptureError, open_capture, read_captures
    from carledger.ledger import KeyFileError, LedgerError, load_verify_key
    from carledger.ledger.encrypt import DecryptError, load_private_key

    if args.output:
        output_path(args.output)  # before any work: a directory or a missing parent is a usage error
    try:
        key = load_private_key(args.key)
        store = _open_store(args)
    except (ConfigError, KeyFileError, LedgerError, OSError) as exc:
        return fail(args, str(exc), EXIT_USAGE)
    with store:
        try:
            vkey = load_verify_key(args.vehicle_key) if args.vehicle_key else store.verify_key
            if vkey is None:
                return fail(args, f"{store.path} records no vehicle key; pass --vehicle-key", EXIT_USAGE)
            number = args.capture
            if number is None:
                captures = [c for c in read_captures(store, vkey) if not c.overwritten]
                if not captures:
                    return fail(args, f"no crash capture to export in {store.path}", EXIT_REFUSED)
                number = captures[-1].capture
            content = open_capture(store, number, key, vkey)
        except KeyFileError as exc:
            return fail(args, str(exc), EXIT_USAGE)
        except (CaptureError, DecryptError, LedgerError) as exc:
            return fail(args, f"capture {args.capture or number}: {exc}", EXIT_REFUSED)
    out: TextIO = open_output(args.output)
    try:
        if args.format == "csv":
            writer = csv.writer(out)
            writer.writerow(["t", "name", "source", "value"])
            for s in content.samples:
                writer.writerow([f"{s.t / 1e6:.6f}", s.name, s.source or "", s.value])
        else:
            doc = {
                "capture": content.info.to_json(), "verified": True, "blocks": content.blocks,
                "samples": [{"t": s.t / 1e6, "name": s.name, "source": s.source, "value": s.value} for s in content.samples],
                "events": [{"t": e.t / 1e6, "event": e.kind, "detail": e.detail} for e in content.events],
            }
            json.dump(doc, out, default=str, sort_keys=True)
            out.write("\n")
    finally:
        if args.output:
            out.close()
    print(f"capture {number}: {len(content.samples)} samples in {content.blocks} blocks, signatures and chain verified",
          file=sys.stderr)
    return EXIT_OK
