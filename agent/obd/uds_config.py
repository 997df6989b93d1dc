"""UDS settings of a CAN bus: its `[bus.uds]` table (the TOML shape is in docs/uds.md).

`pairs` are the (request, response) identifiers of the ECUs beyond the
standard OBD ones (0x7E0-0x7E7 / 0x7E8-0x7EF and 29-bit 0x18DAxxF1 /
0x18DAF1xx, which need no entry): an identifier above 0x7FF is 29-bit.
`poll = true` lets the agent send ReadDataByIdentifier requests for the DIDs
the owner's policy takes; without it the bus is only listened to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from carledger.configtable import ConfigTable
from carledger.obd.config import polling_limits
from carledger.sources.frame import EFF_FLAG
from carledger.tomlfile import TomlDocument

__all__ = ["UdsConfig", "uds_config_from_table"]

_KEYS = {"pairs", "id_bits", "poll", "max_rate", "timeout", "pending_timeout", "backoff", "silent_after", "interval"}


@dataclass(frozen=True)
class UdsConfig:
    """pairs: (request key, response key), bit 31 set for 29-bit. interval: seconds between reads of a
    DID when the stream that takes it names no interval. The rest as for OBD polling (docs/obd.md)."""

    pairs: tuple[tuple[int, int], ...] = ()
    id_bits: int = 11  # the standard identifiers polled: 0x7E0-0x7EF (11) or 0x18DA.... (29)
    poll: bool = False
    max_rate: float = 10.0
    timeout: float = 0.2
    pending_timeout: float = 5.0
    backoff: tuple[float, float] = (1.0, 30.0)
    silent_after: int = 3
    interval: float = 1.0

    def request_for(self, response: int) -> int | None:
        """The request key of the ECU answering on `response`: a configured pair, else the standard one."""
        for request, answer in self.pairs:
            if answer == response:
                return request
        if response & EFF_FLAG:
            if response & 0x1FFFFF00 == 0x18DAF100:
                return EFF_FLAG | 0x18DA00F1 | (response & 0xFF) << 8
            return None
        return response - 8 if 0x7E8 <= response <= 0x7EF else None


def _key(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0x1FFFFFFF:
        return None
    return value | EFF_FLAG if value > 0x7FF else value


def uds_config_from_table(doc: TomlDocument, table: Any, prefix: str) -> UdsConfig:
    """`[bus.uds]`; `prefix` names it in errors (``bus[0].uds``)."""
    fields = ConfigTable(doc, table, prefix, _KEYS)
    pairs = []
    for i, pair in enumerate(fields.value("pairs", (list,), "a list of [request, response] identifiers", [])):
        keys = [_key(v) for v in pair] if isinstance(pair, list) and len(pair) == 2 else [None]
        if None in keys or (keys[0] & EFF_FLAG) != (keys[1] & EFF_FLAG) or keys[0] == keys[1]:
            raise fields.error(f"pairs[{i}]", f"expected [request, response], two different CAN identifiers of the same"
                                              f" width (above 0x7FF is 29-bit), got {pair!r}")
        pairs.append((keys[0], keys[1]))
    max_rate, backoff, silent_after = polling_limits(fields)
    id_bits = fields.value("id_bits", (int,), "11 or 29", 11)
    if id_bits not in (11, 29):
        raise fields.error("id_bits", f"expected 11 or 29, got {id_bits!r}")
    return UdsConfig(
        pairs=tuple(pairs),
        id_bits=id_bits,
        poll=fields.value("poll", (bool,), "true or false", False),
        max_rate=max_rate,
        timeout=fields.seconds("timeout", 0.2),
        pending_timeout=fields.seconds("pending_timeout", 5.0),
        backoff=backoff,
        silent_after=silent_after,
        interval=fields.seconds("interval", 1.0),
    )
