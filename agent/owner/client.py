"""Run an owner request on a store, whether or not the agent is running.

If the store's writer lock is free the agent is stopped, and the CLI does
the work itself: the same `OwnerActions`, then `StreamManager.refresh`, so
the affected streams' chains get the same declared events the agent would
write. If the agent holds the lock, the request goes through the `Spool` and
the agent answers within a fraction of a second.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from carledger.ledger import Ledger, StoreLocked, load_or_create_secret
from carledger.ledger.store import DB_FILE
from carledger.owner.actions import OwnerActions, OwnerError
from carledger.owner.spool import Spool
from carledger.owner.state import OwnerState
from carledger.owner.streams import StreamManager
from carledger.policy.document import KnownSignals
from carledger.policy.engine import EngineSettings

DEFAULT_WAIT = 10.0


def submit(
    store: str | os.PathLike,
    request: dict[str, Any],
    *,
    vehicle: str | None = None,
    known_signals: KnownSignals | None = None,
    wait: float = DEFAULT_WAIT,
    create: bool = False,
) -> dict[str, Any]:
    """Run `request` ({"action": ...}); returns the outcome (JSON-able); raises OwnerError when refused.

    `create` allows making a new store (the agent's configuration gave its
    vehicle id); otherwise a missing store is an error, not a new empty one.
    """
    store = Path(store)
    if not (store / DB_FILE).exists() and not create:
        raise OwnerError(f"{store}: no carledger store here; give -c CONFIG (the agent's configuration) or the right --store")
    try:
        ledger = Ledger.open(store, vehicle_id=vehicle)
    except StoreLocked:
        return _through_agent(store, request, wait)
    with ledger:
        state = OwnerState.load(store)
        actions = OwnerActions(ledger, state, known_signals=known_signals)
        outcome = actions.execute(request)
        if outcome.changed:
            settings = EngineSettings(pseudonym_secret=load_or_create_secret(store))
            StreamManager(ledger, state, settings).refresh(time.time())
        result = outcome.to_json()
        result["agent"] = "stopped"
        return result


def _through_agent(store: Path, request: dict[str, Any], wait: float) -> dict[str, Any]:
    spool = Spool(store)
    request_id = spool.put(request)
    answer = spool.wait(request_id, wait)
    if answer is None:
        if spool.withdraw(request_id):
            raise OwnerError(
                f"the agent holds {store} but did not take the request within {wait:g} s; nothing changed. "
                "Is it stuck? See `journalctl -u carledger` (or stop it and try again)"
            )
        return {"ok": True, "changed": True, "agent": "running",
                "message": "the agent took the request but has not answered yet; check with `carledger audit`"}
    if not answer.get("ok"):
        raise OwnerError(str(answer.get("error") or "the agent refused the request"))
    answer["agent"] = "running"
    return answer
