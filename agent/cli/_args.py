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


def host_port(text: str, default_port: int | None = None, *, lowest: int = 1) -> tuple[str, int]:
    """HOST, HOST:PORT, [IPv6]:PORT or a bare IPv6 address -> (host, port): every address option's one parser.

    The port runs from `lowest` (1 for a broker; 0 for a server's `--listen`, the
    system picking a free one) to 65535 and is required when there is no
    `default_port`. ValueError naming the text when it is none of those.
    """
    host, port = text, None
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            host = ""  # not [ADDR] or [ADDR]:PORT: refused below
        else:
            host, port = text[1:end], rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    number = default_port if port is None else int(port) if port.isascii() and port.isdigit() else -1
    if not host or number is None or not lowest <= number <= 65535 or any(c.isspace() for c in host):
        want = "HOST:PORT" if default_port is None else "HOST or HOST:PORT"
        raise ValueError(f"{text[:80]!r} is not {want} (a port from {lowest} to 65535; [ADDR]:PORT for IPv6)")
    return host, number


def address(host: str, port: int) -> str:
    """(host, port) written back as `host_port` reads it: [ADDR]:PORT for an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
