"""What the owner's commands share: finding the store, running a request, printing the outcome."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from carledger.config import DEFAULT_PATH, ConfigError, load_config

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


@dataclass
class Target:
    """The store a command works on, and what the agent's configuration says about it."""

    store: str
    vehicle: str | None = None
    dbc: tuple[str, ...] = ()
    vss: tuple[str, ...] = ()
    from_config: bool = False

    def known_signals(self) -> list[tuple[str, str]] | None:
        if not self.dbc:
            return None
        from carledger.policy import vehicle_signals

        return vehicle_signals(self.dbc, self.vss or None)


def add_store_options(parser: argparse.ArgumentParser, *, json_output: bool = True) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", help=f"the agent's configuration, which says where the store is (default {DEFAULT_PATH})")
    parser.add_argument("--store", metavar="DIR", help="the store directory itself (instead of -c)")
    if json_output:
        parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")


def target(args: argparse.Namespace) -> Target:
    """The store from --store, else from the configuration (ConfigError when neither works)."""
    if getattr(args, "store", None):
        return Target(args.store)
    config = load_config(args.config or DEFAULT_PATH)
    dbc = tuple(p for bus in config.buses for p in bus.dbc)
    vss = tuple(p for bus in config.buses for p in bus.vss)
    return Target(config.store, config.vehicle, dbc, vss, from_config=True)


def run_request(args: argparse.Namespace, request: dict[str, Any], *, known: bool = False) -> int:
    """Run an owner request on the store (through the agent when it runs) and print the outcome."""
    from carledger.owner import OwnerError, OwnerStateError
    from carledger.owner.client import submit

    try:
        where = target(args)
        result = submit(
            where.store, request, vehicle=where.vehicle,
            known_signals=where.known_signals() if known else None, create=where.from_config,
        )
    except ConfigError as exc:
        return fail(args, f"{exc}\n(give --store DIR, or -c with the agent's configuration)", EXIT_USAGE)
    except (OwnerError, OwnerStateError) as exc:
        return fail(args, str(exc), EXIT_REFUSED)
    except Exception as exc:  # the store cannot be opened: a clear line, not a traceback
        from carledger.ledger import LedgerError

        if isinstance(exc, (LedgerError, OSError)):
            return fail(args, str(exc), EXIT_USAGE)
        raise
    if getattr(args, "json", False):
        print(json.dumps(result, sort_keys=True))
    else:
        where_ran = " (by the running agent)" if result.get("agent") == "running" else ""
        print(f"{result.get('message', 'done')}{where_ran}")
    return EXIT_OK


def fail(args: argparse.Namespace, message: str, code: int) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "error": message}))
    print(f"carledger: {message}", file=sys.stderr)
    return code


def parse_when(text: str, *, now: float) -> float:
    """A time the owner typed: ISO 8601 (a date means its midnight UTC), or a duration from now ("90d")."""
    from carledger.policy.duration import DurationError, parse_duration

    try:
        return now + parse_duration(text)
    except DurationError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither a date/time (2027-05-01, 2027-05-01T12:00:00+02:00) nor a duration (90d, 12h)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()
