"""MQTT topic names of the contract (DESIGN.md §6): carledger/v1/<vehicle>/<stream>/{block,ack}, status, policy."""

from __future__ import annotations

from typing import NamedTuple

from carledger.ledger import valid_stream_name

__all__ = ["PREFIX", "Topic", "block", "ack", "status", "policy", "parse", "valid_vehicle_id"]

PREFIX = "carledger/v1"
BLOCK, ACK, STATUS, POLICY = "block", "ack", "status", "policy"


def valid_vehicle_id(vid: object) -> bool:
    """A vehicle id is one topic level: the same alphabet as a stream name."""
    return valid_stream_name(vid)


def block(vehicle: str, stream: str) -> str:
    return f"{PREFIX}/{vehicle}/{stream}/{BLOCK}"


def ack(vehicle: str, stream: str) -> str:
    return f"{PREFIX}/{vehicle}/{stream}/{ACK}"


def status(vehicle: str) -> str:
    return f"{PREFIX}/{vehicle}/{STATUS}"


def policy(vehicle: str) -> str:
    return f"{PREFIX}/{vehicle}/{POLICY}"


class Topic(NamedTuple):
    vehicle: str
    stream: str | None  # None for status and policy
    kind: str  # block, ack, status or policy


def parse(topic: str) -> Topic | None:
    """The parts of one of our topics, None for anything else (including invalid names)."""
    parts = topic.split("/")
    if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != PREFIX or not valid_vehicle_id(parts[2]):
        return None
    if len(parts) == 4 and parts[3] in (STATUS, POLICY):
        return Topic(parts[2], None, parts[3])
    if len(parts) == 5 and parts[4] in (BLOCK, ACK) and valid_stream_name(parts[3]):
        return Topic(parts[2], parts[3], parts[4])
    return None
