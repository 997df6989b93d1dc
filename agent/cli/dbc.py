"""`carledger dbc`: check and inspect DBC files as the agent loads them.

`check` says for each file whether it loads (and what had to be repaired) or
why it is rejected, one line per file plus one line per repair; `show` lists
the messages of one file.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cantools is imported when a dbc command runs, not by every command's parser
    from carledger.decode.dbcfile import LoadedDbc

_DESCRIPTION = """\
Check and inspect DBC files the way the agent loads them. Real DBC files are
often not loadable as they are; the agent repairs what is broken (a 29-bit id
without the extended flag, a name that starts with a digit, a comment or value
table naming no signal, ...), with one warning per repair naming the line, or
rejects the file with one line: FILE:LINE: reason."""

_EXAMPLES = """\
examples:
  carledger dbc check car.dbc                 OK car.dbc (52 messages, 402 signals)
  carledger dbc check dbc/*.dbc --json        one JSON report for many files
  carledger dbc check --strict car.dbc        reject instead of repairing
  carledger dbc show car.dbc                  id, name, length, cycle time, signals

exit status: 0 when every file loads, 1 when any is rejected, 2 on usage errors."""


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dbc",
        help="check and inspect DBC files",
        description=_DESCRIPTION,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(title="dbc commands", metavar="ACTION")

    check = actions.add_parser(
        "check",
        help="load DBC files; print OK (with repairs) or REJECTED for each",
        description="Load each FILE. Prints `OK FILE (N messages, M signals)` followed by one "
        "indented line per repair, or `REJECTED FILE:LINE: reason`.",
        epilog="examples:\n  carledger dbc check car.dbc\n  carledger dbc check --json a.dbc b.dbc\n\n"
        "exit status: 0 when every file loads, 1 when any is rejected, 2 usage error or unreadable file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("files", nargs="+", metavar="FILE", help="DBC file(s) to check")
    check.add_argument("--json", action="store_true", help="print one JSON array with a report per file")
    check.add_argument("--strict", action="store_true", help="repair nothing and check signal layouts strictly")
    check.set_defaults(func=_check)

    show = actions.add_parser(
        "show",
        help="list the messages of a DBC file",
        description="Load FILE as the agent does and list its messages: id, name, length in "
        "bytes, cycle time (when the file gives one) and number of signals.",
        epilog="example:\n  carledger dbc show car.dbc\n\nexit status: 0 shown, 1 rejected, 2 usage error or unreadable file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("file", metavar="FILE", help="DBC file")
    show.add_argument("--strict", action="store_true", help="repair nothing and check signal layouts strictly")
    show.set_defaults(func=_show)

    def usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)


def _counts(loaded: LoadedDbc) -> tuple[int, int]:
    messages = loaded.database.messages
    return len(messages), sum(len(m.signals) for m in messages)


def _check(args: argparse.Namespace) -> int:
    from carledger.decode.dbcfile import DbcError, load_dbc

    reports = []
    rejected = 0
    for path in args.files:
        try:
            loaded = load_dbc(path, strict=args.strict)
        except DbcError as exc:
            rejected += 1
            reports.append({"file": path, "status": "rejected", "line": exc.line, "reason": exc.reason, "error": str(exc)})
            if not args.json:
                print(f"REJECTED {exc}", flush=True)
            continue
        n_messages, n_signals = _counts(loaded)
        reports.append(
            {"file": path, "status": "ok", "messages": n_messages, "signals": n_signals, "warnings": loaded.warnings}
        )
        if not args.json:
            print(f"OK {path} ({n_messages} messages, {n_signals} signals)")
            for warning in loaded.warnings:
                print(f"  warning: {warning}")
            sys.stdout.flush()
    if args.json:
        print(json.dumps(reports, indent=2))
    return 1 if rejected else 0


def _show(args: argparse.Namespace) -> int:
    from carledger.decode.dbcfile import DbcError, load_dbc

    try:
        loaded = load_dbc(args.file, strict=args.strict)
    except DbcError as exc:
        print(f"REJECTED {exc}")
        return 1
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    n_messages, n_signals = _counts(loaded)
    print(f"{args.file}: {n_messages} messages, {n_signals} signals")
    rows = []
    for m in sorted(loaded.database.messages, key=lambda m: (m.is_extended_frame, m.frame_id)):
        ident = f"0x{m.frame_id:08X}" if m.is_extended_frame else f"0x{m.frame_id:03X}"
        kind = ("ext" if m.is_extended_frame else "std") + (" fd" if m.is_fd else "")
        cycle = f"{m.cycle_time} ms" if m.cycle_time else "-"
        rows.append((ident, kind, m.name, str(m.length), cycle, str(len(m.signals))))
    header = ("ID", "FRAME", "NAME", "LEN", "CYCLE", "SIGNALS")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {3, 4, 5}
    for row in [header, *rows]:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        print("  ".join(cells).rstrip())
    return 0
