"""`carledger collect`: the receiving side. Enrol vehicles, run the collector, show what it holds."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from carledger.cli._args import host_port, micros, seconds
from carledger.cli._store import UsageError, exit_status, require_dir_with

EPILOG = """\
examples:
  carledger collect enroll ./collected car-1 car-1.pub      # the vehicle's keys/vehicle.pub
  carledger collect key ./collected > collector.pub           # for the cars: carledger sync --enroll-collector
  carledger collect run ./collected --host broker.example --ca ca.crt --cert collector.crt --key collector.key
  carledger collect status ./collected --json
  carledger collect run ./collector-key --dsn postgresql://collector@db/fleet   # stateless worker (docs/collector.md)
  carledger collect status --dsn postgresql://collector@db/fleet
  carledger collect verify --dsn postgresql://collector@db/fleet --vehicle car-1
  carledger verify ./collected/vehicles/car-1               # each vehicle's chains are a carledger store

exit status: 0 done, 1 refused (the message says why), 2 usage error, unreadable input or a path that is not
a collector.
"""

DSN_HELP = ("PostgreSQL connection string (libpq URI or key=value): the collector store is that database instead of "
            "DIR's SQLite files (docs/collector.md, \"PostgreSQL\")")


def _open_store(args: argparse.Namespace, *, create: bool):
    """The store the arguments name: --dsn's database, else DIR (which must already be a collector unless `create`)."""
    from carledger.collect.store import open_store

    if args.dsn:
        return open_store(args.dsn)
    if args.dir is None:
        print("carledger collect: give DIR or --dsn", file=sys.stderr)
        raise SystemExit(2)
    if not create:
        from carledger.collect.registry import DB_FILE

        require_dir_with(args.dir, DB_FILE, "collector")  # reading it must not create one
    return open_store(args.dir)


def add_mqtt_arguments(parser: argparse.ArgumentParser) -> None:
    """Broker options shared by the commands that talk MQTT."""
    g = parser.add_argument_group("broker")
    g.add_argument("--host", default="localhost", help="broker host (default: localhost)")
    g.add_argument("--port", type=int, help="broker port (default: 8883 with TLS, else 1883)")
    g.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT version (default: 5)")
    g.add_argument("--client-id", help="MQTT client id (stable across restarts: it names the persistent session)")
    g.add_argument("--username")
    g.add_argument("--password-file", metavar="FILE", help="file holding the MQTT password")
    g.add_argument("--ca", metavar="FILE", help="CA certificate of the broker (turns TLS on)")
    g.add_argument("--cert", metavar="FILE", help="client certificate")
    g.add_argument("--key", dest="tls_key", metavar="FILE", help="client certificate key")
    g.add_argument("--tls", action="store_true", help="TLS with the system CAs")


def mqtt_config_from_args(args: argparse.Namespace):
    from carledger.sync import MqttConfig

    password = None
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as fh:
            password = fh.read().strip()
    return MqttConfig(
        host=args.host, port=args.port, protocol=args.protocol, client_id=args.client_id, username=args.username,
        password=password, tls_ca=args.ca, tls_cert=args.cert, tls_key=args.tls_key, tls=args.tls,
        backoff_initial=0.5, backoff_max=30.0,
    )


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collect", help="the collector: enrol vehicles, receive and verify their blocks, show its state",
        description="Receive blocks over MQTT (a shared subscription), verify each against the vehicle's enrolled "
        "key, chain, sequence and Merkle root, store the accepted ones and ack them. Problems (forks, gaps, replays, "
        "bad signatures, malformed payloads, unknown vehicles) are recorded, never fatal.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="collect commands", metavar="COMMAND")

    p = sub.add_parser("enroll", help="enrol a vehicle's Ed25519 public key (its keys/vehicle.pub)",
                       epilog=exit_status("enrolled", "refused (bad vehicle id or key, or another key is enrolled)"))
    p.add_argument("dir", metavar="DIR", nargs="?", help="collector directory (created if missing); omitted with --dsn")
    p.add_argument("vehicle", metavar="VEHICLE", nargs="?", help="vehicle id: its topic level carledger/v1/VEHICLE/ "
                   "(for a recipient the car knows you by a pseudonym: that pseudonym)")
    p.add_argument("public_key", metavar="PUBKEY", nargs="?", help="64 hex digits or a file holding them")
    p.add_argument("--identity", metavar="FILE", help="instead of VEHICLE PUBKEY: the JSON `carledger remote identity "
                   "--recipient R --json` printed for you (your pseudonym of the car and its key)")
    p.add_argument("--handover", metavar="FILE", help="after a change of owner: the statement the previous key signed "
                   "(carledger remote identity --handover); the previous chains move to DIR/retired/ (with --dsn: to the "
                   "table retired_blocks)")
    p.add_argument("--dsn", help=DSN_HELP)
    p.set_defaults(func=enroll)

    p = sub.add_parser("run", help="receive, verify, store and ack until SIGTERM/SIGINT", epilog=exit_status("stopped", None))
    p.add_argument("dir", metavar="DIR", help="collector directory (with --dsn: only its keys/collector.key, the ack key "
                   "every worker shares)")
    p.add_argument("--dsn", help=DSN_HELP)
    p.add_argument("--group", default="carledger", help="shared subscription group (default: carledger); '' for a plain subscription")
    p.add_argument("--broker", action="append", metavar="HOST[:PORT]",
                   help="a broker to subscribe on; repeat for several (every worker subscribes on every broker; "
                        "default: --host/--port)")
    p.add_argument("--gap-wait", type=seconds, default=30.0, metavar="S", help="report a gap after waiting this long (default 30 s)")
    p.add_argument("--session-expiry", type=int, default=0, metavar="S",
                   help="keep this collector's MQTT session S seconds after it disconnects (default 0: a member of a "
                        "shared subscription that is gone for good would otherwise keep receiving its share)")
    add_mqtt_arguments(p)
    p.set_defaults(func=run)

    p = sub.add_parser("key", help="print the public key this collector signs its acks with (made if missing)",
                       epilog=exit_status("printed", None))
    p.add_argument("dir", metavar="DIR", help="collector directory (one `collect enroll` or `collect run` made)")
    p.set_defaults(func=key)

    p = sub.add_parser("status", help="vehicles, streams and heads, blocks waiting behind gaps, problems",
                       epilog=exit_status("shown", None))
    p.add_argument("dir", metavar="DIR", nargs="?", help="collector directory (holding collector.sqlite)")
    p.add_argument("--dsn", help=DSN_HELP)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=status)

    p = sub.add_parser("verify", help="re-check every stored chain from the signed blocks alone",
                       epilog=exit_status("every chain intact", "a chain is broken (each problem on one line)"))
    p.add_argument("dir", metavar="DIR", nargs="?", help="collector directory")
    p.add_argument("--dsn", help=DSN_HELP)
    p.add_argument("--vehicle", metavar="VEHICLE", help="only this vehicle's chains")
    p.add_argument("--json", action="store_true", help="one JSON object per stream")
    p.set_defaults(func=verify)

    p = sub.add_parser("export", help="the stored samples, streamed: one vehicle's stream, or all over a time range",
                       epilog=exit_status("exported", "a block failed its checks (left out; each named on stderr)"))
    p.add_argument("dir", metavar="DIR", nargs="?", help="collector directory")
    p.add_argument("--dsn", help=DSN_HELP)
    p.add_argument("--vehicle", metavar="VEHICLE", help="only this vehicle (default: all)")
    p.add_argument("--stream", metavar="STREAM", help="only this stream (default: all)")
    p.add_argument("--since", metavar="TIME", help="samples at or after TIME (ISO 8601, or epoch seconds)")
    p.add_argument("--until", metavar="TIME", help="samples at or before TIME")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl",
                   help="jsonl (default) or csv: docs/exports.md's columns, `vehicle` first")
    p.add_argument("--time", choices=("iso", "epoch", "relative"), help="how times are written (docs/exports.md)")
    p.add_argument("--events", action="store_true", help="also export declared events (jsonl only)")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of standard output")
    p.set_defaults(func=export)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _identity_file(path: str) -> tuple[str, str]:
    """(vehicle, public key hex) of a `remote identity --json` document; UsageError naming the field otherwise.

    Nothing in it is trusted: the key is what the collector will verify every block with.
    """
    with open(path, encoding="utf-8") as fh:
        try:
            doc = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{path}: not JSON: {exc}") from None
    for field in ("vehicle", "public_key"):
        if not isinstance(doc, dict) or not isinstance(doc.get(field), str):
            raise UsageError(f"{path}: field {field!r}: missing or not text (expected `carledger remote identity --json`)")
    return doc["vehicle"], doc["public_key"]


def enroll(args: argparse.Namespace) -> int:
    from carledger.ledger import KeyFileError, StoreError, kid

    if args.dsn:  # no DIR: the positionals are VEHICLE PUBKEY
        args.dir, args.vehicle, args.public_key = None, *([x for x in (args.dir, args.vehicle, args.public_key)
                                                           if x is not None] + [None, None])[:2]
    elif args.dir is None:
        raise UsageError("give DIR (or --dsn)")
    try:
        registry = _open_store(args, create=True)
    except StoreError as exc:
        print(f"carledger collect: {exc}", file=sys.stderr)
        return 2
    retired = None
    try:
        if args.identity is not None:
            if args.vehicle is not None or args.handover:
                raise UsageError("--identity FILE replaces VEHICLE PUBKEY (and has no --handover)")
            args.vehicle, args.public_key = _identity_file(args.identity)
        elif args.public_key is None:
            raise UsageError("give VEHICLE PUBKEY, or --identity FILE")
        if args.handover:
            from carledger.collect.rekey import rekey

            with open(args.handover, encoding="utf-8") as fh:
                handover = json.load(fh)
            key, retired = rekey(registry, args.vehicle, args.public_key, handover)
        else:
            key = registry.enroll(args.vehicle, args.public_key)
    except OSError as exc:
        print(f"carledger collect: {exc.filename or args.handover}: {exc.strerror}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"carledger collect: {args.handover}: not a handover (JSON): {exc}", file=sys.stderr)
        return 2
    except (ValueError, KeyFileError) as exc:
        print(f"carledger collect: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"carledger collect: {exc}", file=sys.stderr)
        return 2
    finally:
        registry.close()
    print(f"enrolled vehicle {args.vehicle} (key id {kid(key).hex()})"
          + (f"; the previous key's chains are in {retired}" if retired else ""))
    return 0


def key(args: argparse.Namespace) -> int:
    """The ack key's public half, 64 hex digits on stdout: what each car enrols for this collector's recipient."""
    from pathlib import Path

    from carledger.collect.registry import DB_FILE
    from carledger.sync import collector_key

    from carledger.sync.ack import COLLECTOR_KEY

    # A PostgreSQL worker's directory holds only the ack key (keys/collector.key).
    if not (Path(args.dir) / DB_FILE).is_file() and not list(Path(args.dir).glob(f"*/{COLLECTOR_KEY}")):
        print(f"carledger collect: {args.dir}: not a collector directory (no {DB_FILE})", file=sys.stderr)
        return 2
    print(bytes(collector_key(args.dir).verify_key).hex())
    return 0


def _broker(text: str, default_port: int) -> tuple[str, int]:
    try:
        return host_port(text, default_port)
    except ValueError as exc:
        raise ValueError(f"--broker {exc}") from None


def run(args: argparse.Namespace) -> int:
    from carledger.collect.fleet import FleetWorker
    from carledger.ledger import StoreError

    try:
        cfg = mqtt_config_from_args(args).with_(session_expiry=args.session_expiry)
        brokers = [cfg.with_(host=host, port=port) for host, port in
                   (_broker(b, cfg.effective_port) for b in args.broker)] if args.broker else [cfg]
        worker = FleetWorker(args.dir, brokers, group=args.group or None, gap_wait=args.gap_wait, store=args.dsn)
    except ValueError as exc:
        print(f"carledger collect: {exc}", file=sys.stderr)
        return 2
    except (StoreError, OSError) as exc:
        print(f"carledger collect: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    worker.start()
    while not done.wait(0.5):
        pass
    worker.stop()
    stats = worker.stats()
    print(f"received {stats['received']}, accepted {stats['accepted']}, duplicates {stats['duplicates']}, "
          f"rejected {stats['rejected']}, store round trips {stats['store_round_trips']}", file=sys.stderr)
    return 0


def status(args: argparse.Namespace) -> int:
    from carledger.collect import collector_state
    from carledger.ledger import StoreError

    try:
        store = _open_store(args, create=False)
        try:
            state = collector_state(store)
        finally:
            store.close()
    except StoreError as exc:
        print(f"carledger collect: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(state))
        return 0
    if not state["vehicles"]:
        print("no vehicles enrolled (carledger collect enroll DIR VEHICLE PUBKEY)")
    for vehicle, v in state["vehicles"].items():
        print(f"vehicle {vehicle} (key id {v['kid']})")
        for name, s in v["streams"].items():
            head = "-" if s["head_seq"] is None else f"seq {s['head_seq']} {s['head'][:16]}"
            extra = ""
            if s.get("waiting"):
                w = s["waiting"]
                extra = f", {w['blocks']} waiting (seq {w['first_seq']}..{w['last_seq']})"
            print(f"  {name:<24} {s['blocks']:>7} blocks {s['records']:>9} records  head {head}"
                  f"  duplicates {s.get('duplicates', 0)}{extra}")
    problems = state["problems"]
    if problems:
        print(f"\nproblems ({len(problems)}):")
        for p in problems:
            where = " ".join(str(x) for x in (p["vehicle"], p["stream"], p["seq"] is not None and f"seq {p['seq']}") if x)
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p["last"]))
            print(f"  {where or 'broker'}: {p['kind']}: {p['detail']} (x{p['count']}, last {when})")
    return 0


def verify(args: argparse.Namespace) -> int:
    """Every chain re-opened against the enrolled keys: 0 when all are intact, 1 naming each broken one."""
    from carledger.collect.verify import verify_collected
    from carledger.ledger import StoreError

    try:
        store = _open_store(args, create=False)
        try:
            checks = verify_collected(store, args.vehicle)
        finally:
            store.close()
    except StoreError as exc:
        print(f"carledger collect: {exc}", file=sys.stderr)
        return 2
    for c in checks:
        if args.json:
            print(json.dumps({"vehicle": c.vehicle, "stream": c.stream, "blocks": c.blocks, "records": c.records,
                              "ok": c.ok, "problems": c.problems}))
        else:
            print(f"{c.vehicle} {c.stream}: {c.blocks} blocks, {c.records} records: "
                  + ("intact" if c.ok else "; ".join(c.problems)))
    if not checks and not args.json:
        print("no chains stored" + (f" for vehicle {args.vehicle}" if args.vehicle else ""))
    return 0 if all(c.ok for c in checks) else 1


def export(args: argparse.Namespace) -> int:
    """Samples of the store streamed to stdout or -o FILE; 1 when a block failed its checks and was left out."""
    from carledger.collect.export import export_samples
    from carledger.ledger import StoreError

    t_from = None if args.since is None else micros("--since", args.since)
    t_to = None if args.until is None else micros("--until", args.until)
    try:
        store = _open_store(args, create=False)
        try:
            out = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
            try:
                written, problems = export_samples(store, out, fmt=args.format, vehicle=args.vehicle,
                                                   stream=args.stream, t_from=t_from, t_to=t_to,
                                                   time_mode=args.time, events=args.events)
            finally:
                if out is not sys.stdout:
                    out.close()
        finally:
            store.close()
    except OSError as exc:
        print(f"carledger collect: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"carledger collect: {exc}", file=sys.stderr)
        return 2
    for p in problems:
        print(f"carledger collect export: {p}", file=sys.stderr)
    return 1 if problems else 0
