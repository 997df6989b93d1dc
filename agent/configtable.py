"""Typed reads from one table of a TOML configuration, every error at its key's line.

The composition root (`carledger.config`) and each stage's own section
(`carledger.sync.config` for [mqtt], `carledger.obd.config` for [bus.obd] ...)
read their tables through `ConfigTable`. It lives here, below all of them, so
that a stage's configuration never imports the root that wires it.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from carledger.tomlfile import FieldError, TomlDocument

# A name the owner gives (a bus, a vehicle id, a zone): safe in file names, topics and logs.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")


class ConfigError(FieldError):
    """Invalid configuration; str() is FILE:LINE: key: problem."""


def is_number(value: Any) -> bool:
    """An int or a finite float, not a bool: what every numeric setting takes.

    TOML has `nan` and `inf`, and NaN passes every range check (each comparison
    is false), so a test of the range alone lets it through.
    """
    return (type(value) is int or type(value) is float) and math.isfinite(value)


class ConfigTable:
    """One table of the document (`prefix` names it: "agent", "bus[0]", "mqtt.tls"; "" for the top level).

    Unknown keys are refused at once, so a misspelt option never passes
    silently as its default.
    """

    def __init__(self, doc: TomlDocument, table: Any, prefix: str, allowed: set[str]):
        self.doc, self.prefix = doc, prefix
        if not isinstance(table, dict):
            raise self.error("", "expected a table")
        self.table: dict[str, Any] = table
        for key in table:
            if key not in allowed:
                raise self.error(key, f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    def error(self, key: str, message: str) -> ConfigError:
        name = f"{self.prefix}.{key}" if self.prefix and key else key or self.prefix
        base = self.doc.error(name, message)
        return ConfigError(base.file, base.line, base.field, base.message)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, *, required: bool = False) -> Any:
        """The value of `key`, which must be of `kind` (a bool only where bool is named), else `default`."""
        if key not in self.table:
            if required:
                raise self.error(key, "required key is missing")
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        return self.value(key, kinds, _kind_name(kinds), default)

    def value(self, key: str, kinds: tuple[type, ...], what: str, default: Any = None) -> Any:
        """The value of `key` if it has one of `kinds`, else `default`; `what` names the kinds in the error."""
        value = self.table.get(key)
        if value is None:
            return default
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(key, f"expected {what}, got a boolean")
        if not isinstance(value, kinds):
            raise self.error(key, f"expected {what}, got {type(value).__name__} {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(key, f"expected {what}, got {value!r}: not a finite number")
        return value

    def number(self, key: str, default: float | None, *, minimum: float = 0.0) -> float | None:
        value = self.get(key, (int, float), default)
        if value is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        return None if value is None else float(value)

    def seconds(self, key: str, default: float, *, zero: bool = False) -> float:
        value = float(self.value(key, (int, float), "a number of seconds", default))
        if value < 0 or (value == 0 and not zero):
            raise self.error(key, f"must be {'at least 0' if zero else 'more than 0'}, got {value:g}")
        return value

    def strings(self, key: str, *, required: bool = False) -> tuple[str, ...]:
        value = self.get(key, (str, list), [], required=required)
        items = [value] if isinstance(value, str) else value
        for item in items:
            if not isinstance(item, str) or not item:
                raise self.error(key, "expected a non-empty string or a list of them")
        return tuple(items)

    def name(self, key: str) -> str:
        value = self.get(key, str, required=True)
        if not NAME.match(value):
            raise self.error(key, f"{value!r} is not a valid name (letters, digits, _ . -; at most 63)")
        return value

    def resolve(self, value: str) -> str:
        """`value` as an absolute path: relative paths are relative to the configuration file."""
        if Path(value).is_absolute():
            return value
        base = Path(self.doc.path).resolve().parent
        return str((base / Path(value).expanduser()).resolve())

    def readable_file(self, key: str) -> str | None:
        """The file path at `key` (relative to the configuration file), which must be readable."""
        value = self.value(key, (str,), "a file path")
        if value is None:
            return None
        path = Path(value)
        if not path.is_absolute():
            path = Path(self.doc.path).resolve().parent / path
        if not path.is_file() or not os.access(path, os.R_OK):
            raise self.error(key, f"{path}: no such readable file")
        return str(path)


def _kind_name(kinds: tuple[type, ...]) -> str:
    if set(kinds) == {int, float}:
        return "a number"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)
