"""Load real, messy DBC files: repair only what is broken, or reject in one line.

`load_dbc(path)` costs one cantools parse for a file that loads as it is. When
cantools refuses a file, the text is repaired and parsed again, a bounded number
of times. Each repair targets something cantools cannot load (a 29-bit id
without the extended flag, a name starting with a digit, a `CM_ SG_` comment
naming no signal, a `VAL_` for a signal that does not exist, ...) and adds a
one-line warning `FILE:LINE: problem; what was done`, where LINE is the line in
the original file (repairs never add or remove line breaks, so line numbers
stay those of the file on disk). Anything that cannot be repaired, or that is
part of a message layout (`BO_`, `SG_`), rejects the file with a `DbcError`
whose text is one line, `FILE:LINE: reason`.

See docs/dbc-loading.md for the list of repairs and what each file of the
reference data needs.
"""

from __future__ import annotations

import bisect
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import cantools
import textparser
from cantools.database.can import Database

__all__ = ["DbcError", "LoadedDbc", "check_message_names", "load_dbc"]

#: At most this many parse-and-repair rounds before a file is rejected.
MAX_ROUNDS = 40

_EXTENDED_FLAG = 0x80000000
_MAX_STANDARD = 0x7FF
_MAX_EXTENDED = 0x1FFFFFFF
_INDEPENDENT_SIGNALS = "VECTOR__INDEPENDENT_SIG_MSG"  # cantools skips this pseudo message
_BO_LINE = re.compile(r"^[ \t]*BO_[ \t]+\d+[ \t]+(\w+)", re.M)
_DOUBLE_MAX = sys.float_info.max


class DbcError(Exception):
    """A DBC file that cannot be loaded. `str(e)` is one line: `FILE:LINE: reason`.

    LINE is left out only where no line applies (for example a file that cannot
    be read). The parts are available as `path`, `line` (int or None) and
    `reason`.
    """

    def __init__(self, path: str, line: int | None, reason: str):
        self.path = path
        self.line = line
        self.reason = _one_line(reason)
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {self.reason}")


@dataclass
class LoadedDbc:
    """A loaded DBC: the cantools database and what had to be repaired to get it."""

    path: str
    database: cantools.database.can.Database
    warnings: list[str] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)  # message name -> line of its BO_


def load_dbc(path: str | os.PathLike, *, strict: bool = False) -> LoadedDbc:
    """Load a DBC file, repairing what cantools cannot load; never a traceback.

    Returns a `LoadedDbc` whose `warnings` (one line each, `FILE:LINE: ...`)
    name everything that was dropped or changed. Raises `DbcError` (one line,
    `FILE:LINE: reason`) when the file cannot be read or cannot be repaired.

    With `strict=True` nothing is repaired (the first problem is the error) and
    cantools checks signal layouts strictly (overlaps, signals past the end of
    the message).
    """
    name = os.fsdecode(path)
    warnings: list[tuple[int, str]] = []
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DbcError(name, None, f"cannot read: {exc.strerror or exc}") from None
    text = _decode(name, data, warnings)

    repairer: _Repairer | None = None
    for _ in range(MAX_ROUNDS):
        try:
            database = _parse(text, strict)
        except (RecursionError, MemoryError) as exc:
            raise DbcError(name, None, f"too large or too deeply nested for the parser ({type(exc).__name__})") from None
        except Exception as exc:  # anything cantools raises is diagnosed below
            if repairer is None:
                repairer = _Repairer(name, text)
            else:
                repairer.rescan(text)
            try:
                fix = repairer.diagnose(exc)
            except DbcError:
                raise
            except Exception as bug:  # a bug in the repairs must still not become a traceback
                reason = f"cannot load ({_cantools_reason(exc)}); repair failed: {type(bug).__name__}: {bug}"
                raise DbcError(name, _error_line(exc), reason) from bug
            if strict:
                line, problem, _action = min(fix.notes)
                raise DbcError(name, line, f"{problem} (strict: not repaired)") from None
            text = _apply(text, fix.edits)
            warnings.extend((line, f"{problem}; {action}") for line, problem, action in fix.notes)
            continue
        beyond = _beyond_a_double(database, text)
        if beyond is not None:
            raise DbcError(name, *beyond)
        cut = _cut_off(text)
        if cut is not None:
            line, problem, action = cut
            if strict:
                raise DbcError(name, line, f"{problem} (strict: not repaired)")
            warnings.append((line, f"{problem}; {action}"))
        warnings.sort(key=lambda w: w[0])
        return LoadedDbc(name, database, [f"{name}:{line}: {msg}" for line, msg in warnings], _message_lines(text))
    line = warnings[-1][0] if warnings else None
    raise DbcError(name, line, f"still does not load after {MAX_ROUNDS} rounds of repairs; giving up")


# --------------------------------------------------------------------------- decoding and parsing


def _decode(name: str, data: bytes, warnings: list[tuple[int, str]]) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = exc.start
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DbcError(name, line, f"not text: byte 0x{data[exc.start]:02x} is neither UTF-8 nor cp1252") from None
    line = data.count(b"\n", 0, bad) + 1
    warnings.append((line, f"not valid UTF-8 (byte 0x{data[bad]:02x}); read the file as cp1252"))
    return text


def _parse(text: str, strict: bool) -> Database:
    database = Database(strict=strict)
    database.add_dbc_string(text)
    return database


def _beyond_a_double(database: Database, text: str) -> tuple[int, str] | None:
    """(line, reason) of the first integer signal whose physical values a double cannot hold; None if none.

    raw × scale + offset of such a signal is infinite (a fractional scale) or, with an integral scale,
    an integer that cantools computes exactly and no float arithmetic can take: a metric's sum over it
    raised OverflowError in the running agent. No signal of a real car comes near 1.8e308; this is a
    scale of the kind `1e308` (or one that reads as infinite, `1e999`). It is part of the signal's
    layout, so the file is refused, not repaired. IEEE float signals can carry infinity anyway; the
    agent takes theirs as no reading.
    """
    for message in database.messages:
        for signal in message.signals:
            if signal.is_float:
                continue
            try:
                bound = abs(signal.scale) * (2.0 ** signal.length - 1) + abs(signal.offset)  # the largest raw, either sign
            except OverflowError:  # an integer scale or offset too large for a float
                bound = math.inf
            if bound <= _DOUBLE_MAX:
                continue
            reason = (f"signal '{signal.name}' of message '{message.name}': raw × {_short(signal.scale)} + "
                      f"{_short(signal.offset)} over {signal.length} bits goes beyond what a double holds (1.8e308)")
            return _signal_line(text, message.name, signal.name), reason
    return None


def _short(number: float) -> str:
    """A scale or offset as `1e+308`, not as the 309 digits of the integer cantools made of it."""
    try:
        return f"{number:.6g}"
    except OverflowError:
        return f"a {len(str(abs(number)))}-digit integer"


def _signal_line(text: str, message: str, signal: str) -> int:
    """The line of `signal`'s SG_ in `message` (the message's BO_ line if it cannot be found)."""
    start = _message_lines(text).get(message, 1)
    lines = text.split("\n")
    pattern = re.compile(rf"[ \t]*SG_[ \t]+{re.escape(signal)}\b")
    for number in range(start, len(lines)):  # lines[start] is the line after the BO_ (numbers count from 1)
        if _BO_LINE.match(lines[number]):
            break
        if pattern.match(lines[number]):
            return number + 1
    return start


def _message_lines(text: str) -> dict[str, int]:
    """The line of each message's BO_ (the first, if a name repeats), for errors that name two files."""
    lines: dict[str, int] = {}
    line, pos = 1, 0
    for m in _BO_LINE.finditer(text):
        line += text.count("\n", pos, m.start())
        pos = m.start()
        lines.setdefault(m.group(1), line)
    return lines


def check_message_names(loaded: list[LoadedDbc]) -> None:
    """Refuse DBCs that give one message name two ids: their samples would share one name.

    Samples are named `Message.Signal` (and records keep that name in the
    ledger), so two different messages under one name would interleave in a
    stream without anyone telling them apart. The same name with the same id
    in two files (a shared include) is one message and passes. Raises
    `DbcError` naming both files and lines.
    """
    seen: dict[str, tuple[LoadedDbc, Any]] = {}
    for item in loaded:
        for message in item.database.messages:
            first = seen.setdefault(message.name, (item, message))
            other = first[1]
            if (other.frame_id, other.is_extended_frame) == (message.frame_id, message.is_extended_frame):
                continue
            where = f"{first[0].path}:{first[0].lines.get(message.name, '?')}"
            raise DbcError(
                item.path, item.lines.get(message.name),
                f"message '{message.name}' has id {_frame_label(message)} here and {_frame_label(other)} in {where}; "
                "their samples would share the name: rename the message in one of the files",
            )


def _frame_label(message: Any) -> str:
    return f"0x{message.frame_id:08X} (extended)" if message.is_extended_frame else f"0x{message.frame_id:03X}"


def _cut_off(text: str) -> tuple[int, str, str] | None:
    """A file whose last line is an unfinished BO_ or SG_ line: cantools drops it without a word.

    Anywhere else an unfinished layout line is a syntax error; only at the end
    of the file does the parser take it for nothing, so only the last line is
    looked at (one rfind, whatever the file's size).
    """
    body = text.rstrip()
    start = body.rfind("\n") + 1
    last = body[start:].strip()
    kind = last.split(None, 1)[0] if last else ""
    pattern = _COMPLETE.get(kind)
    if pattern is None or pattern.match(last):
        return None
    line = body.count("\n") + 1
    words = re.findall(r"\w+", last)
    if kind == "BO_":
        named = next((w for w in words[1:] if not w.isdigit()), None)
        what = f"message '{named}'" if named else "a message"
        return line, f"the file ends inside {what} (cut off?)", "the partial message is not loaded"
    owners = _BO_LINE.findall(body, 0, start)
    what = f"signal '{words[1]}'" if len(words) > 1 else "a signal"
    if owners:
        what += f" of message '{owners[-1]}'"
    return line, f"the file ends inside {what} (cut off?)", "the partial signal is not loaded"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _cantools_reason(exc: BaseException) -> str:
    text = _one_line(str(exc)) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _error_line(exc: BaseException) -> int | None:
    offset = getattr(exc, "offset", None)
    text = getattr(exc, "text", None)
    if isinstance(offset, int) and isinstance(text, str):
        return text.count("\n", 0, offset) + 1
    return None


def _apply(text: str, edits: list[tuple[int, int, str]]) -> str:
    """Apply (start, end, replacement) edits; an edit inside an earlier, larger one is skipped."""
    out = []
    pos = 0
    for start, end, replacement in sorted(edits, key=lambda e: (e[0], -(e[1] - e[0]))):
        if start < pos:
            continue
        out.append(text[pos:start])
        out.append(replacement)
        pos = end
    out.append(text[pos:])
    return "".join(out)


# --------------------------------------------------------------------------- a light DBC scanner

# Tokens as cantools sees them, except that a word starting with a digit
# (`2017_5`, which cantools splits into NUMBER WORD) stays one token, and a
# number may start with a decimal point (`.25`, which cantools does not accept).
_TOKEN_RE = re.compile(
    r"""(?P<ws>[ \t\r\n]+)
      | (?P<comment>//[^\n]*)
      | (?P<string>"(?:\\"|[^"])*?")
      | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![A-Za-z0-9_]))
      | (?P<word>[A-Za-z0-9_]+)
      | (?P<punct>.)""",
    re.S | re.X,
)

_KEYWORDS = frozenset(
    "BA_ BA_DEF_ BA_DEF_DEF_ BA_DEF_DEF_REL_ BA_DEF_REL_ BA_DEF_SGTYPE_ BA_REL_ BA_SGTYPE_ BO_ BO_TX_BU_ "
    "BS_ BU_ BU_BO_REL_ BU_EV_REL_ BU_SG_REL_ CAT_ CAT_DEF_ CM_ ENVVAR_DATA_ EV_ EV_DATA_ FILTER NS_ "
    "NS_DESC_ SG_ SG_MUL_VAL_ SGTYPE_ SGTYPE_VAL_ SIG_GROUP_ SIG_TYPE_REF_ SIG_VALTYPE_ SIGTYPE_VALTYPE_ "
    "VAL_ VAL_TABLE_ VERSION".split()
)
# Statements ended by ';' in the grammar.
_SEMI_KINDS = frozenset(
    "CM_ BA_DEF_ BA_DEF_DEF_ BA_ VAL_ VAL_TABLE_ SIG_VALTYPE_ SG_MUL_VAL_ BO_TX_BU_ SIG_GROUP_ EV_ "
    "ENVVAR_DATA_ BA_DEF_REL_ BA_DEF_DEF_REL_ BA_REL_".split()
)
# Statements that can be dropped without changing any message layout.
_DROPPABLE = _SEMI_KINDS | frozenset(
    "BA_DEF_SGTYPE_ BA_SGTYPE_ CAT_ CAT_DEF_ EV_DATA_ FILTER SGTYPE_ SGTYPE_VAL_ SIG_TYPE_REF_ "
    "SIGTYPE_VALTYPE_ BU_BO_REL_ BU_EV_REL_ BU_SG_REL_".split()
)
# Keywords that also appear inside other statements (`CM_ SG_ ...`, `BA_ "x" BO_ ...`).
_INNER_KEYWORDS = frozenset(("BO_", "SG_", "BU_", "EV_"))

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
# What a complete BO_ line and SG_ line look like (checked only after a syntax error).
_COMPLETE = {
    "BO_": re.compile(r"BO_\s+\d+\s+\w+\s*:\s*\d+\s+\w+\s*\Z", re.ASCII),
    "SG_": re.compile(
        rf"SG_\s+\w+(?:\s+\w+)?\s*:\s*\d+\s*\|\s*\d+\s*@\s*\d+\s*[-+]\s*\(\s*{_NUM}\s*,\s*{_NUM}\s*\)"
        rf"\s*\[\s*{_NUM}\s*\|\s*{_NUM}\s*\]\s*\"(?:\\\"|[^\"])*?\"\s*\w+(?:\s*,\s*\w+)*\s*\Z",
        re.ASCII,
    ),
}
_RUNAWAY = re.compile(r"\n[ \t]*(?:" + "|".join(sorted(_KEYWORDS, key=len, reverse=True)) + r")[ \t]")

_KIND_NAMES = {
    "CM_": "comment",
    "BA_": "attribute",
    "BA_DEF_": "attribute definition",
    "BA_DEF_DEF_": "attribute default",
    "BA_REL_": "relation attribute",
    "BA_DEF_REL_": "relation attribute definition",
    "BA_DEF_DEF_REL_": "relation attribute default",
    "VAL_": "value table",
    "VAL_TABLE_": "value table",
    "SIG_VALTYPE_": "signal value type",
    "SG_MUL_VAL_": "multiplexer values",
    "BO_TX_BU_": "message senders",
    "SIG_GROUP_": "signal group",
    "EV_": "environment variable",
    "BO_": "message",
    "SG_": "signal",
    "BU_": "node list",
}


class _Stmt:
    __slots__ = ("kind", "t0", "t1", "parent")

    def __init__(self, kind: str | None, t0: int, t1: int):
        self.kind = kind
        self.t0 = t0
        self.t1 = t1
        self.parent = -1  # for SG_: the index of its BO_ statement


class _Message:
    __slots__ = ("stmt", "raw_id", "name", "signals", "signal_stmts")

    def __init__(self, stmt: int, raw_id: int, name: str):
        self.stmt = stmt
        self.raw_id = raw_id
        self.name = name
        self.signals: list[str] = []
        self.signal_stmts: list[int] = []


class _Scan:
    """Tokens, statements and messages of a DBC text, enough to locate and repair things."""

    def __init__(self, text: str):
        self.text = text
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        kinds: list[str] = []
        vals: list[str] = []
        starts: list[int] = []
        ends: list[int] = []
        first: list[bool] = []
        new_line = True
        for m in _TOKEN_RE.finditer(text):
            kind = m.lastgroup
            if kind == "ws":
                if "\n" in m.group():
                    new_line = True
                continue
            if kind == "comment":
                continue
            kinds.append(kind)  # type: ignore[arg-type]
            vals.append(m.group())
            starts.append(m.start())
            ends.append(m.end())
            first.append(new_line)
            new_line = False
        self.kinds, self.vals, self.starts, self.ends = kinds, vals, starts, ends
        self.stmts = self._statements(first)
        self.stmt_starts = [self.starts[s.t0] for s in self.stmts]
        self.messages: list[_Message] = []
        self.by_id: dict[int, list[_Message]] = {}
        self.by_name: dict[str, _Message] = {}
        self._index_messages()

    # -- structure

    def _statements(self, first: list[bool]) -> list[_Stmt]:
        kinds, vals = self.kinds, self.vals
        n = len(vals)

        def starts_statement(j: int) -> bool:
            return first[j] and kinds[j] == "word" and vals[j] in _KEYWORDS

        stmts: list[_Stmt] = []
        i = 0
        while i < n:
            kind = vals[i] if kinds[i] == "word" and vals[i] in _KEYWORDS else None
            j = i + 1
            if kind == "NS_":
                # NS_ : <any names> up to the first `X :` (normally `BS_:`), as cantools reads it
                if j < n and vals[j] == ":":
                    j += 1
                while j < n and not (j + 1 < n and vals[j + 1] == ":"):
                    j += 1
            elif kind in _SEMI_KINDS:
                # up to its ';' (what follows on the line is another statement, or junk)
                while j < n and vals[j - 1] != ";" and not starts_statement(j):
                    j += 1
            else:
                while j < n and not starts_statement(j):
                    j += 1
            stmt = _Stmt(kind, i, j)
            if stmts and self._continues(stmts[-1], stmt):
                stmts[-1].t1 = j
            else:
                stmts.append(stmt)
            i = j
        parent = -1
        for index, stmt in enumerate(stmts):
            if stmt.kind == "BO_":
                parent = index
            elif stmt.kind == "SG_":
                stmt.parent = parent
            else:
                parent = -1
        return stmts

    def _continues(self, prev: _Stmt, stmt: _Stmt) -> bool:
        """A line starting with BO_/SG_/BU_/EV_ that is the rest of an unterminated CM_ or BA_ statement."""
        if stmt.kind not in _INNER_KEYWORDS or prev.kind not in _SEMI_KINDS or self.vals[prev.t1 - 1] == ";":
            return False
        colon_at = {"BO_": (3,), "SG_": (2, 3), "BU_": (1,), "EV_": (2,)}[stmt.kind]
        return not any(stmt.t0 + k < stmt.t1 and self.vals[stmt.t0 + k] == ":" for k in colon_at)

    def _index_messages(self) -> None:
        vals, kinds = self.vals, self.kinds
        current: _Message | None = None
        for index, stmt in enumerate(self.stmts):
            if stmt.kind == "BO_":
                current = None
                if stmt.t0 + 2 < stmt.t1 and kinds[stmt.t0 + 1] == "number" and vals[stmt.t0 + 1].isdigit():
                    current = _Message(index, int(vals[stmt.t0 + 1]), vals[stmt.t0 + 2])
                    self.messages.append(current)
                    self.by_id.setdefault(current.raw_id, []).append(current)
                    self.by_name.setdefault(current.name, current)
            elif stmt.kind == "SG_":
                if current is not None and stmt.t0 + 1 < stmt.t1:
                    current.signals.append(vals[stmt.t0 + 1])
                    current.signal_stmts.append(index)
            else:
                current = None

    # -- positions

    def line(self, offset: int) -> int:
        return bisect.bisect_right(self.newlines, offset - 1) + 1

    def span(self, index: int) -> tuple[int, int]:
        stmt = self.stmts[index]
        return self.starts[stmt.t0], self.ends[stmt.t1 - 1]

    def message_span(self, message: _Message) -> tuple[int, int]:
        start, end = self.span(message.stmt)
        if message.signal_stmts:
            end = self.span(message.signal_stmts[-1])[1]
        return start, end

    def lines(self, start: int, end: int) -> str:
        a, b = self.line(start), self.line(max(start, end - 1))
        return f"line {a}" if a == b else f"lines {a}-{b}"

    def tok(self, index: int, k: int) -> tuple[str, str] | None:
        """The k-th token of statement `index` as (kind, value), or None."""
        stmt = self.stmts[index]
        j = stmt.t0 + k
        if j >= stmt.t1:
            return None
        return self.kinds[j], self.vals[j]

    def excerpt(self, index: int, limit: int = 60) -> str:
        start, end = self.span(index)
        text = _one_line(self.text[start:end])
        return text if len(text) <= limit else text[: limit - 3] + "..."

    def stmt_at(self, offset: int) -> int:
        return max(0, bisect.bisect_right(self.stmt_starts, offset) - 1)

    def label(self, index: int) -> str:
        """How a statement is named in messages: message 'X', signal 'S' of message 'X', VAL_ statement."""
        stmt = self.stmts[index]
        name = self.tok(index, 2 if stmt.kind == "BO_" else 1)
        if stmt.kind == "BO_":
            return f"message '{name[1]}'" if name and name[0] == "word" else "message definition (BO_)"
        if stmt.kind == "SG_":
            owner = self.tok(stmt.parent, 2) if stmt.parent >= 0 else None
            what = f"signal '{name[1]}'" if name and name[0] == "word" else "signal definition (SG_)"
            return what + (f" of message '{owner[1]}'" if owner and owner[0] == "word" else " outside any message")
        return f"{stmt.kind} statement" if stmt.kind else "text that is not a DBC statement"

    def complete(self, index: int) -> bool:
        """Whether a statement has all its parts (as far as a cheap check can tell)."""
        stmt = self.stmts[index]
        if stmt.kind in _SEMI_KINDS:
            return self.vals[stmt.t1 - 1] == ";"
        pattern = _COMPLETE.get(stmt.kind or "")
        if pattern is None:
            return True
        start, end = self.span(index)
        return pattern.match(self.text, start, end) is not None

    def runaway_string(self, index: int) -> tuple[int, int] | None:
        """A string token of the statement that swallows lines starting with DBC keywords."""
        stmt = self.stmts[index]
        for j in range(stmt.t0, stmt.t1):
            if self.kinds[j] == "string" and _RUNAWAY.search(self.vals[j]):
                return self.starts[j], self.ends[j]
        return None

    def id_ref(self, index: int) -> int | None:
        """The token index of the frame id a non-BO_ statement refers to, if any."""
        stmt = self.stmts[index]
        vals, kinds = self.vals, self.kinds
        t0, t1 = stmt.t0, stmt.t1
        k: int | None = None
        if stmt.kind == "CM_" and t0 + 2 < t1 and vals[t0 + 1] in ("BO_", "SG_"):
            k = 2
        elif stmt.kind == "BA_" and t0 + 3 < t1 and vals[t0 + 2] in ("BO_", "SG_"):
            k = 3
        elif stmt.kind in ("VAL_", "SIG_VALTYPE_", "SG_MUL_VAL_", "BO_TX_BU_", "SIG_GROUP_"):
            k = 1
        elif stmt.kind == "BA_REL_" and t0 + 2 < t1:
            k = {"BU_SG_REL_": 5, "BU_BO_REL_": 4}.get(vals[t0 + 2])
        if k is None or t0 + k >= t1 or kinds[t0 + k] != "number" or not vals[t0 + k].isdigit():
            return None
        return t0 + k

    def message_label(self, raw_id: int) -> str:
        found = self.by_id.get(raw_id)
        return f"message {raw_id} ({found[0].name})" if found else f"message {raw_id}"


# --------------------------------------------------------------------------- repairs


@dataclass
class _Fix:
    edits: list[tuple[int, int, str]] = field(default_factory=list)
    notes: list[tuple[int, str, str]] = field(default_factory=list)  # (line, problem, action)

    def __bool__(self) -> bool:
        return bool(self.edits)

    def drop(self, scan: _Scan, index: int, problem: str, *, excerpt: bool = True) -> None:
        """Drop statement `index` (keeping its line breaks) and note why."""
        start, end = scan.span(index)
        kind = scan.stmts[index].kind or "text"
        action = f"dropped the {_KIND_NAMES.get(kind, kind)} ({scan.lines(start, end)})"
        if excerpt:
            action += f": {scan.excerpt(index)}"
        self.edits.append(_drop(scan.text, start, end))
        self.notes.append((scan.line(start), problem, action))


_RE_FRAME_ID = re.compile(r"(Standard|Extended) frame id 0x([0-9a-fA-F]+) is more than (\d+) bits in message (\S+?)\.?$")
_RE_UNUSED = re.compile(r"unused (VAL_|SIG_VALTYPE_) entries in DBC:")
_RE_MESSAGE_NAME = re.compile(r"""message ['"]?([A-Za-z_][A-Za-z0-9_]*)""")


class _Repairer:
    def __init__(self, name: str, text: str):
        self.name = name
        self.scan = _Scan(text)
        self.applied: set[str] = set()

    def rescan(self, text: str) -> None:
        self.scan = _Scan(text)

    def reject(self, line: int | None, reason: str) -> DbcError:
        return DbcError(self.name, line, reason)

    # -- dispatch

    def diagnose(self, exc: Exception) -> _Fix:
        if isinstance(exc, textparser.Error) and isinstance(getattr(exc, "offset", None), int):
            return self._syntax(exc.offset)
        message = str(exc)
        if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str):
            fix = self._undefined_attribute(exc.args[0])
            if fix:
                return fix
        m = _RE_UNUSED.match(message)
        if m:
            fix = self._unused(m.group(1), message)
            if fix:
                return fix
        m = _RE_FRAME_ID.search(message)
        if m:
            if "frame_ids" not in self.applied:
                self.applied.add("frame_ids")
                fix = self._frame_ids()
                if fix:
                    return fix
            found = self.scan.by_name.get(m.group(4))
            line = self.scan.line(self.scan.span(found.stmt)[0]) if found else None
            raise self.reject(line, _cantools_reason(exc))
        # The parser ran off the end of the text (an NS_ section that never ends, ...).
        if _raised_in(exc, "textparser") and self.scan.stmts:
            index = len(self.scan.stmts) - 1
            kind = self.scan.stmts[index].kind or "text"
            line = self.scan.line(self.scan.span(index)[0])
            raise self.reject(line, f"unexpected end of file in the {kind} statement that starts here")
        # An error after parsing that we have no specific repair for (strict layout
        # checks, a value cantools cannot convert, ...): point at the signal or message
        # it names, else at the statement cantools was reading when it failed.
        line = self._line_of_names(message)
        if line is None:
            index = self._statement_from_traceback(exc)
            if index is not None:
                problem = f"{self.scan.label(index)} cannot be loaded ({_cantools_reason(exc)})"
                if self.scan.stmts[index].kind in _DROPPABLE:
                    fix = _Fix()
                    fix.drop(self.scan, index, problem)
                    return fix
                raise self.reject(self.scan.line(self.scan.span(index)[0]), problem)
        raise self.reject(line, _cantools_reason(exc))

    def _statement_from_traceback(self, exc: BaseException) -> int | None:
        """The statement cantools was loading when it raised, from the token lists in its frames."""
        scan = self.scan
        frames = []
        tb = exc.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        for frame in reversed(frames):  # innermost first
            if not frame.f_globals.get("__name__", "").startswith("cantools"):
                continue
            for value in frame.f_locals.values():
                if not (isinstance(value, list) and value and isinstance(value[0], str) and value[0] in _KEYWORDS):
                    continue
                flat = list(_flatten(value))[:8]
                for index, stmt in enumerate(scan.stmts):
                    if stmt.kind != flat[0]:
                        continue
                    j, end = stmt.t0, min(stmt.t1, stmt.t0 + len(flat))
                    mine = [v[1:-1] if k == "string" else v for k, v in zip(scan.kinds[j:end], scan.vals[j:end])]
                    if mine[: len(flat)] == flat:
                        return index
        return None

    def _line_of_names(self, message: str) -> int | None:
        scan = self.scan
        for candidate in _RE_MESSAGE_NAME.findall(message):
            found = scan.by_name.get(candidate)
            if found is None:
                continue
            words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", message))
            for name, index in zip(found.signals, found.signal_stmts):
                if name in words:
                    return scan.line(scan.span(index)[0])
            return scan.line(scan.span(found.stmt)[0])
        return None

    def _syntax(self, offset: int) -> _Fix:
        scan = self.scan
        fix = _Fix()
        for key, fixer in (
            ("digit_names", self._digit_names),
            ("leading_dot", self._leading_dot_numbers),
            ("comments", self._comments),
            ("semicolons", self._semicolons),
        ):
            if key not in self.applied:
                self.applied.add(key)
                part = fixer()
                fix.edits += part.edits
                fix.notes += part.notes
        if fix:
            return fix
        # Nothing of a known kind: drop the statement the error is in, if that loses no layout.
        if not scan.stmts:
            raise self.reject(1, "no DBC statements found (empty file?)")
        index = scan.stmt_at(offset)
        stmt = scan.stmts[index]
        if index > 0 and offset <= scan.starts[stmt.t0] and not scan.complete(index - 1):
            # The parser stopped at the first token of this statement: the one before is unfinished.
            index -= 1
            problem = f"{scan.label(index)} is incomplete (the parser expected more before line {scan.line(offset)})"
            offset = scan.starts[scan.stmts[index].t0]
        else:
            if offset >= len(scan.text) or offset >= scan.ends[stmt.t1 - 1]:
                near = "end of file"
            else:
                near = repr(_one_line(scan.text[offset : offset + 30].split("\n")[0]) or scan.text[offset])
            problem = f"syntax error in {scan.label(index)} at {near}"
        start = scan.span(index)[0]
        runaway = scan.runaway_string(index)
        if runaway is not None:
            first, last = scan.line(runaway[0]), scan.line(runaway[1] - 1)
            reason = f"unbalanced quote: the string that starts here runs to line {last}, across other statements"
            raise self.reject(first, reason)
        if scan.stmts[index].kind in _DROPPABLE:
            fix.drop(scan, index, problem)
            return fix
        raise self.reject(scan.line(max(offset, start) if offset < len(scan.text) else start), problem)

    # -- grammar-level repairs (each finds every instance in the file at once)

    def _digit_names(self) -> _Fix:
        """`2017_5`, `0_COUNTER`: cantools reads a number then a word. Prefix `_`."""
        scan = self.scan
        fix = _Fix()
        vals, kinds = scan.vals, scan.kinds
        definitions: dict[str, list[tuple[int, str]]] = {}
        references: dict[str, list[int]] = {}
        for index, stmt in enumerate(scan.stmts):
            for j in range(stmt.t0, stmt.t1):
                if kinds[j] != "word" or not vals[j][0].isdigit():
                    continue
                old = vals[j]
                fix.edits.append((scan.starts[j], scan.starts[j], "_"))
                line = scan.line(scan.starts[j])
                k = j - stmt.t0
                if stmt.kind == "BO_" and k == 2:
                    definitions.setdefault(old, []).append((line, f"message name '{old}'"))
                elif stmt.kind == "SG_" and k == 1:
                    owner = scan.tok(stmt.parent, 2) if stmt.parent >= 0 else None
                    where = f" of message '{owner[1]}'" if owner else ""
                    definitions.setdefault(old, []).append((line, f"signal name '{old}'{where}"))
                elif stmt.kind == "BU_":
                    definitions.setdefault(old, []).append((line, f"node name '{old}'"))
                else:
                    references.setdefault(old, []).append(line)
        for old, defs in definitions.items():
            refs = references.pop(old, [])
            for n, (line, what) in enumerate(defs):
                action = f"renamed to '_{old}'"
                if n == 0 and refs:
                    action += f" (and in {len(refs)} statement(s) that refer to it, e.g. line {refs[0]})"
                fix.notes.append((line, f"{what} starts with a digit", action))
        for old, refs in references.items():
            fix.notes.append((refs[0], f"name '{old}' starts with a digit", f"renamed to '_{old}' ({len(refs)} place(s))"))
        return fix

    def _leading_dot_numbers(self) -> _Fix:
        """`(.25,-500)`: cantools needs a digit before the decimal point. Read as 0.25."""
        scan = self.scan
        fix = _Fix()
        by_line: dict[int, list[str]] = {}
        for j, (kind, val) in enumerate(zip(scan.kinds, scan.vals)):
            if kind == "number" and val.lstrip("+-").startswith("."):
                at = scan.starts[j] + (len(val) - len(val.lstrip("+-")))
                fix.edits.append((at, at, "0"))
                by_line.setdefault(scan.line(at), []).append(val)
        for line, values in by_line.items():
            shown = ", ".join(f"'{v}'" for v in values)
            fixed = ", ".join(f"'{v.replace('.', '0.', 1)}'" for v in values)
            fix.notes.append((line, f"number {shown} has no digit before the decimal point", f"read as {fixed}"))
        return fix

    def _comments(self) -> _Fix:
        """`CM_ SG_ <id> "..."` (no signal name) and `CM_ <id> "..."` (no BO_)."""
        scan = self.scan
        fix = _Fix()
        for index, stmt in enumerate(scan.stmts):
            if stmt.kind != "CM_":
                continue
            t1, t2, t3 = scan.tok(index, 1), scan.tok(index, 2), scan.tok(index, 3)
            line = scan.line(scan.span(index)[0])
            if t1 == ("word", "SG_") and t2 and t2[0] == "number" and t3 and t3[0] == "string":
                label = scan.message_label(int(t2[1])) if t2[1].isdigit() else f"message {t2[1]}"
                fix.drop(scan, index, f"signal comment for {label} names no signal")
            elif t1 and t1[0] == "number" and t2 and t2[0] == "string":
                raw = int(t1[1]) if t1[1].isdigit() else None
                if raw is not None and raw in scan.by_id:
                    at = scan.starts[stmt.t0 + 1]
                    fix.edits.append((at, at, "BO_ "))
                    problem = f"comment 'CM_ {raw}' lacks the BO_ keyword"
                    fix.notes.append((line, problem, f"read as a comment on {scan.message_label(raw)}"))
                else:
                    fix.drop(scan, index, f"comment 'CM_ {t1[1]}' lacks the BO_ keyword and no message has that id")
        return fix

    def _semicolons(self) -> _Fix:
        """A statement that needs ';' but ends at the next line's keyword: add the ';'."""
        scan = self.scan
        fix = _Fix()
        for index, stmt in enumerate(scan.stmts):
            if stmt.kind in _SEMI_KINDS and stmt.t1 - stmt.t0 > 1 and ";" not in scan.vals[stmt.t0 : stmt.t1]:
                _start, end = scan.span(index)
                fix.edits.append((end, end, ";"))
                fix.notes.append((scan.line(end - 1), f"{stmt.kind} statement is not terminated by ';'", "added the ';'"))
        return fix

    # -- repairs triggered by cantools' own complaints after parsing

    def _frame_ids(self) -> _Fix:
        """29-bit ids without bit 31 get the flag; ids that fit no CAN frame drop their message."""
        scan = self.scan
        fix = _Fix()
        remap: dict[int, int] = {}
        dropped: dict[int, _Message] = {}
        for message in scan.messages:
            if message.name == _INDEPENDENT_SIGNALS:
                continue
            raw = message.raw_id
            frame_id = raw & ~_EXTENDED_FLAG
            if frame_id > _MAX_EXTENDED or raw > 0xFFFFFFFF:
                dropped[raw] = message
            elif not raw & _EXTENDED_FLAG and frame_id > _MAX_STANDARD:
                remap[raw] = raw | _EXTENDED_FLAG
        if not remap and not dropped:
            return fix
        ref_counts: dict[int, list[int]] = {raw: [] for raw in (*remap, *dropped)}
        for index, stmt in enumerate(scan.stmts):
            if stmt.kind in ("BO_", "SG_"):
                continue
            j = scan.id_ref(index)
            if j is None:
                continue
            raw = int(scan.vals[j])
            if raw in remap:
                fix.edits.append((scan.starts[j], scan.ends[j], str(remap[raw])))
                ref_counts[raw].append(index)
            elif raw in dropped:
                fix.edits.append(_drop(scan.text, *scan.span(index)))
                ref_counts[raw].append(index)
        for message in scan.messages:
            raw = message.raw_id
            start = scan.span(message.stmt)[0]
            line = scan.line(start)
            refs = len(ref_counts.get(raw, ()))
            if raw in remap:
                j = scan.stmts[message.stmt].t0 + 1
                fix.edits.append((scan.starts[j], scan.ends[j], str(remap[raw])))
                problem = (
                    f"message '{message.name}' has id 0x{raw:X} ({raw}), more than 11 bits, "
                    "but not the extended-frame flag (bit 31)"
                )
                action = f"read as extended (29-bit) id 0x{raw:X}, i.e. DBC id {remap[raw]}"
                if refs:
                    action += f" (and in {refs} statement(s) that refer to it)"
                fix.notes.append((line, problem, action))
            elif raw in dropped:
                start, end = scan.message_span(message)
                fix.edits.append(_drop(scan.text, start, end))
                frame_id = raw & ~_EXTENDED_FLAG
                problem = f"message '{message.name}' has id 0x{frame_id:X} ({raw}), which does not fit in 29 bits"
                action = f"dropped the message ({len(message.signals)} signals, {scan.lines(start, end)})"
                if refs:
                    action += f" and {refs} statement(s) that refer to it"
                fix.notes.append((line, problem, action))
        return fix

    def _unused(self, kind: str, message: str) -> _Fix:
        """`VAL_`/`SIG_VALTYPE_` entries for signals that do not exist: drop them."""
        scan = self.scan
        fix = _Fix()
        wanted = set(re.findall(rf"{kind} (\d+) (\S+)", message))
        for index, stmt in enumerate(scan.stmts):
            if stmt.kind != kind:
                continue
            t1, t2 = scan.tok(index, 1), scan.tok(index, 2)
            if not t1 or not t2 or (t1[1], t2[1]) not in wanted:
                continue
            raw, signal = int(t1[1]), t2[1]
            found = scan.by_id.get(raw)
            if not found or found[0].name == _INDEPENDENT_SIGNALS:
                problem = f"{kind} for signal '{signal}' of message {raw}, which does not exist"
            else:
                problem = f"{kind} for signal '{signal}' of {scan.message_label(raw)}, which has no such signal"
                elsewhere = [m for m in scan.messages if signal in m.signals and m.name != _INDEPENDENT_SIGNALS]
                if elsewhere:
                    problem += f" (message {elsewhere[0].raw_id} ({elsewhere[0].name}) has one)"
            fix.drop(scan, index, problem, excerpt=False)
        return fix

    def _undefined_attribute(self, attribute: str) -> _Fix:
        """`BA_ "X" ...` with no `BA_DEF_ ... "X"`: cantools fails with KeyError('X'). Drop those."""
        scan = self.scan
        fix = _Fix()
        quoted = f'"{attribute}"'
        defined = {
            "BA_": any(s.kind == "BA_DEF_" and quoted in scan.vals[s.t0 : s.t1] for s in scan.stmts),
            "BA_REL_": any(s.kind == "BA_DEF_REL_" and quoted in scan.vals[s.t0 : s.t1] for s in scan.stmts),
        }
        for index, stmt in enumerate(scan.stmts):
            if stmt.kind in defined and not defined[stmt.kind] and scan.tok(index, 1) == ("string", quoted):
                definition = "BA_DEF_" if stmt.kind == "BA_" else "BA_DEF_REL_"
                fix.drop(scan, index, f"attribute '{attribute}' is used but never defined ({definition})", excerpt=False)
        return fix


def _flatten(value: object):
    if isinstance(value, list):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def _raised_in(exc: BaseException, module: str) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").split(".")[0] == module:
            return True
        tb = tb.tb_next
    return False


def _drop(text: str, start: int, end: int) -> tuple[int, int, str]:
    """An edit that removes text[start:end] but keeps its line breaks (line numbers stay put)."""
    return start, end, "\n" * text.count("\n", start, end)
