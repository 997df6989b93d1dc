"""Terminal output the commands share: a progress line for long work, and plain tables."""

from __future__ import annotations

import sys
import time
from typing import Sequence, TextIO


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
