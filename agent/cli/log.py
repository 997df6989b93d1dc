"""`carledger log`: read a ledger back: list its streams, show a block, export samples.

Everything read here is checked on the way out: a block whose signature or
Merkle root does not hold is reported and not exported as if it were good.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any, Iterator, TextIO

from carledger.cli._display import TtyProgress
from carledger.cli._store import UsageError, add_store_options, exit_status, open_output, output_path

EPILOG = """\
examples:
  carledger log list ./ledger
  carledger log show ./ledger --stream all --seq 0
  carledger log export ./ledger --stream all --format csv > all.csv
  carledger log export ./ledger --stream all --format jsonl --events -o all.jsonl
  carledger log list --store /var/lib/carledger

""" + exit_status("read", "a block failed its checks, or no such stream or block")


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "log", help="list, show and export what a ledger holds",
        description="Read a ledger back: every block is checked (signature, Merkle root) on the way out.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="log commands", metavar="COMMAND")

    p = sub.add_parser("list", help="streams with their blocks, records and time range", epilog=exit_status("listed", None))
    add_store_options(p, positional=True)
    p.set_defaults(func=list_streams)

    p = sub.add_parser("show", help="one block: its signed header and its records",
                       epilog=exit_status("shown", "the block failed its checks, or no such block"))
    add_store_options(p, positional=True)
    p.add_argument("--stream", required=True)
    p.add_argument("--seq", type=int, help="block sequence number (default: the newest)")
    p.set_defaults(func=show_block)

    p = sub.add_parser("export", help="one decoded sample per line: time, name, message, signal, value",
                       epilog=exit_status("exported", "a block failed its checks (left out), or no such stream"))
    add_store_options(p, positional=True, json_output=False)
    p.add_argument("--stream", required=True)
    p.add_argument("--format", choices=("jsonl", "csv", "candump"), default="jsonl",
                   help="candump: the samples re-encoded into CAN frames (needs --dbc), for canplayer")
    p.add_argument("--dbc", action="append", default=[], metavar="FILE", help="DBC to encode frames with (--format candump)")
    p.add_argument("--channel", default="can0", help="interface name written into candump lines (default can0)")
    p.add_argument("--events", action="store_true", help="also export declared events (jsonl only)")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of standard output")
    p.set_defaults(func=export_stream)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _open(path: str):
    from carledger.ledger import Store, StoreError

    try:
        return Store.open_readonly(path)
    except StoreError as exc:
        print(f"carledger: {exc}", file=sys.stderr)
        return None


def _verify_key(store):
    from nacl.signing import VerifyKey

    return VerifyKey(bytes(store.meta()["public_key"]))


def list_streams(args: argparse.Namespace) -> int:
    store = _open(args.store)
    if store is None:
        return 2
    with store:
        rows = store.summaries()
        meta = store.meta()
    streams = {
        r[0]: {
            "blocks": r[1], "records": r[2], "first_seq": r[3], "last_seq": r[4],
            "t0": r[5] / 1e6, "t1": r[6] / 1e6, "dropped": r[7], "synced": r[8], "acked": r[9],
        }
        for r in rows
    }
    if args.json:
        print(json.dumps({"vehicle": _text(meta.get("vehicle")), "streams": streams}))
        return 0
    print(f"vehicle {_text(meta.get('vehicle'))}")
    header = f"{'stream':<20} {'blocks':>7} {'records':>9} {'seq':>13} {'from':>18} {'to':>18} {'acked':>6}"
    print(header)
    print("-" * len(header))
    for name, s in streams.items():
        seq = f"{s['first_seq']}..{s['last_seq']}"
        print(f"{name:<20} {s['blocks']:>7} {s['records']:>9} {seq:>13} {s['t0']:>18.3f} {s['t1']:>18.3f} {s['acked']:>6}")
    if not streams:
        print("(no blocks yet)")
    return 0


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _checked_blocks(store, stream: str, problems: list[str]) -> Iterator[tuple[Any, list[bytes]]]:
    """Rows of a stream with their records, each checked against its signature and Merkle root."""
    from carledger.ledger import MalformedBlock, open_block

    key = _verify_key(store)
    for row in store.iter_blocks(stream):
        try:
            block = open_block(store.message(row), key)
        except MalformedBlock as exc:
            problems.append(f"stream {stream} block {row.seq}: {exc}")
            print(f"carledger: skipped stream {stream} block {row.seq}: {exc}", file=sys.stderr)
            continue
        yield row, block.records


def _sample_fields(sample) -> dict[str, Any]:
    source = sample.source or sample.name
    message, _, signal = source.partition(".")
    return {"t": sample.t / 1e6, "name": sample.name, "message": message, "signal": signal, "value": sample.value}


def show_block(args: argparse.Namespace) -> int:
    from carledger.ledger import Header, MalformedBlock, Sample, decode_record, decode_sign1, open_block

    store = _open(args.store)
    if store is None:
        return 2
    with store:
        rows = [r for r in store.iter_blocks(args.stream) if args.seq is None or r.seq == args.seq]
        if not rows:
            what = f"block {args.seq}" if args.seq is not None else "blocks"
            print(f"carledger: stream {args.stream!r} has no {what} (see: carledger log list {args.store})", file=sys.stderr)
            return 1
        row = rows[-1]
        header = Header.decode(decode_sign1(row.sign1).payload)
        status = "signature and Merkle root OK"
        try:
            open_block(store.message(row), _verify_key(store))
        except MalformedBlock as exc:
            status = f"FAILED: {exc}"
        records = [decode_record(r) for r in store.records(row)]
    doc = {
        "stream": header.stream, "seq": header.seq, "vehicle": header.vid, "t0": header.t0 / 1e6, "t1": header.t1 / 1e6,
        "count": header.count, "prev": header.prev.hex(), "digest": row.digest.hex(), "policy": header.policy.hex(),
        "root": header.root.hex(), "check": status, "records_dropped": row.records is None,
        "records": [
            _sample_fields(r) if isinstance(r, Sample) else {"t": r.t / 1e6, "event": r.kind, "detail": r.detail}
            for r in records
        ],
    }
    if args.json:
        print(json.dumps(doc, default=_json_default))
        return 0 if status.startswith("signature") else 1
    for key in ("stream", "seq", "vehicle", "t0", "t1", "count", "prev", "digest", "policy", "root", "check"):
        print(f"{key:>8}: {doc[key]}")
    if row.records is None:
        print("records: dropped by retention (the signed header remains)")
    for rec in doc["records"]:
        if "event" in rec:
            print(f"  {rec['t']:.6f}  event {rec['event']} {json.dumps(rec['detail'], default=_json_default)}")
        else:
            print(f"  {rec['t']:.6f}  {rec['name']} = {rec['value']}" + (
                f"  ({rec['message']}.{rec['signal']})" if rec["name"] != f"{rec['message']}.{rec['signal']}" else ""))
    return 0 if status.startswith("signature") else 1


def _export_candump(args: argparse.Namespace, store: Any, problems: list[str]) -> int:
    """The stream's samples as candump lines: frames re-encoded with the DBC (carledger.decode.encode)."""
    from carledger.decode import DbcError, load_dbc
    from carledger.decode.encode import FrameEncoder
    from carledger.ledger import Sample, decode_record
    from carledger.sources.candump import format_candump

    if not args.dbc:
        store.close()
        raise UsageError("--format candump needs --dbc (the DBC to encode the frames with)")
    try:
        encoder = FrameEncoder(load_dbc(path).database for path in args.dbc)
    except DbcError as exc:
        print(f"carledger: {exc}", file=sys.stderr)
        return 2

    def samples() -> Iterator[tuple[float, str, Any]]:
        for _, records in _checked_blocks(store, args.stream, problems):
            for raw in records:
                rec = decode_record(raw)
                if isinstance(rec, Sample):
                    yield rec.t / 1e6, rec.source or rec.name, rec.value

    with store:
        if args.stream not in store.streams():
            print(f"carledger: no stream {args.stream!r} in {args.store} (see: carledger log list)", file=sys.stderr)
            return 1
        out: TextIO = open_output(args.output)
        try:
            for t, key, data in encoder.frames(samples()):
                out.write(format_candump(t, args.channel, key, data, fd=len(data) > 8) + "\n")
        finally:
            if args.output:
                out.close()
    if encoder.skipped:
        print(f"carledger: {encoder.skipped} samples are not signals of {', '.join(args.dbc)}; left out", file=sys.stderr)
    return 1 if problems else 0


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def export_stream(args: argparse.Namespace) -> int:
    from carledger.ledger import Sample, decode_record

    if args.output:
        output_path(args.output)  # before any work: a directory or a missing parent is a usage error
    store = _open(args.store)
    if store is None:
        return 2
    problems: list[str] = []
    if args.format == "candump":
        return _export_candump(args, store, problems)
    out: TextIO = open_output(args.output)
    try:
        with store:
            if args.stream not in store.streams():
                print(f"carledger: no stream {args.stream!r} in {args.store} (see: carledger log list)", file=sys.stderr)
                return 1
            writer = csv.writer(out) if args.format == "csv" else None
            if writer:
                writer.writerow(["t", "name", "message", "signal", "value"])
            progress = TtyProgress.if_tty("exporting") if args.output or not sys.stdout.isatty() else None
            total = store.block_count(args.stream)
            for done, (row, records) in enumerate(_checked_blocks(store, args.stream, problems), start=1):
                if progress is not None and done % 64 == 0:
                    progress(done, total)
                for raw in records:
                    rec = decode_record(raw)
                    if isinstance(rec, Sample):
                        fields = _sample_fields(rec)
                        if writer:
                            writer.writerow([f"{fields['t']:.6f}", fields["name"], fields["message"], fields["signal"], fields["value"]])
                        else:
                            out.write(json.dumps(fields) + "\n")
                    elif args.events and not writer:
                        out.write(json.dumps({"t": rec.t / 1e6, "event": rec.kind, "detail": rec.detail}, default=_json_default) + "\n")
            if progress is not None:
                progress.clear()
    finally:
        if args.output:
            out.close()
    return 1 if problems else 0
