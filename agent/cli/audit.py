"""`carledger audit [STORE]`: every disclosure and every owner decision, from the ledger itself."""

from __future__ import annotations

import argparse
import json
import sys

from carledger.cli._display import TtyProgress, clip, table
from carledger.cli._store import EXIT_OK, EXIT_USAGE, add_store_options, exit_status, fail

EPILOG = """\
examples:
  carledger audit                         the store of /etc/carledger/agent.toml
  carledger audit /var/lib/carledger
  carledger audit --store /var/lib/carledger
  carledger audit ./ledger --json > audit.json

For each stream: its recipient and purpose, which blocks (seq) and time range
were sealed under which policy version and consent (until when, or when it was
revoked), how many records, how many blocks the broker (sent) and the
recipient (acked) have. Then the receipts: per recipient and stream, the
largest checkpoint its collector cosigned (a signed receipt: blocks 0..N, the
root, when), verified. Then what each recipient got: per policy version and
consent id, the blocks and the signals they held. Then what happened, oldest first: the owner's
decisions (OWNER: policies applied, consents granted and revoked, pauses,
wipe) and what the car did (car: the blocks each recipient acked, merged
into one line per run, consents that expired, retention, disk quota). --json keeps every event, and
the merged runs under "sent" (docs/owner-state.md).
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
    from carledger.owner.receipts import check_receipts, latest_receipts

    try:
        checks = check_receipts(args.store)
    except (LedgerError, OSError) as exc:
        return fail(args, str(exc), EXIT_USAGE)
    if args.json:
        print(json.dumps({**report.to_json(), "receipts": [c._asdict() for c in checks]}, sort_keys=True))
        return EXIT_OK
    out = sys.stdout
    out.write(f"vehicle {report.vehicle}\n\nDisclosures (blocks sealed per stream and policy version)\n")
    rows = [("stream", "recipient", "purpose", "policy", "consent", "seq", "from", "to", "records", "sent", "acked")]
    for d in report.disclosures:
        rows.append((
            d.stream, "(kept in the car)" if d.local else (d.recipient or "?"), d.purpose or "-",
            f"v{d.policy_version}" if d.policy_version else d.policy_digest[:12],
            "-" if d.local else _consent(d.consent),
            f"{d.first_seq}..{d.last_seq}", _time(d.t0), _time(d.t1), str(d.records), str(d.synced), str(d.acked),
        ))
    out.write(table(rows, right=(8, 9, 10)) + "\n" if len(rows) > 1 else "  none\n")
    got = received(report)
    if got:
        out.write("\nWhat each recipient got (named by the disclosure events: policy version, consent id, signals)\n")
        rows = [("stream", "recipient", "policy", "consent", "blocks", "what")]
        rows += [(stream, recipient, policy, consent, blocks, what) for stream, recipient, policy, consent, blocks, what in got]
        out.write(table(rows) + "\n")
    out.write("\nReceipts (what each recipient signed it received: its collector's cosignature of the stream's log)\n")
    rows = [("recipient", "stream", "blocks", "root", "cosigned at", "kept at")]
    rows += [(c.recipient, c.stream, f"0..{c.size - 1}", c.root[:16], _time(c.stated), _time(c.received))
             for c in latest_receipts(checks)]
    out.write(table(rows) + "\n" if len(rows) > 1 else "  none yet\n")
    bad = [c for c in checks if c.problem]
    if bad:
        out.write(f"  {len(bad)} receipts do not verify: carledger receipts verify {args.store}\n")
    out.write("\nWhat happened, oldest first (OWNER: the owner's decisions; car: what the car did)\n")
    rows = [("time", "by", "what")]
    for t, by, what in story(report):
        rows.append((_time(t), by, clip(what, WIDTH)))
    out.write(table(rows) + "\n" if len(rows) > 1 else "  nothing yet\n")
    return EXIT_OK


WIDTH = 200  # a story line longer than this is cut, with an ellipsis


def story(report) -> list[tuple[float, str, str]]:
    """(time, who, what) of every audit event, oldest first, with the acked disclosures merged into runs."""
    from carledger.owner.audit import DISCLOSURE

    lines = [(e.t, "OWNER" if e.by == "owner" else "car", _decision(e.kind, e.detail))
             for e in report.decisions if e.kind != DISCLOSURE]
    lines += [(run.t, "car", _sent(run)) for run in report.sent]
    return sorted(lines, key=lambda line: line[0])


def received(report) -> list[tuple[str, str, str, str, str, str]]:
    """Per stream, recipient, policy version and consent: the blocks acked and what they held (signals ...)."""
    from carledger.owner.audit import merge_ranges

    merged: dict[tuple, list] = {}
    for run in report.sent:
        if run.policy is None and run.signals is None:
            continue  # disclosures recorded before they named what they held
        version = (run.policy or {}).get("version")
        key = (run.stream, run.recipient or "?", f"v{version}" if version is not None else "?", (run.consent_id or "-")[:12])
        entry = merged.setdefault(key, [[], run])
        entry[0] += run.seqs
    out = []
    for (stream, recipient, policy, consent), (seqs, run) in merged.items():
        out.append((stream, recipient, policy, consent, _blocks(merge_ranges([list(r) for r in seqs])), _held(run)))
    return out


def _held(run) -> str:
    parts = []
    if run.signals:
        parts.append("signals " + ", ".join(run.signals))
    if run.aggregates:
        parts.append("aggregates " + ", ".join(run.aggregates))
    if run.metrics:
        parts.append("metrics " + ", ".join(run.metrics))
    return "; ".join(parts) or "no signal (events only)"


def _time(t: float | None) -> str:
    from carledger.owner.state import iso

    return iso(t) or "-"


def _consent(consent: dict | None) -> str:
    if not consent:
        return "-"
    if consent.get("revoked"):
        return f"revoked {consent['revoked']}"
    return f"until {consent.get('expires', '?')}"


def _blocks(seqs: list) -> str:
    """`block 4`, `blocks 0–97`, `blocks 0–40, 42–97`."""
    parts = [str(a) if a == b else f"{a}–{b}" for a, b in seqs]
    one = len(seqs) == 1 and seqs[0][0] == seqs[0][1]
    return ("block " if one else "blocks ") + ", ".join(parts)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("s" if n != 1 else "")


def _sent(run) -> str:
    text = f"sent stream {run.stream} to {run.recipient or '?'} (acked): {_blocks(run.seqs)}, {_count(run.records, 'record')}"
    if run.t0 is not None:
        text += f" of {_time(run.t0)}" if _time(run.t0) == _time(run.t1) else f" from {_time(run.t0)} to {_time(run.t1)}"
    if run.policy is not None:
        text += f", policy v{run.policy.get('version')}"
    if run.consent_id:
        text += f", consent {run.consent_id[:12]}"
    return text


def _decision(kind: str, d: dict) -> str:
    """An audit event in words; an event this version does not know, as its fields."""
    stream = d.get("stream")
    if kind == "policy-applied":
        origin = {"cli": "from the command line", "config": "from the agent's configuration",
                  "mqtt": "a signed remote update"}.get(d.get("origin"), d.get("origin"))
        signer = f"signed by the owner key {d['signed_by'][:16]}" if isinstance(d.get("signed_by"), str) else None
        where = ", ".join(str(x) for x in (d.get("file"), origin, signer) if x)
        return f"applied policy v{d.get('version')}" + (f" ({where})" if where else "") + \
            (f", replacing v{d['previous']}" if d.get("previous") else "") + \
            f": streams {', '.join(str(s) for s in d.get('streams') or []) or 'none'}"
    purpose = f" ({d['purpose']})" if d.get("purpose") else ""
    if kind == "consent-granted":
        return f"granted {d.get('recipient', '?')} consent to stream {stream}{purpose} until {d.get('expires', '?')}"
    if kind == "consent-revoked":
        return f"revoked the consent of {d.get('recipient', '?')} to stream {stream}{purpose}"
    if kind == "consent-expired":
        return (f"{d.get('recipient', '?')}: consent to stream {stream}{purpose} expired {d.get('expired', '?')}, "
                f"stream stopped at seq {d.get('last_seq', '?')}")
    if kind == "consent-restored":
        return (f"{d.get('recipient', '?')}: consent to stream {stream}{purpose} covers the frames again from "
                f"{d.get('restored', '?')}: the frames' clock, which had passed its expiry {d.get('expired', '?')}, "
                "went back before it")
    if kind == "pause":
        return f"paused all collection until {d.get('until') or '`carledger resume`'}"
    if kind == "resume":
        return f"resumed collection (paused since {d.get('paused_since')})"
    if kind == "wipe":
        return _wipe(d)
    if kind == "ignition":
        off = ", ".join(d.get("classes_off") or []) or "none"
        return f"ignition cycle {d.get('cycle')} began ({d.get('cause')}): off until allowed: {off}"
    if kind == "class-allowed":
        scope = "every drive, until withdrawn" if d.get("scope") == "standing" else f"this drive (cycle {d.get('cycle')})"
        return f"allowed {d.get('class')} for {scope}"
    if kind == "class-withdrawn":
        return f"withdrew the {d.get('scope')} allowance of {d.get('class')}: off until allowed again"
    if kind in ("retention", "eviction"):
        why = "past retention" if kind == "retention" else "for the disk quota"
        seqs = [r for r in d.get("seqs") or [] if isinstance(r, list) and len(r) == 2]
        text = f"deleted {why}: stream {stream}, {_blocks(seqs)}, {_count(d.get('records') or 0, 'record')}"
        if d.get("unacked"):
            text += f" ({d['unacked']} blocks not acked by the recipient)"
        return text + (f" recorded before {d['before']}" if d.get("before") else "")
    return f"{kind}: {_summary(d)}"


def _wipe(d: dict) -> str:
    """The change of owner: what was deleted, and the key hand-over the old key signed."""
    from carledger.ledger.keys import kid

    statement = d.get("statement") if isinstance(d.get("statement"), dict) else {}
    heads = statement.get("heads") if isinstance(statement.get("heads"), dict) else {}

    def key_id(hexkey: object) -> str:
        try:
            return kid(bytes.fromhex(str(hexkey))).hex()
        except ValueError:
            return "?"

    return (f"wiped the store for a new owner: {_count(statement.get('blocks_deleted') or 0, 'block')} of "
            f"{_count(len(heads), 'stream')} deleted ({', '.join(sorted(heads)) or 'none'}); new vehicle key "
            f"{key_id(statement.get('new_key'))}, handed over by the old key {key_id(statement.get('previous_key'))}")


def _summary(detail: dict) -> str:
    shown = {k: v for k, v in detail.items() if k not in ("document", "statement", "signature", "update")}
    return ", ".join(f"{k}={v}" for k, v in sorted(shown.items()))
