"""What the owner's commands share: finding the store, running a request, printing the outcome."""

from __future__ import annotations

import argparse
import json
from typing import Any

# The store conventions and the exit codes are every command's (agent/cli/_store.py); re-exported for the owner's commands.
from carledger.cli._store import (  # noqa: F401
    EXIT_OK, EXIT_REFUSED, EXIT_USAGE, Target, UsageError, add_store_options, fail, target,
)


def run_request(args: argparse.Namespace, request: dict[str, Any], *, known: bool = False) -> int:
    """Run an owner request on the store (through the agent when it runs) and print the outcome."""
    from carledger.ledger import LedgerError
    from carledger.owner import OwnerError, OwnerStateError

    try:
        result = owner_request(target(args, create=True), request, known=known)
    except (OwnerError, OwnerStateError) as exc:
        return fail(args, str(exc), EXIT_REFUSED)
    except (LedgerError, OSError) as exc:  # the store cannot be opened: a clear line, not a traceback
        return fail(args, str(exc), EXIT_USAGE)
    if getattr(args, "json", False):
        print(json.dumps(result, sort_keys=True))
    else:
        where_ran = " (by the running agent)" if result.get("agent") == "running" else ""
        print(f"{result.get('message', 'done')}{where_ran}")
    return EXIT_OK


def owner_request(where: Target, request: dict[str, Any], *, known: bool = False) -> dict[str, Any]:
    """Run `request` on the store `where` names, through the agent when it runs: the one way the CLI and the
    console change the owner's state. Returns the outcome; raises OwnerError or OwnerStateError (refused),
    LedgerError or OSError (the store cannot be opened)."""
    from carledger.owner.client import submit

    return submit(where.store, request, vehicle=where.vehicle,
                  known_signals=where.known_signals() if known else None, create=where.from_config)


def parse_when(text: str, *, now: float) -> float:
    """A time the owner typed: ISO 8601 (a date means its midnight UTC), or a duration from now ("90d")."""
    from carledger.policy.duration import DurationError, parse_duration
    from carledger.times import iso_seconds, require_time

    try:
        t = now + parse_duration(text)
    except DurationError:
        try:
            t = iso_seconds(text)
        except ValueError:
            raise ValueError(f"{text!r} is neither a date/time (2027-05-01, 2027-05-01T12:00:00+02:00) "
                             f"nor a duration (90d, 12h)") from None
    return require_time(text, t)
