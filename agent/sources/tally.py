"""What a recorded log held, counted while it is read: for the run summary, not for the ledger.

The readers drop unwanted frames before parsing them, so what the pipeline
sees says nothing about the log. A tally counts every frame record of the
file, those on the channels read, and those per identifier (data frames on
the channels read), so the summary can say how many the DBC matched.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FrameTally:
    in_log: int = 0  # frame records in the file (error and remote frames included)
    on_channels: int = 0  # of those, on the channels read (all of them when no channel is chosen)
    by_key: dict[int, int] = field(default_factory=dict)  # data frames on the channels read, per frame key

    def add_keys(self, counts: dict[int, int]) -> None:
        by_key = self.by_key
        for key, n in counts.items():
            by_key[key] = by_key.get(key, 0) + n
