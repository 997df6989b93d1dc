"""What a collector directory holds: vehicles, streams and their heads, blocks waiting, problems.

Read-only: safe while collectors run (`carledger collect status`).
"""

from __future__ import annotations

import os

from carledger.collect.registry import Registry, VEHICLES_DIR
from carledger.ledger import Store, StoreError, kid

__all__ = ["collector_state"]


def collector_state(path: str | os.PathLike) -> dict:
    """{"vehicles": {vehicle: {"kid", "enrolled", "streams": {stream: {...}}}}, "problems": [...]}."""
    registry = Registry(path)
    try:
        counters = registry.counters()
        waiting = {(v, s): (low, high, n) for v, s, low, high, _t, n in registry.waiting()}
        vehicles = {}
        for vehicle, public_key, enrolled in registry.vehicles():
            streams: dict[str, dict] = {}
            try:
                store = Store.open_readonly(registry.path / VEHICLES_DIR / vehicle)
            except StoreError:
                store = None
            if store is not None:
                try:
                    heads = store.heads()
                    for name, blocks, records, first, last, *_ in store.summaries():
                        head = heads.get(name, (None, None))
                        streams[name] = {
                            "blocks": blocks,
                            "records": records or 0,
                            "first_seq": first,
                            "head_seq": head[0],
                            "head": head[1].hex() if isinstance(head[1], bytes) else None,
                        }
                finally:
                    store.close()
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
        registry.close()
