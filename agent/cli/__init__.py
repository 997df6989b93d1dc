"""The `carledger` command: one module per subcommand, like cantools.

Each subcommand module has `add_subparser(subparsers)`, which registers its
parser and sets `func` to a callable taking the parsed arguments and returning
the exit code. The conventions every subcommand follows (how the store is
named, exit codes, log lines, progress) are in docs/cli.md.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from carledger.cli._args import add_logging_options, configure_logging

# Subcommand modules, in the order `carledger --help` lists them.
SUBCOMMANDS = ("run", "verify", "log", "dbc", "policy", "consent", "pause", "resume", "audit", "status", "console", "wipe", "sync", "collect", "read", "edr", "keygen", "remote", "witness", "prove", "receipts", "doctor")


class CommandParser(argparse.ArgumentParser):
    """A parser that names itself in the namespace, so an error found later shows this subcommand's usage.

    `add_subparsers` makes every subparser of this class too, and a subparser's
    defaults override its parent's: `args.command_parser` is the innermost one.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.set_defaults(command_parser=self)


def version() -> str:
    """The installed package's version (its metadata), else the source tree's."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("carledger")
    except PackageNotFoundError:
        from carledger import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="carledger",
        description="The owner's in-vehicle data agent: CAN in, signed ledger out. "
        "Exit status: 0 ok; 1 problems found or request refused; 2 usage error, unreadable input or a wrong path.",
    )
    add_logging_options(parser, "carledger")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"carledger.cli.{name}").add_subparser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(parser, args)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    from carledger.cli._store import UsageError, resolve_store, usage_error
    from carledger.sources.replay import ReplayError

    try:
        resolve_store(args)
        return int(args.func(args) or 0)
    except UsageError as exc:
        return usage_error(args, str(exc))
    except ReplayError as exc:  # a log no command can read: one line, whichever command met it
        print(f"carledger: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
