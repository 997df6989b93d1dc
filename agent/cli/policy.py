"""`carledger policy`: check, show and compare the owner's privacy policy.

`check` lists every mistake as FILE:LINE: field: message; `show` says in
plain words what goes to whom, how precisely, until when, and what never
leaves the car; `diff` says what a new version changes.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any

from carledger.cli._store import exit_status
from carledger.policy.classes import CLASSES, DESCRIPTIONS, LOCATION, PERSONAL
from carledger.policy.document import (
    Aggregate,
    CrashCapture,
    Ignition,
    LocationPrecision,
    Metrics,
    Policy,
    PolicyError,
    PolicyUnreadable,
    Stream,
    Zone,
    format_time,
    load_policy,
    plain,
    vehicle_signals,
)
from carledger.policy.duration import format_duration

_DESCRIPTION = """\
Check, show and compare the owner's privacy policy: the file that says which
signals leave the car, to whom, for what, at what precision and until when.
Nothing is collected that the policy does not name (see docs/policy.md)."""

_EXAMPLES = """\
examples:
  carledger policy check policy.toml                  OK, or every mistake as FILE:LINE: field: message
  carledger policy check --dbc car.dbc policy.toml    check signal names against the car's DBC (+ car.vss.toml)
  carledger policy show policy.toml                   what goes to whom, until when; what never leaves
  carledger policy diff old.toml new.toml             what a new version changes
  carledger policy show --json policy.toml

exit status: 0 valid, 1 problems in a policy, 2 unreadable file or usage error."""

_SIGNALS_HELP = (
    "DBC file of the vehicle (repeatable; its NAME.vss.toml beside it gives VSS names); "
    "signal patterns must name a signal of these files"
)


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "policy",
        help="check, show and compare the owner's privacy policy",
        description=_DESCRIPTION,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(title="policy commands", metavar="ACTION")

    def common(p: argparse.ArgumentParser, default_dbc: bool) -> None:
        default = " (default: the shipped demo car's DBC)" if default_dbc else " (default: no signal-name check)"
        p.add_argument("--dbc", action="append", metavar="FILE", help=_SIGNALS_HELP + default)
        if default_dbc:
            p.add_argument("--no-dbc", action="store_true", help="do not check signal names against any DBC")
        p.add_argument("--at", metavar="DATE", help="check consent expiry as of DATE (ISO 8601, default: now)")
        p.add_argument("--json", action="store_true", help="print one JSON document")

    check = actions.add_parser(
        "check",
        help="validate a policy file; print every problem",
        description="Validate FILE completely. Prints `OK FILE ...` or one line per problem: FILE:LINE: field: message.",
        epilog="exit status: 0 valid, 1 problems, 2 unreadable file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("file", metavar="FILE", help="policy file (TOML)")
    common(check, default_dbc=True)
    check.set_defaults(func=_check)

    show = actions.add_parser(
        "show",
        help="plain-language summary: what goes to whom, until when; what never leaves",
        description="Summarise FILE in plain language. Expired consents are shown, marked EXPIRED.",
        epilog="exit status: 0 shown, 1 problems in the policy, 2 unreadable file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("file", metavar="FILE", help="policy file (TOML)")
    common(show, default_dbc=False)
    show.set_defaults(func=_show)

    diff = actions.add_parser(
        "diff",
        help="what changes from OLD to NEW, in plain language",
        description="Compare two versions of a policy: streams added and removed, signals, classes, "
        "precision, location, consent and expiry, zones.",
        epilog="exit status: 0 compared (with or without changes), 1 problems in a policy, 2 unreadable file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    diff.add_argument("old", metavar="OLD", help="the policy in force")
    diff.add_argument("new", metavar="NEW", help="the proposed policy")
    common(diff, default_dbc=False)
    diff.set_defaults(func=_diff)

    apply = actions.add_parser(
        "apply",
        help="put a new policy version in force (the running agent picks it up at once)",
        description="Validate FILE against the car's signals (from the agent's configuration) and put it in force "
        "atomically. Its version must be higher than the version in force. The ledger records the new "
        "version's digest, and every block sealed under it names that digest. Works whether the agent runs or not. "
        "Once an owner key is enrolled (carledger remote enroll-owner), only a policy the owner signed is applied: "
        "give --key owner.key, or FILE as the signed update `carledger remote sign-policy` wrote.",
        epilog="examples:\n  carledger policy apply /etc/carledger/policy.toml\n"
        "  carledger policy apply new.toml --store /var/lib/carledger\n"
        "  carledger policy apply new.toml --key owner.key           with an owner key enrolled\n"
        "  carledger policy apply policy.cose                         signed elsewhere (remote sign-policy)\n\n"
        + exit_status("in force (or already was)", "refused (invalid, the version is not higher, or not signed by "
                      "the enrolled owner key)"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    apply.add_argument("file", metavar="FILE", help="policy file (TOML), or a signed update (remote sign-policy)")
    apply.add_argument("--key", dest="owner_key", metavar="OWNER_KEY",
                       help="sign the policy with the owner's private key first (needed once an owner key is enrolled)")
    from carledger.cli._store import add_store_options

    add_store_options(apply, create=True)
    apply.set_defaults(func=_apply)

    def usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)


# -- loading ------------------------------------------------------------------------


class _Usage(Exception):
    pass


def _known(args: argparse.Namespace, default_dbc: bool) -> list[tuple[str, str]] | None:
    dbc = args.dbc
    if not dbc:
        if not default_dbc or getattr(args, "no_dbc", False):
            return None
        from carledger.dbc import path

        dbc = [path("carledger_demo.dbc")]
    from carledger.decode import DbcError
    from carledger.tomlfile import FieldError

    try:
        return vehicle_signals(dbc)
    except (DbcError, FieldError) as exc:
        raise _Usage(f"cannot read the vehicle's signals: {exc}") from None


def _at(args: argparse.Namespace) -> datetime | None:
    if not args.at:
        return None
    try:
        when = datetime.fromisoformat(args.at.replace("Z", "+00:00"))
    except ValueError:
        raise _Usage(f"--at {args.at!r}: expected an ISO 8601 date or date-time, e.g. 2027-01-31") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _problem_json(problem: Any) -> dict[str, Any]:
    return {"file": problem.file, "line": problem.line, "field": problem.field, "message": problem.message, "error": str(problem)}


def _load(path: str, args: argparse.Namespace, known: Any) -> Policy:
    return load_policy(path, known, now=_at(args), check_expiry=False)


def _run(args: argparse.Namespace, body: Any, default_dbc: bool) -> int:
    try:
        return body(_known(args, default_dbc))
    except _Usage as exc:
        print(f"carledger policy: {exc}", file=sys.stderr)
        return 2
    except PolicyError as exc:
        if args.json:
            print(json.dumps({"valid": False, "problems": [_problem_json(p) for p in exc.problems]}, indent=2))
        else:
            for problem in exc.problems:
                print(problem, file=sys.stderr if isinstance(exc, PolicyUnreadable) else sys.stdout)
        return 2 if isinstance(exc, PolicyUnreadable) else 1


# -- check ----------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    def body(known: Any) -> int:
        policy = load_policy(args.file, known, now=_at(args))  # PolicyError: every problem, handled by _run
        summary = f"version {policy.version}, {len(policy.streams)} stream{'s' if len(policy.streams) != 1 else ''}"
        if policy.edr is not None:
            summary += ", crash capture"
        if args.json:
            print(json.dumps({"file": args.file, "valid": True, "version": policy.version,
                              "streams": [s.name for s in policy.streams], "digest": policy.digest().hex(),
                              "problems": []}, indent=2))
        else:
            print(f"OK {args.file} ({summary}; digest {policy.digest().hex()[:16]})")
        return 0

    return _run(args, body, default_dbc=True)


# -- wording -----------------------------------------------------------------------------


def _day(when: datetime) -> str:
    when = when.astimezone(timezone.utc)
    if (when.hour, when.minute, when.second, when.microsecond) == (0, 0, 0, 0):
        return when.strftime("%Y-%m-%d")
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _metres(m: float) -> str:
    if m >= 1000:
        return f"{m / 1000:.3g} km"
    if m >= 1:
        return f"{m:.3g} m"
    return f"{m * 100:.2g} cm"


def describe_location(loc: LocationPrecision | None) -> str:
    if loc is None:
        return "at full precision"
    if loc.decimals is not None:
        return f"rounded to {loc.decimals} decimal place{'s' if loc.decimals != 1 else ''} (about {_metres(loc.cell_m())})"
    return f"as a geohash of {loc.geohash} character{'s' if loc.geohash != 1 else ''} (cells about {_metres(loc.cell_m())})"


def describe_metric(metrics: Metrics, name: str) -> str:
    if name == "distance":
        return "distance driven"
    if name == "harsh_braking":
        return f"harsh braking events (deceleration over {metrics.harsh_braking:g} m/s²)"
    if name == "harsh_acceleration":
        return f"harsh acceleration events (over {metrics.harsh_acceleration:g} m/s²)"
    if name == "night_driving":
        start, end = metrics.night_driving or ("", "")
        return f"share of driving between {start} and {end}"
    if name == "over_speed":
        return f"share of time over {metrics.over_speed:g} km/h"
    return name


def describe_aggregate(a: Aggregate) -> str:
    return f"{', '.join(a.functions)} of {', '.join(a.signals)} over {format_duration(a.window)} windows"


def _every(metrics: Metrics) -> str:
    return "per trip" if metrics.every is None else f"every {format_duration(metrics.every)}"


def _zone_text(zone: Zone) -> str:
    if zone.polygon:
        return f"{zone.name} (a polygon of {len(zone.polygon)} points)"
    return f"{zone.name} ({_metres(zone.radius_m or 0)} around {zone.lat:g}, {zone.lon:g})"


def _matched(known: list[tuple[str, str]] | None, pattern: str) -> list[tuple[str, str]]:
    from fnmatch import fnmatchcase

    return [(n, s) for n, s in known or [] if fnmatchcase(n, pattern) or fnmatchcase(s, pattern)]


def describe_stream(policy: Policy, s: Stream, known: list[tuple[str, str]] | None, now: datetime) -> list[str]:
    """Plain-language lines about one stream; the first is its headline."""
    if s.local:
        head = f'Stream "{s.name}" stays in the car (local only, needs no consent)'
        head += f', for "{s.purpose}"' if s.purpose else ""
    else:
        head = f'Stream "{s.name}" goes to {s.recipient}, for "{s.purpose}"'
    lines = [head]
    if s.paused or policy.paused:
        lines.append("PAUSED: nothing is collected for it now")
    if s.consent is not None:
        state = ""
        if s.consent.expires <= now:
            state = " - EXPIRED: nothing is sent"
        elif s.consent.granted > now:
            state = " - not yet in force"
        lines.append(f"consent: granted {_day(s.consent.granted)}, expires {_day(s.consent.expires)}{state}")
    classifier = policy.classifier()
    if not s.raw or not s.signals:
        lines.append("raw signals: none (only results computed in the car leave)" if not s.local else "raw signals: none")
    else:
        parts = []
        for pattern in s.signals:
            text = pattern
            quantum = dict(s.precision).get(pattern)
            notes = []
            if known is not None:
                matched = _matched(known, pattern)
                sent = [n for n, src in matched if classifier.classify(n, src) in s.classes()]
                held = len(matched) - len(sent)
                if len(sent) == 1 and not any(c in pattern for c in "*?["):
                    if sent[0] != pattern:
                        notes.append(f"= {sent[0]}")
                else:
                    notes.append(f"{len(sent)} signal{'s' if len(sent) != 1 else ''}")
                if held:
                    notes.append(f"{held} more not sent: class not allowed")
            if quantum is not None:
                notes.append(f"rounded to {quantum:g}")
            parts.append(text + (f" ({', '.join(notes)})" if notes else ""))
        lines.append("raw signals: " + ", ".join(parts))
        for pattern, quantum in s.precision:
            if pattern not in s.signals:
                lines.append(f"precision: {pattern} rounded to {quantum:g}")
        allowed = [c for c in CLASSES if c in s.classes()]
        lines.append("classes: " + (", ".join(allowed[:-1]) + " and " + allowed[-1] if len(allowed) > 1 else "technical only"))
        rate = "every change" if not s.min_interval else f"at most one value per signal every {format_duration(s.min_interval)}"
        lines.append(f"rate: {rate}")
    if LOCATION in s.allow:
        where = f"location: {describe_location(s.location)}"
        if s.zones:
            where += f"; suppressed inside privacy zone{'s' if len(s.zones) > 1 else ''} {', '.join(s.zones)} (with trip start and end)"
        elif policy.zones:
            where += "; privacy zones NOT applied"
        lines.append(where)
    for a in s.aggregates:
        lines.append(f"aggregate: {describe_aggregate(a)}")
    if s.metrics is not None:
        lines.append(f"metrics, {_every(s.metrics)}: " + "; ".join(describe_metric(s.metrics, m) for m in s.metrics.enabled()))
    if not s.local:
        if s.identity == "vin":
            lines.append("identity: the VIN")
        else:
            lines.append(f"identity: a pseudonym only {s.recipient} gets (not the VIN), signed with a key only {s.recipient} gets")
        lines.append(f"encryption: to key {s.encrypt_to[:16]}..." if s.encrypt_to else "encryption: none (brokers and relays can read it)")
    kept = f"for {format_duration(s.retention)}" if s.retention else "until the disk quota needs the space (no retention set)"
    lines.append(f"kept in the car {kept}")
    return lines


def never_leaves(policy: Policy) -> tuple[list[str], list[str]]:
    """(what never leaves the car, cautions), in plain language."""
    outbound = [s for s in policy.streams if not s.local]
    never = ["any signal no stream names (default: no collection)"]
    notes = []
    for cls in (LOCATION, PERSONAL):
        if not any(cls in s.allow for s in outbound):
            never.append(f"{DESCRIPTIONS[cls]}: no stream that leaves the car allows them")
    located = [s for s in outbound if LOCATION in s.allow]
    for zone in policy.zones:
        missing = [s.name for s in located if zone.name not in s.zones]
        if missing:
            notes.append(f"privacy zone {zone.name} is not applied by stream {', '.join(missing)}: location inside it leaves the car")
        else:
            never.append(f"location, trip start and trip end inside privacy zone {_zone_text(zone)}")
    if located and all(s.location is not None for s in located):
        finest = min(located, key=lambda s: s.location.cell_m())  # type: ignore[union-attr]
        never.append(f"location more precise than {describe_location(finest.location).split(' ', 1)[1]}")
    if outbound and not any(s.identity == "vin" for s in outbound):
        never.append("the VIN: each recipient gets its own pseudonym of it and its own signing key, so recipients who compare what they hold cannot tell it is one car (unless you give them the proof: carledger remote identity --prove)")
    elif outbound:
        notes.append("the VIN goes to: " + ", ".join(s.recipient or "" for s in outbound if s.identity == "vin"))
    local = [s.name for s in policy.streams if s.local]
    if local:
        never.append(f"the local stream{'s' if len(local) > 1 else ''} {', '.join(local)}")
    if policy.edr is not None and policy.edr.recipient is None:
        never.append("crash captures (kept in the car, encrypted to the keys named in [edr])")
    elif policy.edr is not None:
        notes.append(f"crash captures go to {policy.edr.recipient}: speed, pedals, steering, acceleration, belts and "
                     f"airbags around a crash, readable only with the keys {', '.join(n for n, _ in policy.edr.keys)}")
    for s in outbound:
        if s.encrypt_to is None:
            notes.append(f"stream {s.name} is not encrypted: brokers and relays can read it")
    return never, notes


def describe_edr(edr: CrashCapture) -> list[str]:
    """The [edr] section in plain language: the first line is the heading."""
    from carledger.edr.ring import PERIOD, PRE_CRASH

    lines = [f"Crash capture (event data recorder): {PRE_CRASH:g} s before a crash at {1 / PERIOD:g} Hz "
             f"and {format_duration(edr.post)} after the event, on a speed change of 8 km/h within 150 ms or an airbag deploying"]
    lines.append("encrypted to: " + ", ".join(name for name, _ in edr.keys) + " (only these keys open a capture)")
    if edr.recipient is not None and edr.consent is not None:
        lines.append(f"leaves the car: to {edr.recipient} for \"{edr.purpose}\", consent until {format_time(edr.consent.expires)}")
    else:
        lines.append("never leaves the car (no recipient)")
    lines.append(f"kept: captures with an airbag deployment always; at most {edr.keep_non_deployment} others "
                 "(a newer one overwrites the oldest); never deleted for disk space or retention")
    lines.append("the last 20 s are kept in memory only; nothing of them is stored unless a crash triggers a capture")
    return lines


def describe_ignition(ignition: Ignition) -> list[str]:
    """The [ignition] section in plain language: the first line is the heading."""
    classes = " and ".join(ignition.each_drive)
    lines = [f"At every ignition: {classes} off until the owner allows it (China's 2021 provisions: "
             "\"default no collection, each time\")"]
    lines.append(f"allow for one drive: carledger consent allow {ignition.each_drive[0]} --this-drive; "
                 "for every drive: --standing (until carledger consent withdraw)")
    if ignition.signal is not None:
        lines.append(f"a drive begins when {ignition.signal} turns to {' or '.join(str(v) for v in ignition.on)}, "
                     f"or the bus wakes after {format_duration(ignition.silence)} of silence")
    else:
        lines.append(f"a drive begins when the bus wakes after {format_duration(ignition.silence)} of silence")
    return lines


# -- show ------------------------------------------------------------------------------------


def _show(args: argparse.Namespace) -> int:
    def body(known: Any) -> int:
        policy = _load(args.file, args, known)
        now = _at(args) or datetime.now(timezone.utc)
        never, notes = never_leaves(policy)
        streams = [(s, describe_stream(policy, s, known, now)) for s in policy.streams]
        if args.json:
            document = {
                "file": args.file,
                "version": policy.version,
                "digest": policy.digest().hex(),
                "paused": policy.paused,
                "classes": [list(c) for c in policy.classes],
                "zones": plain(policy.zones),
                "streams": [{**plain(s), "summary": lines} for s, lines in streams],
                "edr": None if policy.edr is None else {**plain(policy.edr), "summary": describe_edr(policy.edr)},
                "ignition": None if policy.ignition is None else {**plain(policy.ignition),
                                                                  "summary": describe_ignition(policy.ignition)},
                "never_leaves": never,
                "notes": notes,
            }
            print(json.dumps(document, indent=2))
            return 0
        out = [f"Policy {args.file}: version {policy.version}, digest {policy.digest().hex()[:16]}"]
        if policy.paused:
            out.append("PAUSED: nothing is collected or sent while the policy is paused.")
        if not policy.streams:
            out.append("No streams: nothing is collected but the agent's own health.")
        sections = [lines for _, lines in streams] + ([describe_edr(policy.edr)] if policy.edr else [])
        for lines in sections + ([describe_ignition(policy.ignition)] if policy.ignition else []):
            out.append("")
            out.append(lines[0])
            out.extend(f"  {line}" for line in lines[1:])
        out.append("")
        out.append("Never leaves the car:")
        out.extend(f"  - {line}" for line in never)
        if notes:
            out.append("")
            out.append("Note:")
            out.extend(f"  - {line}" for line in notes)
        print("\n".join(out))
        return 0

    return _run(args, body, default_dbc=False)


# -- diff ------------------------------------------------------------------------------------


def _change(scope: str, name: str | None, field: str, old: Any, new: Any, text: str) -> dict[str, Any]:
    return {"scope": scope, "name": name, "field": field, "old": plain(old), "new": plain(new), "text": text}


def _listed(items: Any) -> str:
    return ", ".join(str(i) for i in items)


def diff_streams(old: Stream, new: Stream) -> list[dict[str, Any]]:
    """What changes for one stream, each change with a plain-language `text`."""
    out: list[dict[str, Any]] = []
    n = new.name

    def add(field: str, a: Any, b: Any, text: str) -> None:
        out.append(_change("stream", n, field, a, b, text))

    if old.local != new.local:
        add("local", old.local, new.local, "now stays in the car (local only)" if new.local else f"now leaves the car, to {new.recipient}")
    if old.recipient != new.recipient and not (old.local or new.local):
        add("recipient", old.recipient, new.recipient, f"now goes to {new.recipient} instead of {old.recipient}")
    if old.purpose != new.purpose:
        add("purpose", old.purpose, new.purpose, f'purpose: "{old.purpose}" -> "{new.purpose}"')
    if old.raw != new.raw:
        add("raw", old.raw, new.raw, "raw signals now leave" if new.raw else "raw signals no longer leave (only results computed in the car)")
    added = [p for p in new.signals if p not in old.signals]
    removed = [p for p in old.signals if p not in new.signals]
    if added:
        add("signals", old.signals, new.signals, f"signals added: {_listed(added)}")
    if removed:
        add("signals", old.signals, new.signals, f"signals removed: {_listed(removed)}")
    gained = [c for c in new.allow if c not in old.allow]
    lost = [c for c in old.allow if c not in new.allow]
    if gained:
        add("allow", old.allow, new.allow, f"now also allowed: {_listed(gained)} signals")
    if lost:
        add("allow", old.allow, new.allow, f"no longer allowed: {_listed(lost)} signals")
    if old.min_interval != new.min_interval:
        a = format_duration(old.min_interval) if old.min_interval else "every change"
        b = format_duration(new.min_interval) if new.min_interval else "every change"
        add("min_interval", old.min_interval, new.min_interval, f"rate: at most one value every {a} -> {b}".replace("every every", "every"))
    before, after = dict(old.precision), dict(new.precision)
    for pattern in [*before, *(p for p in after if p not in before)]:
        a, b = before.get(pattern), after.get(pattern)
        if a == b:
            continue
        if a is None:
            text = f"precision of {pattern}: full -> rounded to {b:g} (coarser)"
        elif b is None:
            text = f"precision of {pattern}: rounded to {a:g} -> full precision (finer)"
        else:
            text = f"precision of {pattern}: {a:g} -> {b:g} ({'coarser' if b > a else 'finer'})"
        add("precision", {pattern: a}, {pattern: b}, text)
    if old.location != new.location:
        ca = old.location.cell_m() if old.location else 0.0
        cb = new.location.cell_m() if new.location else 0.0
        trend = "coarser" if cb > ca else "finer"
        add("location", old.location, new.location,
            f"location: {describe_location(old.location)} -> {describe_location(new.location)} ({trend})")
    if old.zones != new.zones and (LOCATION in old.allow or LOCATION in new.allow):
        gained_z = [z for z in new.zones if z not in old.zones]
        lost_z = [z for z in old.zones if z not in new.zones]
        parts = []
        if gained_z:
            parts.append(f"now applies {_listed(gained_z)}")
        if lost_z:
            parts.append(f"no longer applies {_listed(lost_z)} (location inside leaves the car)")
        add("zones", old.zones, new.zones, "privacy zones: " + "; ".join(parts))
    old_aggs, new_aggs = set(old.aggregates), set(new.aggregates)
    for a in new.aggregates:
        if a not in old_aggs:
            add("aggregate", None, a, f"aggregate added: {describe_aggregate(a)}")
    for a in old.aggregates:
        if a not in new_aggs:
            add("aggregate", a, None, f"aggregate removed: {describe_aggregate(a)}")
    om, nm = old.metrics or Metrics(), new.metrics or Metrics()
    for metric in sorted(set(om.enabled()) | set(nm.enabled()), key=lambda m: list(Metrics.__dataclass_fields__).index(m)):
        a, b = getattr(om, metric), getattr(nm, metric)
        if a == b:
            continue
        if metric not in om.enabled():
            text = f"metric added: {describe_metric(nm, metric)}"
        elif metric not in nm.enabled():
            text = f"metric removed: {describe_metric(om, metric)}"
        else:
            text = f"metric changed: {describe_metric(om, metric)} -> {describe_metric(nm, metric)}"
        add(f"metrics.{metric}", a, b, text)
    if (om.enabled() or nm.enabled()) and om.every != nm.every:
        add("metrics.every", om.every, nm.every, f"metrics reported {_every(om)} -> {_every(nm)}")
    if old.consent != new.consent:
        oc, nc = old.consent, new.consent
        if oc is None or nc is None:
            add("consent", oc, nc, f"consent: {'none' if oc is None else 'until ' + _day(oc.expires)} -> "
                f"{'none' if nc is None else 'until ' + _day(nc.expires)}")
        else:
            if oc.granted != nc.granted:
                add("consent.granted", oc.granted, nc.granted, f"consent granted again on {_day(nc.granted)} (was {_day(oc.granted)})")
            if oc.expires != nc.expires:
                trend = "extended" if nc.expires > oc.expires else "shortened"
                add("consent.expires", oc.expires, nc.expires, f"consent expires {_day(oc.expires)} -> {_day(nc.expires)} ({trend})")
    if old.retention != new.retention:
        a = format_duration(old.retention) if old.retention else "no limit"
        b = format_duration(new.retention) if new.retention else "no limit"
        add("retention", old.retention, new.retention, f"kept in the car: {a} -> {b}")
    if old.encrypt_to != new.encrypt_to:
        if new.encrypt_to is None:
            text = "no longer encrypted (brokers and relays can read it)"
        elif old.encrypt_to is None:
            text = f"now encrypted to key {new.encrypt_to[:16]}..."
        else:
            text = f"encrypted to another key: {old.encrypt_to[:16]}... -> {new.encrypt_to[:16]}..."
        add("encrypt_to", old.encrypt_to, new.encrypt_to, text)
    if old.identity != new.identity:
        text = "now identified by the VIN instead of a pseudonym" if new.identity == "vin" else "now identified by a pseudonym instead of the VIN"
        add("identity", old.identity, new.identity, text)
    if old.paused != new.paused:
        add("paused", old.paused, new.paused, "paused" if new.paused else "resumed")
    return out


def _headline(s: Stream) -> str:
    if s.local:
        return "stays in the car (local only)"
    expiry = f", consent until {_day(s.consent.expires)}" if s.consent else ""
    return f'to {s.recipient} for "{s.purpose}"{expiry}; signals: {_listed(s.signals) or "none (results computed in the car)"}'


def diff_policies(old: Policy, new: Policy) -> list[dict[str, Any]]:
    """Every change from `old` to `new`, each with a plain-language `text`."""
    out: list[dict[str, Any]] = []
    if old.version != new.version:
        out.append(_change("policy", None, "version", old.version, new.version, f"version {old.version} -> {new.version}"))
    if old.paused != new.paused:
        out.append(_change("policy", None, "paused", old.paused, new.paused,
                           "PAUSED: nothing is collected or sent" if new.paused else "resumed: collection starts again"))
    before, after = dict(old.classes), dict(new.classes)
    for pattern in [*before, *(p for p in after if p not in before)]:
        a, b = before.get(pattern), after.get(pattern)
        if a != b:
            text = (f"class of {pattern}: default -> {b}" if a is None else
                    f"class of {pattern}: {a} -> default" if b is None else f"class of {pattern}: {a} -> {b}")
            out.append(_change("classes", pattern, "class", a, b, text))
    old_zones = {z.name: z for z in old.zones}
    new_zones = {z.name: z for z in new.zones}
    for name, zone in new_zones.items():
        if name not in old_zones:
            out.append(_change("zone", name, "zone", None, zone, f"privacy zone added: {_zone_text(zone)}"))
        elif old_zones[name] != zone:
            out.append(_change("zone", name, "zone", old_zones[name], zone,
                               f"privacy zone changed: {_zone_text(old_zones[name])} -> {_zone_text(zone)}"))
    for name, zone in old_zones.items():
        if name not in new_zones:
            out.append(_change("zone", name, "zone", zone, None, f"privacy zone removed: {_zone_text(zone)}"))
    old_streams = {s.name: s for s in old.streams}
    new_streams = {s.name: s for s in new.streams}
    for name, s in new_streams.items():
        if name not in old_streams:
            out.append(_change("stream", name, "stream", None, s, f'stream "{name}" added: {_headline(s)}'))
        else:
            out.extend(diff_streams(old_streams[name], s))
    for name, s in old_streams.items():
        if name not in new_streams:
            whom = "nothing is recorded for it any more" if s.local else f"{s.recipient} no longer receives anything from it"
            out.append(_change("stream", name, "stream", s, None, f'stream "{name}" removed: {whom}'))
    if old.edr != new.edr:
        if new.edr is None:
            text = "crash capture removed: no crash is recorded any more"
        elif old.edr is None:
            text = "crash capture added: " + "; ".join(describe_edr(new.edr)[1:4])
        else:
            text = "crash capture changed: " + "; ".join(describe_edr(new.edr)[1:4])
        out.append(_change("edr", None, "edr", old.edr, new.edr, text))
    if old.ignition != new.ignition:
        if new.ignition is None:
            marked = old.ignition.each_drive if old.ignition is not None else ()
            text = f"no class is switched off at each ignition any more: {' and '.join(marked)} as the streams allow"
        else:
            text = ("[ignition] added: " if old.ignition is None else "[ignition] changed: ") + \
                "; ".join(describe_ignition(new.ignition)[::2])
        out.append(_change("ignition", None, "ignition", old.ignition, new.ignition, text))
    return out


def _apply(args: argparse.Namespace) -> int:
    from carledger.cli._owner import EXIT_USAGE, fail, run_request

    from carledger.owner.signed import is_signed_update

    try:
        with open(args.file, "rb") as handle:
            data = handle.read()
        signed = is_signed_update(data)
        text = "" if signed else data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return fail(args, f"{args.file}: cannot read: {exc}", EXIT_USAGE)
    request = {"action": "apply-policy", "text": text, "name": args.file, "origin": "cli"}
    if args.owner_key and signed:
        return fail(args, f"{args.file}: signed already; give it without --key", EXIT_USAGE)
    if args.owner_key:
        data = _sign(args, data)
        if data is None:
            return EXIT_USAGE
        signed = True
    if signed:
        request["signed"] = data.hex()
    return run_request(args, request, known=True)


def _sign(args: argparse.Namespace, document: bytes) -> bytes | None:
    """The policy signed with the owner's key (--key); None after saying why it cannot be."""
    from carledger.cli._owner import EXIT_USAGE, fail
    from carledger.cli.remote import _owner_kind, _Refused
    from carledger.ledger import KeyFileError, load_signing_key
    from carledger.sync import sign_policy

    try:
        _owner_kind(args.owner_key, "private")
        return sign_policy(document, load_signing_key(args.owner_key))
    except (_Refused, KeyFileError) as exc:
        fail(args, str(exc), EXIT_USAGE)
        return None


def _diff(args: argparse.Namespace) -> int:
    def body(known: Any) -> int:
        old = _load(args.old, args, known)
        new = _load(args.new, args, known)
        changes = diff_policies(old, new)
        notes = []
        if new.version <= old.version and changes:
            notes.append(f"the version did not go up ({old.version} -> {new.version}): the agent accepts only a higher version")
        if args.json:
            print(json.dumps({"old": args.old, "new": args.new, "old_version": old.version, "new_version": new.version,
                              "old_digest": old.digest().hex(), "new_digest": new.digest().hex(),
                              "changes": changes, "notes": notes}, indent=2))
            return 0
        lines = []
        current = None
        for change in changes:
            if change["scope"] == "stream" and change["field"] != "stream":
                if current != change["name"]:
                    lines.append(f'stream "{change["name"]}" changed:')
                    current = change["name"]
                lines.append(f"  {change['text']}")
            else:
                current = None
                lines.append(change["text"])
        if not changes:
            lines.append("no changes")
        lines.extend(f"note: {n}" for n in notes)
        print("\n".join(lines))
        return 0

    return _run(args, body, default_dbc=False)
