"""TOML documents whose problems can be reported as FILE:LINE: field: message.

`tomllib` gives values but no positions. Owners edit these files by hand, so
every error must point at a line; `KeyLocator` recovers the line of a dotted
key path (``bus[1].bitrate``) from the text with a light scan of table headers
and ``key =`` lines. It is only used on the error path.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class FieldError(Exception):
    """One problem at one field of one file, printed as FILE:LINE: field: message."""

    def __init__(self, file: str, line: int | None, field: str, message: str):
        self.file, self.line, self.field, self.message = file, line, field, message
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.\-"' ]+?)\s*=""")


def _split_key(key: str) -> list[str]:
    parts, buf, quote = [], "", ""
    for ch in key:
        if quote:
            if ch == quote:
                quote = ""
            else:
                buf += ch
        elif ch in "\"'":
            quote = ch
        elif ch == ".":
            parts.append(buf.strip())
            buf = ""
        else:
            buf += ch
    parts.append(buf.strip())
    return parts


class KeyLocator:
    """Maps field paths such as ``stream[2].signals`` to 1-based line numbers."""

    def __init__(self, text: str):
        self._lines: dict[str, int] = {}
        table: list[str] = []
        counts: dict[str, int] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header:
                parts = _split_key(header.group(2))
                if header.group(1) == "[[":
                    base = ".".join(parts)
                    index = counts.get(base, 0)
                    counts[base] = index + 1
                    table = parts[:-1] + [f"{parts[-1]}[{index}]"]
                else:
                    table = parts
                self._lines.setdefault(".".join(table), number)
                continue
            key = _KEY.match(line)
            if key:
                path = ".".join(table + _split_key(key.group(1)))
                self._lines.setdefault(path, number)

    def line(self, field: str) -> int | None:
        """The line of `field`, or of its nearest enclosing table."""
        path = field
        while path:
            if path in self._lines:
                return self._lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return None


@dataclass
class TomlDocument:
    path: str
    text: str
    data: dict[str, Any]

    def error(self, field: str, message: str) -> FieldError:
        return FieldError(self.path, KeyLocator(self.text).line(field), field, message)


def read_toml(path: str | Path) -> TomlDocument:
    """Read and parse a TOML file; syntax errors become a FieldError with the line."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FieldError(name, None, "", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FieldError(name, None, "", f"cannot read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise FieldError(name, int(match.group(1)) if match else None, "", f"TOML syntax: {exc}") from None
    return TomlDocument(name, text, data)
