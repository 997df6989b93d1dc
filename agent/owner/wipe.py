"""Wipe for a change of owner: delete the previous owner's data, rotate the keys, record that it happened.

Everything the store holds is about the previous owner (where they drove,
how, with whom), so all of it goes: every block, the policy and consents,
the pseudonym secret (new pseudonyms cannot be linked to the old ones). The
vehicle key is replaced, and the old key signs one last statement, kept as
the first record of the new ledger's `audit` stream: when the wipe happened,
which key takes over, and the head of every chain that ended. A recipient
holding the old chains can check with the old key that they ended there and
why, and that the new key is the same car's. The vehicle id stays.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carledger.ledger import Ledger, cbor
from carledger.ledger.keys import KEY_DIR, kid
from carledger.ledger.store import DB_FILE
from carledger.owner.actions import AUDIT_STREAM
from carledger.owner.state import OWNER_DIR, iso

_STATEMENT_DOMAIN = "carledger/wipe/v1"


@dataclass
class WipeResult:
    blocks: int
    streams: int
    old_kid: str
    new_kid: str
    statement: dict[str, Any]


def wipe(store: str | os.PathLike) -> WipeResult:
    """Wipe a store (the agent must be stopped: this takes the writer lock, StoreLocked otherwise)."""
    path = Path(store)
    now = time.time()
    with Ledger.open(path) as old:
        vehicle = old.vehicle_id
        heads = {name: [seq, digest.hex()] for name, (seq, digest) in old.store.heads().items() if seq is not None}
        blocks = old.store.block_count()
        old_key = old.signing_key
        old.close(seal=False)
        # Deleted while the lock is still held: no agent can start on a half-wiped store.
        for name in (DB_FILE, DB_FILE + "-wal", DB_FILE + "-shm"):
            (path / name).unlink(missing_ok=True)
        shutil.rmtree(path / OWNER_DIR, ignore_errors=True)
        shutil.rmtree(path / KEY_DIR, ignore_errors=True)
    with Ledger.open(path, vehicle_id=vehicle) as new:
        statement = {
            "what": _STATEMENT_DOMAIN, "at": iso(now), "vehicle": vehicle,
            "previous_key": bytes(old_key.verify_key).hex(), "new_key": bytes(new.verify_key).hex(),
            "heads": heads, "blocks_deleted": blocks,
        }
        signature = old_key.sign(cbor.encode(statement)).signature
        new.writer(AUDIT_STREAM).add_event(now, "wipe", {"statement": statement, "signature": signature.hex()})
        new.seal()
    return WipeResult(blocks, len(heads), kid(old_key.verify_key).hex(), kid(new.verify_key).hex(), statement)


def check_statement(detail: dict[str, Any]) -> bool:
    """Does a `wipe` event's statement carry a valid signature by the previous key it names?"""
    import nacl.exceptions
    import nacl.signing

    statement = detail.get("statement")
    try:
        key = nacl.signing.VerifyKey(bytes.fromhex(statement["previous_key"]))
        key.verify(cbor.encode(dict(statement)), bytes.fromhex(detail["signature"]))
        return True
    except (nacl.exceptions.BadSignatureError, KeyError, TypeError, ValueError):
        return False
