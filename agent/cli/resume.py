"""`carledger resume`: end a pause; every stream whose consent is in force collects again."""

from __future__ import annotations

import argparse

from carledger.cli._owner import add_store_options, run_request
from carledger.cli._store import exit_status


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "resume", help="end a pause: collection starts again",
        description="End the pause (`carledger pause`): streams start again with a declared `resume` event.",
        epilog=exit_status(),
    )
    add_store_options(parser, create=True)
    parser.set_defaults(func=lambda args: run_request(args, {"action": "resume"}))
