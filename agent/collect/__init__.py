"""The collector: receives blocks over MQTT, verifies them against enrolled vehicle keys, stores and acks.

Layout and behaviour: docs/collector.md. The store is a collector directory
(SQLite) or a PostgreSQL database (`carledger.collect.pgstore`, psycopg
imported only then). `carledger collect` is its command.
"""

from carledger.collect.collector import OVERFLOW, REPLAY, UNKNOWN_VEHICLE, Collector, CollectorStats
from carledger.collect.registry import Registry
from carledger.collect.service import DEFAULT_GROUP, CollectorService, subscription
from carledger.collect.state import collector_state
from carledger.collect.store import CollectorStore, StoreUnavailable, open_store

__all__ = [
    "Collector",
    "CollectorStats",
    "CollectorService",
    "Registry",
    "CollectorStore",
    "StoreUnavailable",
    "open_store",
    "collector_state",
    "subscription",
    "DEFAULT_GROUP",
    "OVERFLOW",
    "REPLAY",
    "UNKNOWN_VEHICLE",
]
