"""`carledger verify STORE`: check every chain of a store, like a third party would."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter

from carledger.cli._display import TtyProgress, by_cause, table
from carledger.cli._store import add_store_options, exit_status

EPILOG = """\
examples:
  carledger verify ./ledger
  carledger verify --store ./ledger --key keys/vehicle.pub --json
  carledger verify -c /etc/carledger/agent.toml
  carledger verify ./ledger --witness /var/lib/witness   also the forks this witness saw of the car's logs

Forks: a checkpoint the car signed that the store does not hold (table
forks: the store is an older copy and refuses to write), and with --witness
two checkpoints of one of the car's logs that the witness saw not joined by a
proof; each with its signed notes, opened with the stream's log key.

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
    parser.add_argument("--witness", action="append", default=[], metavar="DIR",
                        help="a witness's directory (repeatable): report its evidence of forks of this car's logs")
    parser.set_defaults(func=run)


def _forks(args: argparse.Namespace) -> list:
    """The fork evidence of the store and the given witnesses; UsageError for a witness directory that is not one."""
    import sqlite3

    from carledger.cli._store import UsageError, require_dir_with
    from carledger.transparency.witness import DB_FILE
    from carledger.verify.forks import fork_evidence

    for directory in args.witness:
        require_dir_with(directory, DB_FILE, "witness directory")
    try:
        return fork_evidence(args.store, tuple(args.witness))
    except sqlite3.Error as exc:
        raise UsageError(f"--witness: {exc}") from None


def _fork_lines(forks: list) -> list[str]:
    lines = []
    for f in forks:
        signed = "signed by the car's log key" if f.signed else "NOT signed by the car's log key: no evidence"
        lines.append(f"  stream {f.stream}: {f.kind} ({f.source}, {signed}): {f.detail}")
        for note in f.notes:
            lines += ["    | " + line for line in note.rstrip("\n").split("\n")]
            lines.append("    |")
    return lines


def _table(report) -> str:
    rows = [("stream", "blocks", "records", "seq", "head")]
    for name, s in sorted(report.streams.items()):
        seqs = "-" if s.first_seq is None else f"{s.first_seq}..{s.last_seq}"
        rows.append((name, str(s.blocks), str(s.records), seqs, (s.head or "-")[:16]))
    return table(rows, right=(1, 2))


def _captures(args: argparse.Namespace, report) -> list:
    """The crash captures, from their signed metadata, once the crash stream verified (else none).

    Their record counts are the ones `edr list` and `edr export` give; the
    table counts what the blocks sign, the ciphertext of encrypted blocks.
    """
    from carledger.edr import CRASH_STREAM, read_captures
    from carledger.ledger import LedgerError, Store, load_verify_key

    if CRASH_STREAM not in report.streams or any(p.stream == CRASH_STREAM for p in report.problems):
        return []
    try:
        with Store.open_readonly(args.store) as store:
            return read_captures(store, load_verify_key(args.key) if args.key else store.verify_key)
    except (LedgerError, OSError):
        return []


def _capture_line(c) -> str:
    where = f" in blocks {c.data_seqs[0]}-{c.data_seqs[1]}" if c.data_seqs else ""
    count = "" if c.records is None else f" {c.records} records{where}"
    return f"crash capture {c.capture}:{count} ({c.status})"


_ROW = re.compile(r"row \d+: ")


def _cause(problem) -> str | None:
    """What went wrong with a block, without the row it went wrong in (None for other problems)."""
    if problem.stream is None or problem.seq is None or not _ROW.match(problem.detail):
        return None
    return f"{problem.kind}: {_ROW.sub('', problem.detail, count=1)}"


def _problem_lines(problems: list) -> list[str]:
    """Each problem once; a cause that hit many blocks (a wrong pinned key) once, with its count and seqs."""
    counts = Counter(c for c in map(_cause, problems) if c)
    repeated = [(p.stream, p.seq, c) for p in problems if (c := _cause(p)) and counts[c] > 1]
    grouped = iter(by_cause(repeated))
    lines, seen = [], set()
    for p in problems:
        c = _cause(p)
        if c is None or counts[c] == 1:
            lines.append(str(p))
        elif c not in seen:
            seen.add(c)
            lines.append(next(grouped))
    return lines


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
    forks = _forks(args)
    evidence = [f for f in forks if f.signed]
    ok = report.ok and not evidence

    if args.json:
        doc = report.to_json()
        doc["forks"] = [f.to_json() for f in forks]
        doc["ok"] = ok
        doc["captures"] = [{"capture": c.capture, "records": c.records, "data_seqs": list(c.data_seqs) if c.data_seqs else None,
                            "status": c.status} for c in _captures(args, report)]
        json.dump(doc, sys.stdout, sort_keys=False)
        sys.stdout.write("\n")
        return 0 if ok else 1

    if report.vehicle is not None:
        print(f"vehicle {report.vehicle}, key {report.key_id or 'none'}")
    if report.streams:
        print(_table(report))
        for capture in _captures(args, report):
            print(_capture_line(capture))
    else:
        print("no streams")
    if report.problems:
        print()
        print(f"problems ({len(report.problems)}):")
        for line in _problem_lines(report.problems):
            print(f"  {line}")
    if forks:
        print()
        print(f"forks ({len(evidence)} signed by the car; docs/transparency.md, Recovery):")
        for line in _fork_lines(forks):
            print(line)
    blocks = sum(s.blocks for s in report.streams.values())
    n = len(report.streams)
    if evidence and report.ok:
        print(f"FAILED: {len(evidence)} fork{'s' * (len(evidence) != 1)} of the car's logs, with signed evidence "
              f"(the chains here are intact: {n} streams, {blocks} blocks)")
        return 1
    if report.ok:
        print(f"OK: {n} stream{'s' * (n != 1)}, {blocks} blocks, every chain intact")
        return 0
    affected = len({p.stream for p in report.problems})
    print(f"FAILED: {len(report.problems)} problem{'s' * (len(report.problems) != 1)} in {affected} "
          f"{'place' if affected == 1 else 'places'} ({', '.join(sorted(report.kinds()))})")
    return 1
