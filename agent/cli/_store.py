"""How every command names the store it works on, and the files it writes (docs/cli.md).

One convention for all: a command that works on a store takes `--store DIR`
or `-c FILE` (the agent's configuration, which names the store; default
/etc/carledger/agent.toml), and, where the store is its only subject, a
positional STORE as well. `resolve_store` runs before the command, so a path
that is not a store is refused (exit 2, one line) before anything is opened,
and nothing is ever created by a command that only reads.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carledger.config import DEFAULT_PATH, ConfigError, load_config

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2



class UsageError(Exception):
    """A mistake in the command line, or a path that is not what it should be: the subcommand's usage, one line, exit 2."""


def exit_status(ok: str = "done", refused: str | None = "refused (the message says why)") -> str:
    """The line each subcommand's help ends with: what its exit status means (docs/cli.md)."""
    one = f", 1 {refused}" if refused else ""
    return f"exit status: 0 {ok}{one}, 2 usage error, unreadable input or a path that is not what it should be."


@dataclass
class Target:
    """The store a command works on, and what the agent's configuration says about it."""

    store: str
    vehicle: str | None = None
    dbc: tuple[str, ...] = ()
    vss: tuple[str, ...] = ()
    from_config: bool = False
    key: str | None = None  # the configuration's `[agent] key` (None: STORE/keys/vehicle.key)

    def known_signals(self) -> list[tuple[str, str]] | None:
        if not self.dbc:
            return None
        from carledger.policy import vehicle_signals

        return vehicle_signals(self.dbc, self.vss or None)


def add_store_options(parser: argparse.ArgumentParser, *, positional: bool = False, json_output: bool = True,
                      create: bool = False) -> None:
    """STORE (where the store is the command's only subject), --store DIR and -c FILE, resolved before the command runs.

    `create`: an owner request may make a new store where the configuration
    says (it names the vehicle); --store and STORE must always name an existing one.
    """
    if positional:
        parser.add_argument("store_arg", nargs="?", metavar="STORE", help="the store directory (same as --store)")
    parser.add_argument("--store", metavar="DIR", help="the store directory (holding ledger.sqlite)")
    parser.add_argument("-c", "--config", metavar="FILE",
                        help=f"the agent's configuration, which names the store (default {DEFAULT_PATH})")
    if json_output:
        parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    parser.set_defaults(store_create=create)


def resolve_store(args: argparse.Namespace) -> None:
    """Set `args.target` and `args.store` from STORE, --store or -c; UsageError when they do not name a store."""
    if getattr(args, "store_create", None) is None:
        return  # the command takes no store (or a subcommand says so: store_create=None)
    args.target = target(args, create=args.store_create)
    args.store = args.target.store


def target(args: argparse.Namespace, *, create: bool = False) -> Target:
    """The store from STORE or --store, else from the configuration."""
    if getattr(args, "target", None) is not None:
        return args.target
    given, flag = getattr(args, "store_arg", None), getattr(args, "store", None)
    if given and flag and given != flag:
        raise UsageError(f"two stores given ({given} and --store {flag}): give one")
    if given or flag:
        return Target(require_store(given or flag))
    from carledger.tomlfile import FieldError

    try:
        config = load_config(args.config or DEFAULT_PATH)
    except (ConfigError, FieldError) as exc:
        raise UsageError(f"{exc} (give --store DIR, or -c with the agent's configuration)") from None
    if not create:
        require_store(config.store)
    dbc = tuple(p for bus in config.buses for p in bus.dbc)
    vss = tuple(p for bus in config.buses for p in bus.vss)
    return Target(config.store, config.vehicle, dbc, vss, from_config=True, key=config.key)


def require_store(path: str) -> str:
    """`path` itself when it is a carledger store (a directory holding ledger.sqlite); UsageError otherwise."""
    from carledger.ledger.store import DB_FILE

    return require_dir_with(path, DB_FILE, "store")


def require_dir_with(path: str, marker: str, what: str) -> str:
    """`path` when it is a directory holding `marker` (a store's or a collector's database); UsageError otherwise.

    Checked before anything is opened: SQLite would create a missing database,
    and a reading command must never create one.
    """
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{path}: no such directory (not a carledger {what})")
    if not p.is_dir():
        raise UsageError(f"{path}: not a directory (a carledger {what} is a directory holding {marker})")
    if not (p / marker).is_file():
        raise UsageError(f"{path}: not a carledger {what} (no {marker} in it)")
    return path


def output_path(path: str) -> str:
    """An output file the command may create or replace; UsageError when it is a directory or its directory is missing."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{path}: is a directory; give a file name")
    parent = p.parent
    if not parent.is_dir():
        raise UsageError(f"{path}: directory {parent} does not exist")
    return path


def open_output(path: str | None, mode: str = "w") -> Any:
    """Standard output, or the output file checked by `output_path` (the caller closes a file it got)."""
    if path is None:
        return sys.stdout.buffer if "b" in mode else sys.stdout
    output_path(path)
    from carledger.ledger.files import open_private  # the car's data: 0600 whatever the umask

    try:
        return open_private(path, mode) if "b" in mode else open_private(path, mode, newline="")
    except OSError as exc:
        raise UsageError(f"{path}: cannot write: {exc.strerror}") from None


def usage_error(args: argparse.Namespace, message: str) -> int:
    """What argparse's `parser.error` prints (the subcommand's usage, then `PROG: error: MESSAGE`), as exit 2."""
    parser = getattr(args, "command_parser", None)
    if getattr(args, "json", False):
        import json

        print(json.dumps({"ok": False, "error": message}))
    if parser is not None:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
    else:
        print(f"carledger: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def fail(args: argparse.Namespace, message: str, code: int) -> int:
    """One line on stderr (and a JSON object on stdout with --json); returns `code`."""
    if getattr(args, "json", False):
        import json

        print(json.dumps({"ok": False, "error": message}))
    print(f"carledger: {message}", file=sys.stderr)
    return code
