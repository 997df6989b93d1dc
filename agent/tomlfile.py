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


def _bracket_depth(text: str) -> int:
    """Net [ and { opened on a line, outside strings and comments."""
    depth, quote = 0, ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
    return depth


class KeyLocator:
    """Maps field paths such as ``stream[2].signals`` to 1-based line numbers.

    Sub-tables of array tables belong to the newest element (``[stream.metrics]``
    after the second ``[[stream]]`` is ``stream[1].metrics``), and the lines of
    a multi-line array are values, not table headers.
    """

    def __init__(self, text: str):
        self._lines: dict[str, int] = {}
        table: list[str] = []
        counts: dict[str, int] = {}
        depth = 0
        for number, line in enumerate(text.splitlines(), start=1):
            if depth > 0:
                depth = max(0, depth + _bracket_depth(line))
                continue
            header = _HEADER.match(line)
            if header:
                parts = _split_key(header.group(2))
                array = header.group(1) == "[["
                resolved: list[str] = []
                for part in parts[:-1] if array else parts:
                    resolved.append(part)
                    count = counts.get(".".join(resolved))
                    if count:
                        resolved[-1] = f"{part}[{count - 1}]"
                if array:
                    base = ".".join([*resolved, parts[-1]])
                    index = counts.get(base, 0)
                    counts[base] = index + 1
                    resolved.append(f"{parts[-1]}[{index}]")
                table = resolved
                self._lines.setdefault(".".join(table), number)
                continue
            key = _KEY.match(line)
            if key:
                self._lines.setdefault(".".join(table + _split_key(key.group(1))), number)
                depth = max(0, _bracket_depth(line[key.end():]))

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
    return parse_toml(name, text)


def parse_toml(name: str, text: str) -> TomlDocument:
    """Parse TOML text that came from `name` (a file, a message); syntax errors as FieldError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise FieldError(name, int(match.group(1)) if match else None, "", f"TOML syntax: {exc}") from None
    return TomlDocument(name, text, data)
