"""`carledger log`: read a ledger back: list its streams, show a block, export samples.

Everything read here is checked on the way out: a block whose signature or
Merkle root does not hold is reported and not exported as if it were good.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Iterator, TextIO

from carledger.cli._args import stream_name
from carledger.cli._display import BlockProblem, TtyProgress, by_cause, table
from carledger.cli._export import (
    SAMPLE_FORMATS, Clock, add_time_option, event_row, json_default, rounding_from, sample_row, to_json,
)
from carledger.cli._store import UsageError, add_store_options, exit_status, open_output, output_path

EPILOG = """\
examples:
  carledger log list ./ledger
  carledger log show ./ledger --stream all --seq 0
  carledger log export ./ledger --stream all --format csv > all.csv
  carledger log export ./ledger --stream all --format jsonl --events -o all.jsonl
  carledger log export ./ledger --stream all --format csv --time relative --dbc car.dbc

Formats and columns: docs/exports.md (the same in `read` and `edr export`).
""" + exit_status("read", "a block failed its checks, or no such stream or block")


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "log", help="list, show and export what a ledger holds",
        description="Read a ledger back: every block is checked (signature, Merkle root) on the way out.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="log commands", metavar="COMMAND")

    p = sub.add_parser("list", help="streams with their blocks, records and time range, from the store's index (`verify` checks it against the signed blocks)", epilog=exit_status("listed", None))
    add_store_options(p, positional=True)
    add_time_option(p)
    p.set_defaults(func=list_streams)

    p = sub.add_parser("show", help="one block: its signed header and its records",
                       epilog=exit_status("shown", "the block failed its checks, or no such block"))
    add_store_options(p, positional=True)
    p.add_argument("--stream", required=True, type=stream_name)
    p.add_argument("--seq", type=int, help="block sequence number (default: the newest)")
    p.add_argument("--dbc", action="append", default=[], metavar="FILE", help="round values to their signal's resolution in this DBC")
    add_time_option(p)
    p.set_defaults(func=show_block)

    p = sub.add_parser("export", help="one decoded sample per line: time, stream, seq, name, message, signal, value",
                       epilog=exit_status("exported", "a block failed its checks (left out), or no such stream"))
    add_store_options(p, positional=True, json_output=False)
    p.add_argument("--stream", required=True, type=stream_name)
    p.add_argument("--format", choices=(*SAMPLE_FORMATS, *STREAM_FORMATS), default="jsonl",
                   help="jsonl (default), csv (docs/exports.md); candump: the samples re-encoded into CAN frames "
                   "(needs --dbc), for canplayer; cose: every block as its signed COSE_Sign1 message with its "
                   "records, a CBOR sequence (docs/block-format.md), for docs/third_party_verify.py")
    p.add_argument("--dbc", action="append", default=[], metavar="FILE",
                   help="the car's DBC: values rounded to each signal's resolution; frames encoded with it (--format candump)")
    add_time_option(p)
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
        if args.time:
            clock = Clock(args.time, machine=True)
            for summary in streams.values():
                summary["t0"], summary["t1"] = clock(summary["t0"]), clock(summary["t1"])
        print(json.dumps({"vehicle": _text(meta.get("vehicle")), "streams": streams}))
        return 0
    print(f"vehicle {_text(meta.get('vehicle'))}")
    if not streams:
        print("(no blocks yet)")
        return 0
    clock = Clock(args.time)
    rows = [("stream", "blocks", "records", "seq", "from", "to", "acked")]
    for name, s in streams.items():
        rows.append((name, str(s["blocks"]), str(s["records"]), f"{s['first_seq']}..{s['last_seq']}",
                     str(clock(s["t0"])), str(clock(s["t1"])), str(s["acked"])))
    print(table(rows, right=(1, 2, 3, 6)))
    return 0


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _checked_blocks(store, stream: str, problems: list[BlockProblem]) -> Iterator[tuple[Any, list[bytes]]]:
    """Rows of a stream with their records, each checked against its signature and Merkle root; failures in `problems`."""
    from carledger.ledger import MalformedBlock

    ring = store.keyring(_verify_key(store))  # a recipient's stream: its own key, which the vehicle key certified
    for row in store.iter_blocks(stream):
        try:
            block = ring.open_block(store.message(row), allow_bare=True)  # records NULL: dropped, checked by verify
        except MalformedBlock as exc:
            problems.append((stream, row.seq, str(exc)))
            continue
        yield row, block.records


def _report_skipped(problems: list[BlockProblem]) -> int:
    """One line per cause for the blocks left out (docs/exports.md); exit 1 when there were any."""
    for line in by_cause(problems):
        print(f"carledger: left out: {line}", file=sys.stderr)
    return 1 if problems else 0


def show_block(args: argparse.Namespace) -> int:
    from carledger.ledger import Header, MalformedBlock, Sample, decode_record, decode_sign1

    rounding = rounding_from(args.dbc)
    store = _open(args.store)
    if store is None or rounding is None:
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
            store.keyring(_verify_key(store)).open_block(store.message(row), allow_bare=True)
        except MalformedBlock as exc:
            status = f"FAILED: {exc}"
        records = [decode_record(r) for r in store.records(row)]
    clock = Clock(args.time, machine=args.json)
    doc = {
        "stream": header.stream, "seq": header.seq, "vehicle": header.vid, "t0": clock(header.t0 / 1e6),
        "t1": clock(header.t1 / 1e6), "count": header.count, "prev": header.prev.hex(), "digest": row.digest.hex(),
        "policy": header.policy.hex(), "root": header.root.hex(), "check": status, "records_dropped": row.records is None,
        "records": [
            sample_row(header.stream, header.seq, r, clock, rounding) if isinstance(r, Sample)
            else event_row(header.stream, header.seq, r, clock)
            for r in records
        ],
    }
    if args.json:
        print(to_json(doc, default=json_default))
        return 0 if status.startswith("signature") else 1
    for key in ("stream", "seq", "vehicle", "t0", "t1", "count", "prev", "digest", "policy", "root", "check"):
        print(f"{key:>8}: {doc[key]}")
    if row.records is None:
        print("records: dropped by retention (the signed header remains)")
    for rec in doc["records"]:
        if "event" in rec:
            print(f"  {rec['t']}  event {rec['event']} {to_json(rec['detail'], default=json_default)}")
        else:
            print(f"  {rec['t']}  {rec['name']} = {rec['value']}" + (
                f"  ({rec['message']}.{rec['signal']})" if rec["name"] != f"{rec['message']}.{rec['signal']}" else ""))
    return 0 if status.startswith("signature") else 1


def _export_candump(args: argparse.Namespace, store: Any, out: TextIO, problems: list[BlockProblem]) -> int:
    """The stream's samples as candump lines: frames re-encoded with the DBC (carledger.decode.encode).

    candump lines carry epoch seconds by definition: --time does not apply.
    """
    from carledger.decode import DbcError, load_dbc
    from carledger.decode.encode import FrameEncoder
    from carledger.ledger import Sample, decode_record
    from carledger.sources.candump import format_candump

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

    for t, key, data in encoder.frames(samples()):
        out.write(format_candump(t, args.channel, key, data, fd=len(data) > 8) + "\n")
    if encoder.skipped:
        print(f"carledger: {encoder.skipped} samples are not signals of {', '.join(args.dbc)}; left out", file=sys.stderr)
    return 0


def _export_samples(args: argparse.Namespace, store: Any, out: TextIO, problems: list[BlockProblem]) -> int:
    """One sample per line in a SAMPLE_FORMATS format (docs/exports.md)."""
    from carledger.ledger import Sample, decode_record

    rounding = rounding_from(args.dbc)
    if rounding is None:
        return 2
    fmt = SAMPLE_FORMATS[args.format]
    writer = fmt.writer(out)
    clock = Clock(args.time, machine=fmt.machine)
    progress = TtyProgress.if_tty("exporting") if args.output or not sys.stdout.isatty() else None
    total = store.block_count(args.stream)
    for done, (row, records) in enumerate(_checked_blocks(store, args.stream, problems), start=1):
        if progress is not None and done % 64 == 0:
            progress(done, total)
        for raw in records:
            rec = decode_record(raw)
            if isinstance(rec, Sample):
                writer.sample(sample_row(args.stream, row.seq, rec, clock, rounding))
            elif args.events:
                writer.event(event_row(args.stream, row.seq, rec, clock))
    if progress is not None:
        progress.clear()
    return 0


def _export_cose(args: argparse.Namespace, store: Any, out: TextIO, problems: list[BlockProblem]) -> int:
    """The stream's blocks, each the COSE_Sign1 message the collector receives: a CBOR sequence (RFC 8742).

    Binary, so it goes to the text stream's buffer; --time and --dbc do not apply.
    """
    out.flush()
    binary = out.buffer
    for row, _ in _checked_blocks(store, args.stream, problems):
        binary.write(store.message(row))
    binary.flush()
    return 0


#: Formats that are not one sample per line: name -> exporter(args, store, out, problems) -> exit status.
STREAM_FORMATS: dict[str, Callable[[argparse.Namespace, Any, TextIO, list[BlockProblem]], int]] = {
    "candump": _export_candump,
    "cose": _export_cose,
}


def export_stream(args: argparse.Namespace) -> int:
    if args.format == "candump" and not args.dbc:
        raise UsageError("--format candump needs --dbc (the DBC to encode the frames with)")
    if args.output:
        output_path(args.output)  # before any work: a directory or a missing parent is a usage error
    store = _open(args.store)
    if store is None:
        return 2
    problems: list[BlockProblem] = []
    exporter = STREAM_FORMATS.get(args.format, _export_samples)
    with store:
        if args.stream not in store.streams():
            print(f"carledger: no stream {args.stream!r} in {args.store} (see: carledger log list)", file=sys.stderr)
            return 1
        out: TextIO = open_output(args.output)
        try:
            code = exporter(args, store, out, problems)
        finally:
            if args.output:
                out.close()
    return code or _report_skipped(problems)
