"""`carledger consent list|grant|revoke|allow|withdraw`: the owner's consent per stream, and per class at each drive."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from carledger.cli._display import table
from carledger.cli._owner import EXIT_OK, EXIT_USAGE, UsageError, add_store_options, fail, parse_when, run_request
from carledger.cli._store import exit_status
from carledger.policy.classes import LOCATION, PERSONAL

EPILOG = """\
examples:
  carledger consent list                      who gets what, until when
  carledger consent revoke insurer            stop the insurer stream now (before its next block)
  carledger consent grant fleet --until 90d   renew the fleet stream's consent for 90 days
  carledger consent grant fleet --until 2027-06-01 --store /var/lib/carledger
  carledger consent allow location --this-drive   location on until the ignition is next switched off
  carledger consent allow location --standing     location on at every drive, until withdrawn
  carledger consent withdraw location             location off again at once

`allow` and `withdraw` are for the classes the policy's [ignition] each_drive
switches off at every ignition cycle (docs/policy.md).

A revocation or grant works whether the agent runs or not: a running agent
applies it within a second; otherwise the command does it itself. Either way
the ledger records it (`carledger audit`).
""" + exit_status()


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "consent", help="list, grant or revoke the consent of streams that leave the car",
        description="The owner's consent per outbound stream: every stream for a recipient needs one, "
        "with an expiry (no consent lasts forever).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="consent commands", metavar="ACTION")
    p = sub.add_parser("list", help="every outbound stream: recipient, purpose, consent, state", epilog=exit_status("listed", None))
    add_store_options(p)
    p.set_defaults(func=list_consents)
    p = sub.add_parser("grant", help="grant (or renew) a stream's consent until a date", epilog=exit_status())
    p.add_argument("stream")
    p.add_argument("--until", required=True, metavar="WHEN", help="date/time (ISO 8601) or duration from now (90d); at most 2 years")
    add_store_options(p, create=True)
    p.set_defaults(func=grant)
    p = sub.add_parser("revoke", help="revoke a stream's consent now: it stops before its next block", epilog=exit_status())
    p.add_argument("stream")
    add_store_options(p, create=True)
    p.set_defaults(func=revoke)
    p = sub.add_parser("allow", help="switch on a class [ignition] turns off at each drive: for this drive or every drive",
                       epilog=exit_status())
    p.add_argument("cls", metavar="CLASS", choices=(LOCATION, PERSONAL), help=f"{LOCATION} or {PERSONAL}")
    scope = p.add_mutually_exclusive_group(required=True)
    scope.add_argument("--this-drive", action="store_true", help="for the current ignition cycle only")
    scope.add_argument("--standing", action="store_true", help="for every ignition cycle, until `consent withdraw`")
    add_store_options(p, create=True)
    p.set_defaults(func=allow)
    p = sub.add_parser("withdraw", help="end a class's allowance (this drive or standing): it is off at once",
                       epilog=exit_status())
    p.add_argument("cls", metavar="CLASS", choices=(LOCATION, PERSONAL), help=f"{LOCATION} or {PERSONAL}")
    add_store_options(p, create=True)
    p.set_defaults(func=withdraw)
    parser.set_defaults(func=lambda args: parser.print_help() or EXIT_USAGE)


def allow(args: argparse.Namespace) -> int:
    return run_request(args, {"action": "allow-class", "class": args.cls, "standing": args.standing})


def withdraw(args: argparse.Namespace) -> int:
    return run_request(args, {"action": "withdraw-class", "class": args.cls})


def grant(args: argparse.Namespace) -> int:
    try:
        until = parse_when(args.until, now=time.time())
    except ValueError as exc:
        raise UsageError(f"--until: {exc}") from None
    return run_request(args, {"action": "grant", "stream": args.stream, "until": until})


def revoke(args: argparse.Namespace) -> int:
    return run_request(args, {"action": "revoke", "stream": args.stream})


def list_consents(args: argparse.Namespace) -> int:
    from carledger.config import ConfigError
    from carledger.owner import OwnerStateError

    try:
        report = consent_report(args.store, time.time())
    except (ConfigError, OwnerStateError, OSError) as exc:
        return fail(args, str(exc), EXIT_USAGE)
    rows, classes = report["streams"], report["each_drive"]
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return EXIT_OK
    if not rows:
        print("no stream leaves the car (policy version %d)" % report["policy_version"])
    else:
        header = ("stream", "recipient", "purpose", "granted", "expires", "state")
        print(table([header] + [tuple(str(r[k] or "-") for k in header) for r in rows]))
    for cls, allowance in classes.items():
        text = {"off": "off this drive (carledger consent allow %s --this-drive)" % cls,
                "this-drive": "on for this drive only", "standing": "on at every drive (standing allowance)"}[allowance]
        print(f"{cls}: {text}; ignition cycle {report['ignition_cycle']}")
    return EXIT_OK


def consent_report(store: str, now: float, known: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """What `consent list --json` prints, for the command and the console's "Who gets what" page alike.

    Each stream's `summary` is `policy show`'s plain-language text of it
    (signals, precision, rate, location, identity); `known` (the vehicle's
    signals, from its DBC) lets it say which signals a pattern matches.
    Raises ConfigError, OwnerStateError, OSError.
    """
    from carledger.cli.policy import describe_stream
    from carledger.owner import OwnerState
    from carledger.owner.state import iso, seconds, utc

    state = OwnerState.load(store)
    rows = []
    for stream in state.policy.streams:
        if stream.local:
            continue
        consent, revoked = state.consent(stream)
        why = state.why_inactive(stream, now)
        rows.append({
            "stream": stream.name, "recipient": stream.recipient, "purpose": stream.purpose,
            "granted": iso(seconds(consent.granted)) if consent else None,
            "expires": iso(seconds(consent.expires)) if consent else None,
            "state": "active" if why is None else why,
            "days_left": round((seconds(consent.expires) - now) / 86400, 1) if consent and why is None else None,
            "summary": describe_stream(state.policy, stream, known, utc(now)),
        })
    marked = state.policy.ignition.each_drive if state.policy.ignition is not None else ()
    classes = {c: state.ignition.allowance(c) or "off" for c in marked}
    return {"policy_version": state.policy.version, "streams": rows, "each_drive": classes,
            "ignition_cycle": state.ignition.cycle}
