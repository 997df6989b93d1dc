"""DBC signal names to COVESA VSS paths, from mapping files shipped beside the DBCs.

A mapping file is TOML with one table::

    [signals]
    "ABS_SPEED.VehicleSpeed" = "Vehicle.Speed"

Signals without a mapping keep their DBC name ``Message.Signal``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from carledger.tomlfile import FieldError, read_toml

_VSS_PATH = re.compile(r"^Vehicle(\.[A-Za-z0-9_]+)+$")
_SOURCE = re.compile(r"^[^.\s]+\.[^.\s]+$")


class VssMapping:
    """Maps ``Message.Signal`` to a VSS path; unmapped names map to themselves."""

    def __init__(self, names: dict[str, str] | None = None):
        self._names = dict(names or {})

    def name(self, source: str) -> str:
        return self._names.get(source, source)

    def __len__(self) -> int:
        return len(self._names)

    def items(self) -> Iterable[tuple[str, str]]:
        return self._names.items()

    @classmethod
    def load(cls, paths: Iterable[str | Path]) -> "VssMapping":
        """Merge mapping files; a signal mapped twice to different paths is an error."""
        merged: dict[str, str] = {}
        for path in paths:
            doc = read_toml(path)
            unknown = set(doc.data) - {"signals"}
            if unknown:
                raise doc.error(sorted(unknown)[0], "unknown table (a mapping file has only [signals])")
            table = doc.data.get("signals", {})
            if not isinstance(table, dict):
                raise doc.error("signals", "expected a table")
            for source, target in table.items():
                field = f'signals."{source}"'
                if not _SOURCE.match(source):
                    raise doc.error(field, f"{source!r} is not a DBC Message.Signal name")
                if not isinstance(target, str) or not _VSS_PATH.match(target):
                    raise doc.error(field, f"{target!r} is not a VSS path like Vehicle.Speed")
                if merged.get(source, target) != target:
                    raise doc.error(field, f"mapped to {target!r} here but to {merged[source]!r} elsewhere")
                merged[source] = target
        return cls(merged)

    @classmethod
    def beside(cls, dbc_paths: Iterable[str | Path]) -> list[str]:
        """The mapping files shipped next to DBC files (``name.dbc`` -> ``name.vss.toml``)."""
        found = []
        for dbc in dbc_paths:
            candidate = Path(dbc).with_suffix(".vss.toml")
            if candidate.is_file():
                found.append(str(candidate))
        return found


__all__ = ["FieldError", "VssMapping"]
