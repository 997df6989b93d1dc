"""Which extractor decodes a frame: exact keys, and J1939 by PGN.

`DecodeTable(databases, wanted)` compiles one `MessageExtractor` per message
that has a wanted signal (only the wanted signals, plus the multiplexers they
need internally) and answers `lookup(key)` for frame keys (`frame_id`, with
bit 31 set for 29-bit identifiers, as in docs/ARCHITECTURE.md "Frames").

J1939: for messages of a database whose `ProtocolType` attribute is "J1939",
or whose `VFrameFormat` is J1939PG (cantools' `message.protocol == "j1939"`),
or every 29-bit message when `j1939=True`, a frame matches by parameter group
number: priority and source address are ignored, and so is the destination
address of PDU1 formats (PF < 240). The first lookup of a key resolves it (an
exact key wins over a PGN match); every later lookup of that key is one dict
get.

`filters()` gives (can_id, can_mask, extended) triples covering exactly the
compiled messages, for python-can `can_filters` (see `can_filters()`) and
SocketCAN CAN_RAW_FILTER.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from cantools.j1939 import frame_id_unpack, pgn_from_frame_id

from .extract import MessageExtractor, compile_message

__all__ = ["DecodeTable", "EFF_FLAG"]

_log = logging.getLogger(__name__)

EFF_FLAG = 0x80000000  #: bit 31 of a key: 29-bit identifier (SocketCAN CAN_EFF_FLAG)
_SFF_MASK = 0x7FF
_EFF_MASK = 0x1FFFFFFF
_PGN_MASK_PDU2 = 0x03FFFF00  # reserved (EDP), data page, PF, PS
_PGN_MASK_PDU1 = 0x03FF0000  # PS is the destination address: ignored
_MAX_CACHED_MISSES = 4096  # keys nobody wants are cached only up to this many
_MISSING = object()


def _is_j1939_database(db: Any) -> bool:
    dbc = getattr(db, "dbc", None)
    attributes = getattr(dbc, "attributes", None) or {}
    attr = attributes.get("ProtocolType")
    value = getattr(attr, "value", attr)
    return isinstance(value, str) and value.strip().upper() == "J1939"


def _pgn_mask(frame_id: int) -> int:
    return _PGN_MASK_PDU1 if frame_id_unpack(frame_id).pdu_format < 240 else _PGN_MASK_PDU2


class DecodeTable:
    """Extractors for the wanted signals of a set of databases, by frame key.

    `databases`: cantools databases, first has priority; an item may also be a
    `carledger.decode.LoadedDbc` (anything with `.database`), whose `.path`
    then names it in warnings.
    `wanted("Message.Signal") -> bool`: which signals to compile (None: all).
    `j1939`: None = per database/message as the DBC says; True = every 29-bit
    message matches by PGN; False = exact keys only.
    """

    def __init__(
        self,
        databases: Sequence[Any],
        wanted: Callable[[str], bool] | None = None,
        *,
        j1939: bool | None = None,
    ) -> None:
        self._exact: dict[int, MessageExtractor] = {}
        self._pgn: dict[int, MessageExtractor] = {}
        self._cache: dict[int, MessageExtractor | None] = {}
        self._misses = 0
        self._filters: list[tuple[int, int, bool]] = []
        self._signals: list[str] = []
        origin: dict[int, str] = {}  # key or PGN -> "Message (source)" for warnings
        pgn_origin: dict[int, str] = {}

        for index, item in enumerate(databases):
            db = getattr(item, "database", item)
            source = str(getattr(item, "path", "") or f"database #{index}")
            db_is_j1939 = _is_j1939_database(db)
            for message in db.messages:
                if getattr(message, "is_container", False):
                    continue
                names = [
                    s.name
                    for s in message.signals
                    if wanted is None or wanted(f"{message.name}.{s.name}")
                ]
                if not names:
                    continue
                extended = bool(message.is_extended_frame)
                frame_id = message.frame_id
                key = frame_id | EFF_FLAG if extended else frame_id
                here = f"{message.name} ({source})"
                if key in self._exact:
                    _log.warning(
                        "frame id 0x%X: %s is also defined by %s, which is used",
                        frame_id, here, origin[key],
                    )
                    continue
                try:
                    extractor = compile_message(message, names)
                except Exception as exc:  # an unsupported layout must not stop the rest
                    _log.warning("%s: not decoded: %s", here, exc)
                    continue
                self._exact[key] = extractor
                origin[key] = here
                self._signals += [f"{message.name}.{n}" for n in names]

                by_pgn = extended and (
                    j1939 if j1939 is not None
                    else db_is_j1939 or getattr(message, "protocol", None) == "j1939"
                )
                if by_pgn:
                    pgn = pgn_from_frame_id(frame_id)
                    mask = _pgn_mask(frame_id)
                    if pgn in self._pgn:
                        _log.warning(
                            "PGN %d (0x%05X): %s has the PGN of %s; frames of this PGN"
                            " from other addresses use %s",
                            pgn, pgn, here, pgn_origin[pgn], pgn_origin[pgn],
                        )
                    else:
                        self._pgn[pgn] = extractor
                        pgn_origin[pgn] = here
                    entry = (frame_id & mask, mask, True)
                else:
                    entry = (frame_id, _EFF_MASK if extended else _SFF_MASK, extended)
                if entry not in self._filters:
                    self._filters.append(entry)
        self._cache.update(self._exact)

    def lookup(self, key: int) -> MessageExtractor | None:
        """The extractor for a frame key, or None when no compiled message matches."""
        ext = self._cache.get(key, _MISSING)
        if ext is _MISSING:
            ext = self._resolve(key)
        return ext  # type: ignore[return-value]

    def _resolve(self, key: int) -> MessageExtractor | None:
        ext = self._exact.get(key)
        if ext is None and key & EFF_FLAG and self._pgn:
            ext = self._pgn.get(pgn_from_frame_id(key & _EFF_MASK))
        if ext is not None:
            self._cache[key] = ext
        elif self._misses < _MAX_CACHED_MISSES:
            self._misses += 1
            self._cache[key] = None
        return ext

    def matches_by_pgn(self) -> bool:
        """Does any compiled message match J1939 frames by PGN?"""
        return bool(self._pgn)

    def keys(self) -> list[int]:
        """The exact keys of the compiled messages (bit 31 set for 29-bit ids)."""
        return list(self._exact)

    def signals(self) -> list[str]:
        """Every compiled "Message.Signal", in table order."""
        return list(self._signals)

    def filters(self) -> list[tuple[int, int, bool]]:
        """(can_id, can_mask, extended) covering exactly the compiled messages.

        Exact messages: mask 0x7FF or 0x1FFFFFFF. J1939 messages: the PGN bits
        only (0x03FFFF00, or 0x03FF0000 for PDU1 formats), any priority and
        source address.
        """
        return list(self._filters)

    def can_filters(self) -> list[dict[str, Any]]:
        """`filters()` in python-can's `can_filters` form."""
        return [
            {"can_id": can_id, "can_mask": mask, "extended": extended}
            for can_id, mask, extended in self._filters
        ]

    def __len__(self) -> int:
        return len(self._exact)

    def __repr__(self) -> str:
        return (
            f"DecodeTable({len(self._exact)} messages, {len(self._signals)} signals,"
            f" {len(self._pgn)} by PGN)"
        )
