"""Workers that scale out: one process, every broker, one shared database (docs/collector.md, "Fleet").

A worker runs one CollectorService per broker, each with its own Collector
and its own database connection, all in the same shared-subscription group:
every worker subscribes on every broker, the brokers split each group's
messages between the workers, and an ack goes back through the broker the
block came from (the service that received it publishes it). Only the acks
of held blocks that a periodic gap check links go through every broker: the
block that closed the gap may have come through another broker than the car's.

Cars are spread over the brokers by `broker_for`: rendezvous (highest random
weight) hashing of the vehicle id over the broker list, so adding or removing
one broker moves only the cars that must move (about 1/n of them), not all.
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

from carledger.collect.service import DEFAULT_GROUP, CollectorService
from carledger.sync.config import MqttConfig

__all__ = ["FleetWorker", "broker_for"]


def broker_for(vehicle: str, brokers: Sequence[str]) -> str:
    """The broker a vehicle publishes to: the one whose SHA-256(broker + "\\n" + vehicle) is highest.

    `brokers` are "host:port" strings as the operator lists them; the order
    does not matter, only the set. Any party can compute it from the vehicle id.
    """
    if not brokers:
        raise ValueError("no brokers")
    return max(brokers, key=lambda b: hashlib.sha256(f"{b}\n{vehicle}".encode()).digest())


class FleetWorker:
    """One CollectorService per broker over one store (a PostgreSQL DSN, or a shared collector directory)."""

    def __init__(self, path: str | os.PathLike, brokers: Sequence[MqttConfig], *, group: str | None = DEFAULT_GROUP,
                 gap_wait: float = 30.0, store: str | None = None):
        self.services = []
        for i, cfg in enumerate(brokers):
            if len(brokers) > 1 and cfg.client_id:
                cfg = cfg.with_(client_id=f"{cfg.client_id}-{i}")
            self.services.append(CollectorService(path, cfg, group=group, gap_wait=gap_wait, store=store))
        if len(self.services) > 1:
            for s in self.services:
                s.gap_acks = self._everywhere

    def _everywhere(self, acks: list[tuple[str, bytes]]) -> None:
        """Acks of blocks a gap check linked: through every broker (which one the car uses is not known here)."""
        for s in self.services:
            s.publish(acks)

    def start(self) -> None:
        for s in self.services:
            s.start()

    def stop(self, timeout: float = 10.0) -> None:
        for s in self.services:
            s.stop(timeout)

    @property
    def connected(self) -> bool:
        return all(s.connected.is_set() for s in self.services)

    def stats(self) -> dict[str, int]:
        """The services' counters summed, and the store's network round trips (PostgreSQL; 0 on SQLite)."""
        out: dict[str, int] = {"store_round_trips": 0}
        for s in self.services:
            for name, value in vars(s.collector.stats).items():
                out[name] = out.get(name, 0) + value
            out["store_round_trips"] += getattr(s.collector.registry, "round_trips", 0)
        return out
