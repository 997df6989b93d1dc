"""What a collector directory holds: vehicles, streams and their heads, blocks waiting, problems.

Read-only: safe while collectors run (`carledger collect status`). Works on
any CollectorStore: a directory or a PostgreSQL DSN.
"""

from __future__ import annotations

import os

from carledger.collect.store import CollectorStore, open_store
from carledger.ledger import kid

__all__ = ["collector_state"]


def collector_state(path: str | os.PathLike | CollectorStore) -> dict:
    """{"vehicles": {vehicle: {"kid", "enrolled", "streams": {stream: {...}}}}, "problems": [...]}."""
    registry = path if isinstance(path, CollectorStore) else open_store(path)
    try:
        counters = registry.counters()
        waiting = {(v, s): (low, high, n) for v, s, low, high, _t, n in registry.waiting()}
        vehicles = {}
        for vehicle, public_key, enrolled in registry.vehicles():
            streams: dict[str, dict] = registry.streams(vehicle)
            for (v, name), (accepted, duplicates, last) in counters.items():
                if v == vehicle:
                    entry = streams.setdefault(name, {"blocks": 0, "records": 0, "first_seq": None, "head_seq": None, "head": None})
                    entry.update(duplicates=duplicates, last_received=last)
            for (v, name), (low, high, n) in waiting.items():
                if v == vehicle:
                    entry = streams.setdefault(name, {"blocks": 0, "records": 0, "first_seq": None, "head_seq": None, "head": None})
                    entry["waiting"] = {"blocks": n, "first_seq": low, "last_seq": high}
            vehicles[vehicle] = {"kid": kid(public_key).hex(), "enrolled": enrolled, "streams": dict(sorted(streams.items()))}
        return {"vehicles": vehicles, "problems": list(registry.problems())}
    finally:
        if registry is not path:
            registry.close()
