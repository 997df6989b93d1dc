"""Frames as the agent carries them, and the filter that decides which ones to read.

A frame is a plain tuple ``(t, key, data)``: `t` in float seconds, `key` the
CAN identifier with bit 31 set for 29-bit identifiers (SocketCAN's
CAN_EFF_FLAG), `data` the payload bytes. Sources hand frames on in lists
(batches) so that crossing threads costs once per batch, not per frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

EFF_FLAG = 0x80000000
SFF_MASK = 0x7FF
EFF_MASK = 0x1FFFFFFF

Frame = tuple[float, int, bytes]


def frame_key(can_id: int, extended: bool) -> int:
    return can_id | EFF_FLAG if extended else can_id


@dataclass(frozen=True)
class FrameFilter:
    """The identifiers something downstream needs, as (can_id, mask, extended) triples.

    Handed to python-can as `can_filters` (kernel filters on SocketCAN) and
    applied by the log readers before a frame is even parsed. `None` as a
    filter means "everything"; an empty filter means "nothing".
    """

    rules: tuple[tuple[int, int, bool], ...]

    @classmethod
    def of(cls, rules: Iterable[tuple[int, int, bool]]) -> "FrameFilter":
        return cls(tuple(rules))

    def matches(self, key: int) -> bool:
        extended = bool(key & EFF_FLAG)
        can_id = key & EFF_MASK
        for rule_id, mask, rule_extended in self.rules:
            if rule_extended == extended and (can_id & mask) == (rule_id & mask):
                return True
        return False

    def to_can_filters(self) -> list[dict]:
        return [
            {"can_id": can_id, "can_mask": mask, "extended": extended}
            for can_id, mask, extended in self.rules
        ]
