"""`carledger audit [STORE]`: every disclosure and every owner decision, from the ledger itself."""

from __future__ import annotations

import argparse
import json
import sys

from carledger.cli._display import TtyProgress, table
from carledger.cli._store import EXIT_OK, EXIT_USAGE, add_store_options, exit_status, fail

EPILOG = """\
examples:
  carledger audit                         the store of /etc/carledger/agent.toml
  carledger audit /var/lib/carledger
  carledger audit --store /var/lib/carledger
  carledger audit ./ledger --json > audit.json

For each stream: its recipient and purpose, which blocks (seq) and time range
were sealed under which policy version and consent, how many records, how many
blocks the broker (sent) and the recipient (acked) have. Then the owner's
decisions: policies applied, consents granted and revoked, pauses, retention.
""" + exit_status("printed", None)


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit", help="who got what, when, under which policy version and consent",
        description="The audit of a store: disclosures and owner decisions, read from the signed ledger.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_store_options(parser, positional=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carledger.config import ConfigError
    from carledger.ledger import LedgerError
    from carledger.owner.audit import audit_store

    progress = TtyProgress.if_tty("auditing")
    try:
        report = audit_store(args.store, progress=progress)
    except (ConfigError, LedgerError, OSError) as exc:
        return fail(args, str(exc), EXIT_USAGE)
    finally:
        if progress:
            progress.clear()
    if args.json:
        print(json.dumps(report.to_json(), sort_keys=True))
        return EXIT_OK
    out = sys.stdout
    out.write(f"vehicle {report.vehicle}\n\nDisclosures (blocks sealed per stream and policy version)\n")
    rows = [("stream", "recipient", "purpose", "policy", "consent until", "seq", "from", "to", "records", "sent", "acked")]
    for d in report.disclosures:
        rows.append((
            d.stream, "(kept in the car)" if d.local else (d.recipient or "?"), d.purpose or "-",
            f"v{d.policy_version}" if d.policy_version else d.policy_digest[:12],
            (d.consent or {}).get("expires", "-") if not d.local else "-",
            f"{d.first_seq}..{d.last_seq}", _time(d.t0), _time(d.t1), str(d.records), str(d.synced), str(d.acked),
        ))
    out.write(table(rows, right=(8, 9, 10)) + "\n" if len(rows) > 1 else "  none\n")
    out.write("\nOwner decisions\n")
    rows = [("time", "decision", "detail")]
    for e in report.decisions:
        rows.append((_time(e.t), e.kind, _summary(e.detail)))
    out.write(table(rows) + "\n" if len(rows) > 1 else "  none\n")
    return EXIT_OK


def _time(t: float) -> str:
    from carledger.owner.state import iso

    return iso(t) or "-"


def _summary(detail: dict) -> str:
    shown = {k: v for k, v in detail.items() if k not in ("document", "statement", "signature")}
    return ", ".join(f"{k}={v}" for k, v in sorted(shown.items()))[:160]
