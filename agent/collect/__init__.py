"""The collector: receives blocks over MQTT, verifies them against enrolled vehicle keys, stores and acks.

Layout and behaviour: docs/collector.md. `carledger collect` is its command.
"""

from carledger.collect.collector import OVERFLOW, REPLAY, UNKNOWN_VEHICLE, Collector, CollectorStats
from carledger.collect.registry import Registry
from carledger.collect.service import DEFAULT_GROUP, CollectorService, subscription
from carledger.collect.state import collector_state

__all__ = [
    "Collector",
    "CollectorStats",
    "CollectorService",
    "Registry",
    "collector_state",
    "subscription",
    "DEFAULT_GROUP",
    "OVERFLOW",
    "REPLAY",
    "UNKNOWN_VEHICLE",
]
