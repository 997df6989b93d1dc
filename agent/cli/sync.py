"""`carledger sync`: send a store's streams to a broker, beside the agent or on its own (docs/sync.md).

The same Syncer the agent runs in its own thread, as a process: it opens the
store for delivery marks only (no writer lock), so it works on a store the
agent is writing and on one a replay left behind. What leaves is what the
policy in force in the store sends (carledger.sync.gate): a named stream the
policy keeps in the car is refused before anything connects.

Exit codes: 0 sent (with --drain: every block acked), 1 the drain did not
finish in time (broker unreachable, no ack), 2 a usage error (not a store, an
unknown or refused stream, no collector key enrolled, an unknown broker host).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from carledger.cli._args import seconds
from carledger.cli._display import PolledProgress
from carledger.cli._store import add_store_options, exit_status
from carledger.cli.collect import add_mqtt_arguments, mqtt_config_from_args

EPILOG = """\
examples:
  carledger sync ./ledger --enroll-collector "Fleet Ops" collector.pub   # trust its acks (carledger collect key)
  carledger sync ./ledger --vehicle car-1 --host localhost --drain 300   # every stream the policy sends
  carledger sync /var/lib/carledger --vehicle car-1 --stream insurer --host broker --ca ca.crt \\
      --cert car-1.crt --key car-1.key

""" + exit_status("sent (with --drain: every block acked)", "not everything was acked")

DRAIN_DEFAULT = 300.0


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sync", help="send a store's streams to an MQTT broker until acked (store-and-forward)",
        description="Publish the blocks of the streams the policy in force sends (QoS 1, persistent session), mark "
        "them synced on the broker's PUBACK and acked on the collector's signed ack, and send again what the "
        "collector did not ack. Exit 0 sent (drained), 1 not drained in time, 2 usage error or refused stream.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_store_options(parser, positional=True, json_output=False)
    parser.add_argument("--vehicle", help="vehicle id: the topic level carledger/v1/VEHICLE/ (required to send)")
    parser.add_argument("--stream", action="append", metavar="NAME[=RECIPIENT]",
                        help="send only this stream (repeatable); default: every stream the policy sends. A stream "
                             "the policy keeps in the car is refused")
    parser.add_argument("--drain", nargs="?", type=seconds, const=DRAIN_DEFAULT, metavar="SECONDS",
                        help=f"exit 0 once every block of these streams is acked, 1 if that takes longer than SECONDS "
                             f"(default {DRAIN_DEFAULT:.0f})")
    parser.add_argument("--ack-timeout", type=seconds, metavar="S",
                        help="longest wait for the collector's ack before sending again (default 30; [mqtt] ack_timeout)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    parser.add_argument("--enroll-collector", nargs=2, metavar=("RECIPIENT", "PUBKEY"),
                        help="trust this collector key (64 hex digits or a file; `carledger collect key`) to sign the "
                             "acks of the streams for RECIPIENT, then exit")
    add_mqtt_arguments(parser)
    parser.set_defaults(func=run)


class Refused(Exception):
    """A usage error: the message is the one line to print, exit 2."""


def _fail(message: str, code: int) -> int:
    print(f"carledger sync: {message}", file=sys.stderr)
    return code


def enroll(store: str, recipient: str, public_key: str) -> int:
    from carledger.ledger import KeyFileError, kid
    from carledger.sync import enroll_collector

    try:
        key = enroll_collector(store, recipient, public_key)
    except (KeyFileError, ValueError, OSError) as exc:
        return _fail(str(exc), 2)
    print(f"the acks of streams for {recipient!r} are checked against collector key {kid(key).hex()}")
    return 0


def chosen_streams(store, gate, requested: list[str] | None) -> dict:
    """The streams to send: the named ones (each checked against the policy in force), or all the policy sends."""
    from carledger.ledger import valid_stream_name
    from carledger.sync import OutboundStream
    from carledger.sync.gate import refusal

    allowed = gate.allowed()
    if not requested:
        if not allowed:
            raise Refused("nothing to send: the policy in force gives no stream a recipient and a consent")
        return allowed
    policy, known = gate.policy(), set(store.streams())
    known |= {s.name for s in policy.streams} | ({"crash"} if policy.edr is not None else set())
    out = {}
    for item in requested:
        name, _, recipient = item.partition("=")
        if not valid_stream_name(name):
            raise Refused(f"--stream {item[:80]!r}: {name[:80]!r} is not a stream name "
                          "(1-64 of [A-Za-z0-9._:-], starting with a letter or digit)")
        if name not in known:
            raise Refused(f"unknown stream {name!r}: neither the store nor its policy has it (streams: {', '.join(sorted(known)) or 'none'})")
        why = refusal(policy, name)
        if why is not None:
            raise Refused(f"stream {name!r} does not leave the car: {why}")
        if recipient and recipient != allowed[name].recipient:
            raise Refused(f"stream {name!r}: the policy sends it to {allowed[name].recipient!r}, not to {recipient!r}")
        out[name] = OutboundStream(allowed[name].recipient, allowed[name].until)
    return out


def run(args: argparse.Namespace) -> int:
    from carledger.ledger import Store, StoreError

    try:
        marks = Store.open_readonly(args.store)
    except StoreError as exc:
        return _fail(str(exc), 2)
    try:
        if args.enroll_collector:
            return enroll(args.store, *args.enroll_collector)
        try:
            syncer, streams = _prepare(args, marks)
        except Refused as exc:
            return _fail(str(exc), 2)
        return _send(args, syncer, marks, streams)
    finally:
        marks.close()


def _prepare(args: argparse.Namespace, marks) -> tuple:
    """The Syncer and the streams it sends, or Refused (one line, exit 2) before anything connects."""
    from carledger.ledger import KeyFileError, StoreError
    from carledger.owner import OwnerStateError
    from carledger.policy import PolicyError
    from carledger.sync import OutboundGate, Syncer, collector_keys

    if not args.vehicle:
        raise Refused("--vehicle is required to send")
    try:
        streams = chosen_streams(marks, OutboundGate(args.store), args.stream)
        keys = collector_keys(args.store)
    except PolicyError as exc:  # the policy in force no longer parses: nothing can be judged to leave
        raise Refused(f"the policy in force cannot be read: {str(exc).splitlines()[0]}") from None
    except (KeyFileError, StoreError, OSError, OwnerStateError) as exc:
        raise Refused(str(exc)) from None
    for name, spec in streams.items():
        if spec.recipient not in keys:
            raise Refused(f"stream {name!r}: no collector key is enrolled for {spec.recipient!r}, so no ack could be "
                          f"checked (carledger sync {args.store} --enroll-collector {spec.recipient!r} KEYFILE)")
    try:
        cfg = mqtt_config_from_args(args)
    except OSError as exc:  # the password file
        raise Refused(str(exc)) from None
    if args.ack_timeout is not None:
        if args.ack_timeout < 0.1:
            raise Refused(f"--ack-timeout must be at least 0.1 s, got {args.ack_timeout:g}")
        cfg = cfg.with_(ack_timeout=args.ack_timeout)
    try:
        return Syncer(args.store, args.vehicle, cfg, lambda: streams, signer=_vehicle_signer(args.store)), streams
    except ValueError as exc:  # a vehicle id that cannot be a topic level
        raise Refused(str(exc)) from None


def _vehicle_signer(store: str):
    """The vehicle key in the store, which signs the outcomes of policy updates; None when it has none to read."""
    from carledger.ledger import KeyFileError
    from carledger.ledger.keys import FileSigner, key_path, load_signing_key

    path = key_path(store)
    if not path.exists():
        return None  # a hardware key: the agent's own syncer signs with it
    try:
        return FileSigner(load_signing_key(path))
    except KeyFileError as exc:
        raise Refused(str(exc)) from None


def _send(args: argparse.Namespace, syncer, marks, streams: dict) -> int:
    """Run the syncer until drained, timed out, stopped by a signal, or the broker's host proves unknown."""
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    deadline = None if args.drain is None else time.monotonic() + args.drain
    waiting = sum(n for name, (n, _) in marks.backlog().items() if name in streams)
    progress = PolledProgress("draining", "blocks", lambda: syncer.stats.acked_blocks, waiting) if args.drain is not None else None
    syncer.start()
    if progress is not None:
        progress.start()
    code, problem = 0, None
    try:
        while not done.wait(0.2):
            stats = syncer.stats
            if stats.unknown_host:
                code, problem = 2, f"cannot reach the broker: {stats.connect_error}"
                break
            if deadline is None:
                continue
            left = {n: c for n, (c, _) in marks.backlog().items() if n in streams}
            if not left:
                break
            if time.monotonic() > deadline:
                code = 1
                if stats.connects == 0:
                    problem = f"not drained after {args.drain:g} s: cannot reach the broker: {stats.connect_error}"
                else:
                    waiting = ", ".join(f"{n} {c}" for n, c in sorted(left.items()))
                    problem = f"not drained after {args.drain:g} s: blocks not acked by the collector: {waiting}"
                break
    finally:
        if progress is not None:
            progress.close()
        syncer.stop()
    s = syncer.stats
    left = {n: c for n, (c, _) in marks.backlog().items() if n in streams}
    summary = {
        "published": s.published, "resent": s.resent, "wire_bytes": s.wire_bytes, "acked": s.acked_blocks,
        "timeouts": s.timeouts, "acks_ignored": dict(s.acks_ignored), "unacked": left,
        "drained": args.drain is not None and not left, "error": problem,
    }
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        ignored = sum(s.acks_ignored.values())
        print(f"published {s.published} blocks ({s.resent} again), {s.wire_bytes} bytes; {s.acked_blocks} acked"
              + (f"; {ignored} acks ignored ({', '.join(sorted(s.acks_ignored))})" if ignored else ""), file=sys.stderr)
    if problem:
        _fail(problem, code)
    return code
