"""Argument types the commands share: a bad value is one argparse line and exit 2."""

from __future__ import annotations

import argparse
import logging
import math
import sys


def stream_name(text: str) -> str:
    """A `--stream` value: 1-64 of [A-Za-z0-9._:-], starting alphanumeric (block-format.md, the header's `stream`)."""
    from carledger.ledger import valid_stream_name

    if not valid_stream_name(text):
        raise argparse.ArgumentTypeError(
            f"{text[:80]!r} is not a stream name: 1-64 of [A-Za-z0-9._:-], starting with a letter or digit"
        )
    return text


def seconds(text: str) -> float:
    """A number of seconds: finite and not negative (float() alone takes nan, inf and -1)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number of seconds (a finite number, 0 or more)")
    return value


def micros(option: str, text: str) -> int:
    """A time option's value (`carledger.times.parse_time`) as µs since the epoch; UsageError naming the option."""
    from carledger import times
    from carledger.cli._store import UsageError

    try:
        return round(times.parse_time(text) * 1e6)
    except ValueError as exc:
        raise UsageError(f"{option} {exc}") from None


def add_logging_options(parser: argparse.ArgumentParser, prog: str) -> None:
    """--version, -v and -q, the same on every command line the package installs (docs/cli.md)."""
    from carledger.cli import version

    parser.add_argument("--version", action="version", version=f"{prog} {version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log INFO lines (-vv: DEBUG) on stderr")
    parser.add_argument("-q", "--quiet", action="store_true", help="log errors only (no warnings)")


def configure_logging(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The command's own output stays clean: WARNING and above by default, INFO with -v, DEBUG with -vv, errors with -q."""
    if args.quiet and args.verbose:
        parser.error("-q and -v contradict each other: give one")
    logging.basicConfig(
        level=logging.ERROR if args.quiet else logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
