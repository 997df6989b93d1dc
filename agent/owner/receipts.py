"""The recipients' receipts a store keeps, checked offline (docs/transparency.md, "Receipts").

A receipt is a recipient collector's `cosignature/v1` line over the checkpoint
text of the car's log of one stream (origin, size, root). Checked with
nothing but the store: the recipient's enrolled key (STORE/keys/collectors.json),
the stream's key, and the blocks, from which the root is derived again (the
stored hashes are a cache). A receipt the recipient's previous collector key
made (STORE/keys/collectors-retired.json) verifies too, if the time it states
is not after that key was replaced. Used by `carledger receipts verify` and
`carledger audit`.
"""

from __future__ import annotations

import os
import sqlite3
from typing import NamedTuple

from carledger.ledger import Store
from carledger.ledger.checkpoints import origin_for
from carledger.ledger.errors import KeyFileError, StoreError
from carledger.sync.ack import check_receipt, collector_keys, retired_collector_keys
from carledger.transparency.checkpoint import Checkpoint, CheckpointError

__all__ = ["ReceiptCheck", "check_receipts", "latest_receipts"]


class ReceiptCheck(NamedTuple):
    row: int
    stream: str
    recipient: str
    size: int  # blocks the recipient stated it holds (seq 0..size-1)
    root: str  # hex of the checkpoint's root, as stated
    stated: int  # POSIX seconds the cosignature states
    received: int  # when the car kept it
    problem: str | None  # None: verifies
    key: str = "current"  # the recipient's key that signed it: "current", or "retired" (enrolled before it)


def check_receipts(store_dir: str | os.PathLike) -> list[ReceiptCheck]:
    """Every receipt of the store, each checked; StoreError / KeyFileError when the store cannot be read."""
    keys = collector_keys(store_dir)
    retired = retired_collector_keys(store_dir)
    out = []
    with Store.open_readonly(store_dir) as store:
        try:
            rows = store.receipts()
        except sqlite3.OperationalError:  # a store written before receipts: it has none
            rows = []
        for row, stream, recipient, size, text, line, stated, received in rows:
            root, problem, signer = "", None, "current"
            try:
                cp = Checkpoint.parse(str(text))
                root = cp.root_hash.hex()
                public = store.stream_key(stream)
                if recipient not in keys:
                    problem = f"no collector key is enrolled for recipient {recipient!r}"
                elif public is None or cp.origin != origin_for(public, stream):
                    problem = f"origin {cp.origin!r} is not the log of stream {stream!r}"
                elif cp.size != size:
                    problem = f"column size {size}, the checkpoint says {cp.size}"
                elif cp.root_hash != store.tree_root(stream, size, derived=True):
                    problem = f"the root is not that of the store's first {size} blocks"
                else:
                    problem, signer = _check_line(keys[recipient], retired.get(recipient, []), str(text), str(line), stated)
            except (CheckpointError, ValueError, StoreError, KeyFileError) as exc:
                problem = str(exc)
            out.append(ReceiptCheck(row, stream, recipient, size, root, stated, received, problem, signer))
    return out


def _check_line(current, retired: list, text: str, line: str, stated: int) -> tuple[str | None, str]:
    """(problem or None, "current" or "retired"): the cosignature is the current key's, or a retired key's
    made no later than that key was replaced (a key taken out of use must not vouch for anything after)."""
    try:
        return (None if check_receipt(current, text, line) == stated else _STATED), "current"
    except ValueError as exc:
        refused = str(exc)
    for key, retired_at in reversed(retired):
        try:
            at = check_receipt(key, text, line)
        except ValueError:
            continue
        if at != stated:
            return _STATED, "retired"
        if at > retired_at:
            return f"cosigned by the recipient's previous key after it was replaced ({int(retired_at)})", "retired"
        return None, "retired"
    return refused, "current"


_STATED = "column stated is not the time the cosignature states"


def latest_receipts(checks: list[ReceiptCheck]) -> list[ReceiptCheck]:
    """Per (recipient, stream), the largest receipt that verifies (what the recipient signed it holds)."""
    best: dict[tuple[str, str], ReceiptCheck] = {}
    for c in checks:
        key = (c.recipient, c.stream)
        if c.problem is None and (key not in best or c.size > best[key].size):
            best[key] = c
    return [best[k] for k in sorted(best)]
