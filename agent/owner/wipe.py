"""Wipe for a change of owner: delete the previous owner's data, rotate the keys, record that it happened.

Everything the store holds is about the previous owner (where they drove,
how, with whom), so all of it goes: every block, the policy and consents,
the pseudonym secret (new pseudonyms cannot be linked to the old ones). The
vehicle key is replaced, and the old key signs one last statement, kept as
the first record of the new ledger's `audit` stream: when the wipe happened,
which key takes over, and the head of every chain that ended. A recipient
holding the old chains can check with the old key that they ended there and
why, and that the new key is the same car's.

The vehicle id stays: it names the car (the VIN), not its owner, and the
agent's configuration, the car's broker certificate (CN) and the broker's
ACL are bound to it. What ties data to an owner goes: the key, and the
pseudonym secret. The old owner's enrolments go with STORE/keys/ (the owner
key for remote updates, `owner.pub`, and the collector keys it trusted); the
new owner enrols their own. A collector that knew the previous key re-keys
the vehicle only with the handover (`handover`: the statement above and the
previous key's signature), and keeps the old chains apart
(docs/owner-state.md, "Change of owner").
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carledger.console import CONSOLE_DIR
from carledger.ledger import Ledger, Store, cbor
from carledger.ledger.block import Event, decode_record
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
        shutil.rmtree(path / CONSOLE_DIR, ignore_errors=True)  # a pending pairing code, the console's TLS key
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


def handover(store: str | os.PathLike) -> dict[str, Any] | None:
    """The `wipe` event's detail ({"statement", "signature"}) of a wiped store; None for a store never wiped.

    It is the first record of the audit stream (written by `wipe` above, and
    neither retention nor eviction ever drops the audit). Read from the
    store as it is: the collector trusts it only after `check_statement`
    verified it with the key the collector itself enrolled.
    """
    with Store.open_readonly(store) as s:
        first = next(s.iter_blocks(AUDIT_STREAM, batch=1), None)
        records = s.records(first) if first is not None else []
    record = decode_record(records[0]) if records else None
    if isinstance(record, Event) and record.kind == "wipe":
        return dict(record.detail)
    return None


def previous_head(store: str | os.PathLike, stream: str, seq: int, digest: bytes) -> bool:
    """Is (seq, digest) where `stream` of the previous owner ended, by this store's wipe statement?

    The broker keeps the collector's last ack of that chain (retained), and
    hands it to the car when it subscribes after the wipe. The sync takes
    this to ignore that ack quietly instead of reporting a mismatch. Trusting
    the statement cannot lose data: at worst an ack is ignored, and an
    ignored ack marks nothing acked.
    """
    detail = handover(store)
    heads = (detail or {}).get("statement", {}).get("heads", {})
    return heads.get(stream) == [seq, digest.hex()]


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
