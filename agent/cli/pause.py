"""`carledger pause [--for DURATION]`: stop all collection at once (the owner's pause switch)."""

from __future__ import annotations

import argparse
import time

from carledger.cli._owner import UsageError, add_store_options, parse_when, run_request
from carledger.cli._store import exit_status

EPILOG = """\
examples:
  carledger pause               until `carledger resume`
  carledger pause --for 2h      resumes by itself after two hours

Every stream stops before its next block, with a declared `pause` event in
its chain; the agent's own health is still recorded. The ledger records the
pause and the resume (`carledger audit`).
""" + exit_status()


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pause", help="stop all collection now (until resume, or for a while)",
        description="Pause all collection at once: nothing is recorded or sent but the agent's own health.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--for", dest="duration", metavar="DURATION", help="resume by itself after this long (30m, 2h, 1d)")
    add_store_options(parser, create=True)
    parser.set_defaults(func=pause)


def pause(args: argparse.Namespace) -> int:
    until = None
    if args.duration:
        try:
            until = parse_when(args.duration, now=time.time())
        except ValueError as exc:
            raise UsageError(f"--for: {exc}") from None
    return run_request(args, {"action": "pause", "until": until})
