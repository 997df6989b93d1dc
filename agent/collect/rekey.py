"""Re-keying an enrolled vehicle after a change of owner, on the handover its enrolled key signed.

A vehicle's key changes only at `carledger wipe`, and the wipe's statement,
signed by the previous key, names the vehicle and the new key
(docs/owner-state.md, "Change of owner"). The collector takes a new key for
a vehicle id only from that statement, checked against the key it enrolled
itself: whoever can reach the collector's operator or its directory cannot
take over a vehicle's chain without the previous key. The previous owner's
chains are retired, never mixed with the new owner's.
"""

from __future__ import annotations

import os
from typing import Any

from carledger.collect.store import CollectorStore
from carledger.ledger import VerifyKey, kid
from carledger.ledger.keys import enrolment_key
from carledger.owner.wipe import check_statement

__all__ = ["rekey"]


def rekey(registry: CollectorStore, vehicle: str, public_key: Any, handover: Any
          ) -> tuple[VerifyKey, "str | os.PathLike[str] | None"]:
    """Enrol `public_key` for `vehicle` in place of its key; ValueError (why) unless `handover` proves the change.

    Returns the new key and where the previous key's chains went (None when
    that key is already enrolled: running it twice changes nothing). Any
    CollectorStore: the checks here are the same whichever holds the chains.
    """
    enrolled = registry.key(vehicle)
    if enrolled is None:
        raise ValueError(f"vehicle {vehicle!r} is not enrolled: enrol it without --handover")
    new = enrolment_key(public_key)
    if bytes(new) == bytes(enrolled):
        return new, None
    statement = handover.get("statement") if isinstance(handover, dict) else None
    if not isinstance(statement, dict) or not check_statement(handover):
        raise ValueError("the handover does not verify: not a wipe statement signed by the key it names as previous")
    if statement.get("vehicle") != vehicle:
        raise ValueError(f"the handover is for vehicle {str(statement.get('vehicle'))[:64]!r}, not {vehicle!r}")
    if statement.get("previous_key") != bytes(enrolled).hex():
        raise ValueError(f"the handover was signed by another key than the one enrolled for {vehicle!r} "
                         f"(kid {kid(enrolled).hex()}); a collector that missed a change of owner cannot follow it")
    if statement.get("new_key") != bytes(new).hex():
        raise ValueError(f"the handover hands {vehicle!r} to another key than {bytes(new).hex()[:16]}…")
    return new, registry.replace_key(vehicle, new)
