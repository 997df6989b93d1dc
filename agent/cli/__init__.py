"""The `carledger` command: one module per subcommand, like cantools.

Each subcommand module has `add_subparser(subparsers)`, which registers its
parser and sets `func` to a callable taking the parsed arguments and returning
the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Subcommand modules, in the order `carledger --help` lists them.
SUBCOMMANDS = ("run", "verify", "log", "dbc", "policy", "consent", "pause", "resume", "audit", "wipe", "sync", "collect", "read", "edr", "keygen", "remote", "doctor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carledger",
        description="The owner's in-vehicle data agent: CAN in, signed ledger out.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (repeatable)")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"carledger.cli.{name}").add_subparser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    from carledger.sources.replay import ReplayError

    try:
        return int(args.func(args) or 0)
    except ReplayError as exc:  # a log no command can read: one line, whichever command met it
        print(f"carledger: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
