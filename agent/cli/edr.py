"""`carledger edr list|export`: crash captures, listed from their cleartext metadata, opened with a named key."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from carledger.cli._display import table
from carledger.cli._export import (
    SAMPLE_FORMATS, Clock, Rounding, add_time_option, event_row, json_default, rounding_from, sample_row, to_json,
)
from carledger.cli._store import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, add_store_options, exit_status, fail, open_output, output_path

EPILOG = """\
examples:
  carledger edr list                                   the captures in the store of /etc/carledger/agent.toml
  carledger edr list ./ledger --json
  carledger keygen recipient -o owner.key              prints the public key to name in the policy's [edr] keys
  carledger edr export ./ledger --key owner.key        the newest capture, verified and decrypted, as JSON
  carledger edr export ./collected/vehicles/car-1 --key investigator.key --capture 2 --format csv -o crash.csv
  carledger edr export ./ledger --proof -o crash.proof.json   a proof bundle: `carledger verify-proof` checks it offline

A capture is encrypted to the keys the owner's policy names in [edr] keys
(the owner's, and optionally an investigator's or an escrow key); only those
keys open it. `list` needs no key: it reads the cleartext metadata (when, what
triggered it, whether an airbag deployed, the policy version, which keys).
`export` checks every block's signature, the chain through the capture and
its record count before it prints anything. A capture's records are what the
car recorded during it (samples and events such as end-of-event): the count the
agent's log line, `edr list`, `edr export` and `verify` all give. Formats and
columns: docs/exports.md (jsonl and csv as in `log export` and `read`).
`export --proof` needs no recipient's key (only the store's vehicle key, to sign the window): it writes the capture's blocks as signed (the
data blocks as ciphertext) with their proofs into the crash stream's signed,
cosigned checkpoint (docs/transparency.md, "Crash capture as evidence").
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
    add_time_option(listing)
    listing.set_defaults(func=list_captures)
    export = commands.add_parser("export", help="verify and decrypt one capture with a recipient's key",
                                 epilog=exit_status("exported", "not verified or not readable with this key"))
    add_store_options(export, positional=True, json_output=False)
    export.add_argument("--key", metavar="KEY", help="an X25519 private key the capture is encrypted to (file or 64 hex "
                        "digits); required unless --proof")
    export.add_argument("--proof", action="store_true", help="write a proof bundle of the capture (blocks as signed, "
                        "inclusion proofs, the cosigned checkpoint) for `carledger verify-proof`, instead of its content")
    export.add_argument("--capture", type=int, metavar="N", help="the capture's number (default: the newest)")
    export.add_argument("--vehicle-key", metavar="PUBKEY", help="pin the vehicle's public key (default: the store's)")
    export.add_argument("--format", choices=("json", *SAMPLE_FORMATS), default="json",
                        help="json (default): metadata, samples and events in one document; jsonl, csv: one sample per line")
    export.add_argument("--events", action="store_true", help="also write the capture's events (jsonl only)")
    export.add_argument("--dbc", action="append", default=[], metavar="FILE", help="round values to their signal's resolution in this DBC")
    add_time_option(export)
    export.add_argument("-o", "--output", metavar="FILE", help="write here instead of standard output")
    export.set_defaults(func=export_capture)
    parser.set_defaults(func=lambda args: parser.print_help() or EXIT_USAGE)


def _open_store(args: argparse.Namespace) -> Any:
    from carledger.ledger import Store

    return Store.open_readonly(args.store)


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
        clock = Clock(args.time, machine=True)
        docs = [c.to_json() for c in captures]
        for doc in docs:
            doc["t"], doc["end_of_event"] = clock(doc["t"]), clock(doc["end_of_event"])
        print(to_json({"captures": docs}, sort_keys=True))
        return EXIT_OK
    if not captures:
        print("no crash captures")
        return EXIT_OK
    clock = Clock(args.time, places=3)
    rows = [("capture", "trigger time (UTC)", "trigger", "delta-v", "records", "blocks", "airbag", "status", "policy", "keys")]
    for c in captures:
        rows.append((
            str(c.capture), str(clock(c.t)), c.trigger.get("kind", "?"), f"{c.trigger.get('delta_v_kmh', 0):.1f} km/h",
            "-" if c.records is None else str(c.records), "-" if c.data_seqs is None else "%d-%d" % c.data_seqs,
            "deployed" if c.deployment else "no", c.status, f"v{c.policy.get('version', '?')}",
            ", ".join(k.get("name", "?") for k in c.keys),
        ))
    print(table(rows, right=(0, 4)))
    return EXIT_OK


class ExportRefused(Exception):
    """Why a capture cannot be exported: the one line `edr export` prints (and the console shows), its exit status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def open_for_export(store_path: str, key: Any, number: int | None = None,
                    vehicle_key: str | None = None) -> tuple[int, Any]:
    """(number, CaptureContent): capture `number` (default the newest) verified and decrypted with `key`.

    The one path from a key to a capture's content, for `edr export` and the
    console alike; every refusal is an ExportRefused with the CLI's message.
    """
    from carledger.config import ConfigError
    from carledger.edr import CaptureError, open_capture, read_captures
    from carledger.ledger import KeyFileError, LedgerError, MalformedBlock, Store, load_verify_key
    from carledger.ledger.encrypt import DecryptError
    from carledger.ledger.keys import kid

    try:
        store = Store.open_readonly(store_path)
    except (ConfigError, LedgerError, OSError) as exc:
        raise ExportRefused(str(exc), EXIT_USAGE) from None
    with store:
        try:
            vkey = load_verify_key(vehicle_key) if vehicle_key else store.verify_key
            if vkey is None:
                raise ExportRefused(f"{store.path} records no vehicle key; pass --vehicle-key", EXIT_USAGE)
            asked = number
            if number is None:
                captures = [c for c in read_captures(store, vkey) if not c.overwritten]
                if not captures:
                    raise ExportRefused(f"no crash capture to export in {store.path}", EXIT_REFUSED)
                number = captures[-1].capture
            return number, open_capture(store, number, key, vkey)
        except KeyFileError as exc:
            raise ExportRefused(str(exc), EXIT_USAGE) from None
        except CaptureError as exc:  # its message names the capture
            raise ExportRefused(str(exc), EXIT_REFUSED) from None
        except MalformedBlock as exc:  # the metadata itself does not verify: every block would say the same
            raise ExportRefused(f"the crash stream does not verify with vehicle key {kid(vkey).hex()}: {exc}",
                                EXIT_REFUSED) from None
        except (DecryptError, LedgerError) as exc:
            raise ExportRefused(f"capture {asked or number}: {exc}", EXIT_REFUSED) from None


def export_capture(args: argparse.Namespace) -> int:
    from carledger.config import ConfigError
    from carledger.ledger import KeyFileError
    from carledger.ledger.encrypt import load_private_key

    if args.output:
        output_path(args.output)  # before any work: a directory or a missing parent is a usage error
    if args.proof:
        return _export_proof(args)
    if not args.key:
        return fail(args, "--key is required (or --proof)", EXIT_USAGE)
    try:
        key = load_private_key(args.key)
    except (ConfigError, KeyFileError, OSError) as exc:
        return fail(args, str(exc), EXIT_USAGE)
    try:
        number, content = open_for_export(args.store, key, args.capture, args.vehicle_key)
    except ExportRefused as exc:
        return fail(args, str(exc), exc.status)
    rounding = rounding_from(args.dbc)
    if rounding is None:
        return EXIT_USAGE
    out: TextIO = open_output(args.output)
    try:
        write_capture(content, out, args.format, events=args.events, time=args.time, rounding=rounding)
    finally:
        if args.output:
            out.close()
    print(f"capture {number}: {_counted(content)}, signatures and chain verified", file=sys.stderr)
    return EXIT_OK


def _export_proof(args: argparse.Namespace) -> int:
    """`edr export --proof`: the capture's proof bundle, written only once built whole."""
    from carledger.config import ConfigError
    from carledger.edr import CaptureError, capture_bundle, read_captures
    from carledger.ledger import KeyFileError, LedgerError, MalformedBlock, load_verify_key
    from carledger.ledger.proofs import dumps

    try:
        store = _open_store(args)
    except (ConfigError, LedgerError, OSError) as exc:
        return fail(args, str(exc), EXIT_USAGE)
    with store:
        try:
            vkey = load_verify_key(args.vehicle_key) if args.vehicle_key else store.verify_key
            captures = {c.capture: c for c in read_captures(store, vkey)}
            if args.capture is None:
                live = [n for n, c in captures.items() if not c.overwritten]
                if not live:
                    return fail(args, f"no crash capture to export in {store.path}", EXIT_REFUSED)
                number = live[-1]
            elif args.capture not in captures:
                return fail(args, f"capture {args.capture}: no such capture in {store.path}", EXIT_REFUSED)
            else:
                number = args.capture
            bundle = capture_bundle(store, captures[number])
        except KeyFileError as exc:
            return fail(args, str(exc), EXIT_USAGE)
        except (CaptureError, MalformedBlock, LedgerError) as exc:
            return fail(args, f"edr export --proof: {exc}", EXIT_REFUSED)
    out: TextIO = open_output(args.output)
    try:
        out.write(dumps(bundle))
    finally:
        if args.output:
            out.close()
    print(f"capture {number}: proof bundle of crash blocks {captures[number].start_seq}-"
          f"{captures[number].end_seq} under a checkpoint; check it with `carledger verify-proof`", file=sys.stderr)
    return EXIT_OK


def _counted(content: Any) -> str:
    """`3023 records in blocks 1-7 (3022 samples, 1 event)`: the count the capture-end event signs."""
    events = len(content.data_events)
    seqs = content.info.data_seqs
    where = f" in blocks {seqs[0]}-{seqs[1]}" if seqs else ""
    return (f"{content.records} records{where} ({len(content.samples)} samples, "
            f"{events} event{'s' * (events != 1)})")


def write_capture(content: Any, out: TextIO, fmt_name: str = "json", *, events: bool = False,
                  time: str | None = None, rounding: Any = None) -> None:
    """The capture in the format asked (json, jsonl, csv): a JSON document, or the samples as every export
    writes them. `edr export` and the console's download both write through here."""
    from carledger.edr import CRASH_STREAM

    rounding = Rounding(()) if rounding is None else rounding
    fmt = SAMPLE_FORMATS.get(fmt_name)
    clock = Clock(time, machine=fmt is None or fmt.machine)
    samples = [sample_row(CRASH_STREAM, seq, s, clock, rounding) for s, seq in zip(content.samples, content.sample_seqs)]
    if fmt is None:  # json: the capture's metadata, then its samples and events
        info = content.info.to_json()
        info["t"], info["end_of_event"] = clock(info["t"]), clock(info["end_of_event"])
        doc = {
            "capture": info, "verified": True, "blocks": content.blocks, "records": content.records, "samples": samples,
            "events": [event_row(CRASH_STREAM, seq, e, clock) for e, seq in zip(content.events, content.event_seqs)],
        }
        out.write(to_json(doc, default=json_default, sort_keys=True) + "\n")
        return
    writer = fmt.writer(out)
    rows = [(s.t, 0, row) for s, row in zip(content.samples, samples)]
    if events:
        rows += [(e.t, 1, event_row(CRASH_STREAM, seq, e, clock)) for e, seq in zip(content.events, content.event_seqs)]
    for _, is_event, row in sorted(rows, key=lambda r: (r[0], r[1])) if events else rows:
        (writer.event if is_event else writer.sample)(row)
