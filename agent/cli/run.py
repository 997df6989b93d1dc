"""`carledger run`: the daemon (-c CONFIG), or a quick replay of a recorded log through the whole pipeline."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys

from carledger.cli._args import seconds
from carledger.cli._display import PolledProgress
from carledger.cli._store import UsageError
from carledger.config import DEFAULT_PATH, ConfigError, load_config, replay_config

log = logging.getLogger("carledger")

EPILOG = """\
examples:
  carledger run -c /etc/carledger/agent.toml
  carledger run --replay drive.log --dbc car.dbc --store ./ledger --policy policy.toml --fast
  carledger run --replay drive.log --dbc car.dbc --store ./ledger \\
      --stream speed=Vehicle.Speed,ABS_ACCEL.* --stream gps=Vehicle.CurrentLocation.* --fast

exit status: 0 ran and stopped cleanly, 2 usage error, unreadable input or a path that is not what it should be.
"""


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the agent (daemon with -c, or replay a log with --replay)",
        description="Run the pipeline: read frames, decode, sample, seal signed blocks into the store. "
        "SIGTERM or SIGINT seals the unsealed tail and exits cleanly.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", metavar="FILE", help=f"configuration file (default {DEFAULT_PATH})")
    quick = parser.add_argument_group("quick replay without a configuration file")
    quick.add_argument("--replay", metavar="LOG", help="recorded log: candump (.log, .candump, .txt), .asc, .blf, .trc, .mf4 (bus logging; other MF4 needs carledger[mf4])")
    quick.add_argument("--dbc", metavar="DBC", action="append", default=[], help="DBC file (repeatable)")
    quick.add_argument("--vss", metavar="MAP", action="append", default=[], help="VSS mapping file (repeatable)")
    quick.add_argument("--store", metavar="DIR", help="ledger directory")
    quick.add_argument("--policy", metavar="FILE", help="the owner's policy to apply (docs/policy.md)")
    quick.add_argument(
        "--stream", metavar="NAME=PATTERN,...", action="append", default=[],
        help="a local stream and its signal patterns (VSS paths or Message.Signal, globs), instead of --policy; "
        "without either nothing is recorded but the agent's health",
    )
    quick.add_argument("--channel", action="append", default=[], help="replay only these log channels")
    quick.add_argument("--vehicle", help="vehicle identifier recorded in every block")
    quick.add_argument("--fast", action="store_true",
                       help="replay as fast as possible instead of at recorded speed (where a pause over 60 s in the log takes 60 s)")
    parser.add_argument("--for", dest="duration", type=seconds, metavar="SECONDS", help="stop after this many seconds")
    parser.add_argument("--json", action="store_true", help="print the run summary as one JSON object on stdout")
    parser.set_defaults(func=run)


def _parse_streams(items: list[str]) -> dict[str, list[str]] | None:
    if not items:
        return None
    streams: dict[str, list[str]] = {}
    for item in items:
        name, sep, patterns = item.partition("=")
        if not sep or not name or not patterns:
            raise UsageError(f"--stream: expected NAME=PATTERN[,PATTERN...], got {item!r}")
        streams.setdefault(name, []).extend(p for p in patterns.split(",") if p)
    return streams


def _load(args: argparse.Namespace):
    if args.replay:
        if args.config:
            raise UsageError("give either -c CONFIG or --replay, not both")
        if not args.dbc or not args.store:
            raise UsageError("--replay needs --dbc and --store")
        if args.policy and args.stream:
            raise UsageError("give either --policy FILE or --stream, not both")
        return replay_config(
            args.replay, args.dbc, args.store, _parse_streams(args.stream), policy=args.policy,
            fast=args.fast, vss=args.vss, vehicle=args.vehicle, channels=args.channel,
        )
    return load_config(args.config or DEFAULT_PATH)


def run(args: argparse.Namespace) -> int:
    from carledger.decode import DbcError
    from carledger.ledger import LedgerError
    from carledger.notify import Notifier
    from carledger.owner import OwnerError, OwnerStateError
    from carledger.pipeline import Pipeline, PipelineError
    from carledger.policy import PolicyError
    from carledger.tomlfile import FieldError

    try:
        config = _load(args)
        pipeline = Pipeline(config, notifier=Notifier())
    except (ConfigError, FieldError, DbcError, LedgerError, PipelineError, PolicyError, OwnerError, OwnerStateError) as exc:
        print(f"carledger: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"carledger: cannot open the store: {exc}", file=sys.stderr)
        return 2

    def request_stop(signum: int, frame: object) -> None:
        log.info("signal %d: sealing and stopping", signum)
        pipeline.stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    progress = PolledProgress("replaying", "frames", lambda: sum(b.stats.frames for b in pipeline.buses)).start() if args.replay else None
    try:
        summary = pipeline.run(args.duration)
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        print(json.dumps(summary.to_json(config.store)))
    else:
        for line in summary.lines(config.store):
            print(line, file=sys.stderr)
    return 0
