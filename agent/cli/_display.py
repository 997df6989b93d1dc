"""Terminal output the commands share: a progress line for long work, plain tables, one line per cause."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Sequence, TextIO


class TtyProgress:
    """`verifying 12000/50000 blocks` on stderr, at most a few times a second, only on a TTY."""

    def __init__(self, verb: str, stream: TextIO = sys.stderr):
        self.verb = verb
        self.stream = stream
        self.last = 0.0
        self.shown = False

    @classmethod
    def if_tty(cls, verb: str) -> "TtyProgress | None":
        return cls(verb) if sys.stderr.isatty() else None

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total and not self.shown:
            return  # small store: done before the first update, nothing to show
        if done < total and now - self.last < 0.25:
            return
        self.last = now
        self.shown = True
        self.stream.write(f"\r{self.verb} {done}/{total} blocks")
        self.stream.flush()

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()


def table(rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Rows (the first is the header) in columns; columns in `right` are right-aligned (numbers)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def clip(text: str, width: int) -> str:
    """`text` cut to `width` characters, with an ellipsis that says it was cut (never silently)."""
    return text if len(text) <= width else text[: width - 1] + "…"


BlockProblem = tuple[str | None, "int | None", str]  # (stream, seq, reason)


def by_cause(problems: Iterable[BlockProblem]) -> list[str]:
    """One line per reason: how many blocks it hit and each stream's first and last seq.

    A wrong key fails every block of a store for the same reason: thousands of
    identical lines would hide the one thing to fix. A reason that hit one
    block keeps its own line, named by stream and seq.
    """
    causes: dict[str, dict[str | None, list[int]]] = {}
    for stream, seq, reason in problems:
        causes.setdefault(reason, {}).setdefault(stream, []).append(-1 if seq is None else seq)
    lines = []
    for reason, where in causes.items():
        n = sum(len(seqs) for seqs in where.values())
        if n == 1:
            ((stream, (seq,)),) = where.items()
            lines.append(f"stream {stream} seq {seq}: {reason}")
            continue
        places = ", ".join(_place(stream, seqs) for stream, seqs in where.items())
        lines.append(f"{reason}: {n} blocks ({places})")
    return lines


def _place(stream: str | None, seqs: list[int]) -> str:
    low, high = min(seqs), max(seqs)
    if len(seqs) == high - low + 1:
        return f"{stream} seq {low}..{high}"
    return f"{stream} {len(seqs)} blocks between seq {low} and {high}"
