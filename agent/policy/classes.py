"""Signal classes: technical, location, personal.

Every signal has one class. Technical signals (speed, temperatures, pedal
positions, ...) may go to a stream that names them; location and personal
signals only to a stream that also allows their class explicitly
(``allow = ["location"]``).

The default class comes from the signal's VSS branch; the policy's
``[classes]`` table overrides it per pattern (first matching pattern wins):

- location: ``Vehicle.CurrentLocation.*`` and anything under a ``Location``,
  ``Navigation``/``DestinationSet``, ``GNSS`` branch, or ending in
  ``Latitude``/``Longitude``;
- personal (the people in the car): ``Vehicle.Cabin.*``, ``Vehicle.Driver.*``,
  ``Vehicle.Occupant.*`` and seat, belt, airbag and occupancy signals anywhere;
- technical: everything else, including DBC ``Message.Signal`` names that have
  no VSS mapping (a policy can classify those by pattern).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable

TECHNICAL = "technical"
LOCATION = "location"
PERSONAL = "personal"
CLASSES = (TECHNICAL, LOCATION, PERSONAL)

#: Plain-language names, for `policy show`.
DESCRIPTIONS = {
    TECHNICAL: "technical signals (how the car runs)",
    LOCATION: "location signals (where the car is)",
    PERSONAL: "personal signals (the people in the car: cabin, driver, occupants, seats, belts, airbags)",
}

_LOCATION_BRANCHES = frozenset({"CurrentLocation", "Location", "Navigation", "DestinationSet", "GNSS", "GPS"})
_LOCATION_LEAVES = frozenset({"Latitude", "Longitude"})
_PERSONAL_TOP = frozenset({"Cabin", "Driver", "Occupant"})
_PERSONAL_BRANCHES = frozenset({"Seat", "Occupant", "Driver", "Airbag", "SeatBelt"})
_PERSONAL_LEAVES = frozenset({"IsBelted", "IsOccupied"})


def default_class(name: str) -> str:
    """The class a signal has unless the policy says otherwise, from its VSS path.

    Works on patterns too (``Vehicle.Cabin.*`` is personal); a name outside the
    ``Vehicle.`` tree (a DBC ``Message.Signal``) is technical.
    """
    parts = name.split(".")
    if len(parts) < 2 or parts[0] != "Vehicle":
        return TECHNICAL
    if parts[-1] in _LOCATION_LEAVES or any(p in _LOCATION_BRANCHES for p in parts[1:]):
        return LOCATION
    if (
        parts[1] in _PERSONAL_TOP
        or parts[-1] in _PERSONAL_LEAVES
        or any(p in _PERSONAL_BRANCHES for p in parts[1:])
    ):
        return PERSONAL
    return TECHNICAL


class Classifier:
    """The class of a signal: the policy's overrides (first match wins), else the default."""

    def __init__(self, overrides: Iterable[tuple[str, str]] = ()):
        self.overrides = tuple(overrides)

    def override(self, name: str, source: str | None = None) -> str | None:
        for pattern, cls in self.overrides:
            if fnmatchcase(name, pattern) or (source is not None and fnmatchcase(source, pattern)):
                return cls
        return None

    def classify(self, name: str, source: str | None = None) -> str:
        """`name` is the VSS path (or the DBC name when unmapped); `source` the DBC Message.Signal."""
        return self.override(name, source) or default_class(name)


__all__ = ["CLASSES", "DESCRIPTIONS", "LOCATION", "PERSONAL", "TECHNICAL", "Classifier", "default_class"]
