"""Argument types the commands share: a bad value is one argparse line and exit 2."""

from __future__ import annotations

import argparse


def stream_name(text: str) -> str:
    """A `--stream` value: 1-64 of [A-Za-z0-9._:-], starting alphanumeric (block-format.md, the header's `stream`)."""
    from carledger.ledger import valid_stream_name

    if not valid_stream_name(text):
        raise argparse.ArgumentTypeError(
            f"{text[:80]!r} is not a stream name: 1-64 of [A-Za-z0-9._:-], starting with a letter or digit"
        )
    return text
