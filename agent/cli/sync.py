"""`carledger sync`: send a store's streams to a broker, beside the agent or on its own (docs/sync.md).

The same Syncer the agent runs in its own thread, as a process: it opens the
store for delivery marks only (no writer lock), so it works on a store the
agent is writing and on one a replay left behind.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from carledger.cli._display import PolledProgress
from carledger.cli._store import add_store_options, exit_status
from carledger.cli.collect import add_mqtt_arguments, mqtt_config_from_args

EPILOG = """\
examples:
  carledger sync ./ledger --vehicle car-1 --stream driving --host localhost --drain
  carledger sync /var/lib/carledger --vehicle car-1 --stream insurer=acme --host broker --ca ca.crt \\
      --cert car-1.crt --key car-1.key

""" + exit_status("sent (with --drain: every block acked)", "not everything was acked")


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sync", help="send a store's streams to an MQTT broker until acked (store-and-forward)",
        description="Publish the blocks of the named streams in order (QoS 1, persistent session), mark them synced "
        "on the broker's PUBACK and acked on the collector's ack, and send again what the collector did not ack.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_store_options(parser, positional=True, json_output=False)
    parser.add_argument("--vehicle", required=True, help="vehicle id: the topic level carledger/v1/VEHICLE/")
    parser.add_argument("--stream", action="append", required=True, metavar="NAME[=RECIPIENT]",
                        help="a stream to send (repeatable); nothing else leaves")
    parser.add_argument("--drain", action="store_true", help="exit 0 once every block of these streams is acked")
    add_mqtt_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carledger.ledger import Store, StoreError
    from carledger.sync import OutboundStream, Syncer

    streams = {}
    for item in args.stream:
        name, _, recipient = item.partition("=")
        streams[name] = OutboundStream(recipient or name)
    try:
        marks = Store.open_readonly(args.store)
    except StoreError as exc:
        print(f"carledger sync: {exc}", file=sys.stderr)
        return 2
    try:
        syncer = Syncer(args.store, args.vehicle, mqtt_config_from_args(args), lambda: streams)
    except ValueError as exc:
        marks.close()
        print(f"carledger sync: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    waiting = sum(n for name, (n, _) in marks.backlog().items() if name in streams)
    progress = PolledProgress("draining", "blocks", lambda: syncer.stats.acked_blocks, waiting) if args.drain else None
    syncer.start()
    if progress is not None:
        progress.start()
    drained = False
    try:
        while not done.wait(0.2):
            if args.drain and not set(marks.backlog()) & set(streams):
                drained = True
                break
    finally:
        if progress is not None:
            progress.close()
        syncer.stop()
        marks.close()
    s = syncer.stats
    print(f"published {s.published} blocks ({s.resent} again), {s.wire_bytes} bytes; {s.acked_blocks} acked", file=sys.stderr)
    return 0 if drained or not args.drain else 1
