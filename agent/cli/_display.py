"""Terminal output the commands share: a progress bar for long work, plain tables, one line per cause."""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Iterable, Sequence, TextIO

#: seconds before a bar appears: work done sooner shows nothing at all
PROGRESS_DELAY = 0.5


def progress_bar(desc: str, unit: str, total: float | None = None, stream: TextIO | None = None) -> Any:
    """A tqdm bar on stderr while the work lasts; nothing when stderr is not a terminal (logs, pipes, CI).

    tqdm decides that itself (`disable=None` turns the bar off when the stream
    is not a TTY), so a redirected command's output stays exactly its output.
    """
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=f" {unit}", file=stream or sys.stderr, disable=None, leave=False,
                delay=PROGRESS_DELAY, dynamic_ncols=True)


class PolledProgress:
    """A bar fed from a thread that polls `count()`: for long work whose loop is not the command's own
    (the pipeline's replay, the syncer's drain). No thread at all when the bar is off (not a terminal)."""

    def __init__(self, desc: str, unit: str, count: Callable[[], int], total: int | None = None, interval: float = 0.25):
        self.count = count
        self.interval = interval
        self.bar = progress_bar(desc, unit, total)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, name="progress", daemon=True)

    def start(self) -> "PolledProgress":
        if not self.bar.disable:
            self._thread.start()
        return self

    def _feed(self) -> None:
        while not self._stop.wait(self.interval):
            self.bar.update(self.count() - self.bar.n)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.bar.close()


class TtyProgress:
    """A progress callback `(done, total)` for work counted in blocks (verify, audit, export), drawn by tqdm."""

    def __init__(self, verb: str, stream: TextIO | None = None):
        self.verb = verb
        self.stream = stream
        self.bar: Any = None

    @classmethod
    def if_tty(cls, verb: str) -> "TtyProgress | None":
        return cls(verb) if sys.stderr.isatty() else None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = progress_bar(self.verb, "blocks", total, self.stream)
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def clear(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
