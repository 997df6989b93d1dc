"""`carledger collect export`: the samples a collector store holds, streamed (docs/collector.md, "Export").

One vehicle's stream, or every vehicle's streams over a time range, as JSON
lines or CSV: the columns of docs/exports.md with `vehicle` first. Each
block is checked again against the vehicle's enrolled key before any of its
records is written (what the database says is trusted no further than the
signature), and blocks come from the store in pages: memory stays constant
whatever the fleet's size.
"""

from __future__ import annotations

import csv
from typing import Any, TextIO

from carledger.cli._export import COLUMNS, Clock, Rounding, event_row, json_default, sample_row, to_json
from carledger.collect.store import CollectorStore
from carledger.ledger import Event, MalformedBlock, Sample, VerifyKey, decode_record, open_block

__all__ = ["export_samples", "FORMATS"]

FORMATS = ("jsonl", "csv")


def export_samples(store: CollectorStore, out: TextIO, *, fmt: str = "jsonl", vehicle: str | None = None,
                   stream: str | None = None, t_from: int | None = None, t_to: int | None = None,
                   time_mode: str | None = None, events: bool = False) -> tuple[int, list[str]]:
    """Write the samples (and with `events`, jsonl only, the declared events); returns (samples, problems)."""
    writer = csv.writer(out) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(["vehicle", *COLUMNS])
    clock = Clock(time_mode, machine=fmt == "jsonl")
    rounding = Rounding()
    key: tuple[str, VerifyKey | None] = ("", None)  # the current vehicle's: blocks come vehicle by vehicle
    written, problems = 0, []
    for vid, name, seq, message in store.blocks(vehicle, stream, t_from, t_to):
        if key[0] != vid:
            key = (vid, store.key(vid))
        try:
            block = open_block(message, key[1], allow_bare=True)
        except MalformedBlock as exc:
            problems.append(f"{vid} {name} seq {seq}: {exc.kind}: {exc} (left out)")
            continue
        for raw in block.records:
            rec = decode_record(raw)
            t = getattr(rec, "t", None)
            if t is not None and ((t_from is not None and t < t_from) or (t_to is not None and t > t_to)):
                continue
            row: dict[str, Any]
            if isinstance(rec, Sample):
                row = {"vehicle": vid, **sample_row(name, seq, rec, clock, rounding)}
                if writer is not None:
                    writer.writerow([row[c] for c in ("vehicle", *COLUMNS)])
                else:
                    out.write(to_json(row) + "\n")
                written += 1
            elif events and writer is None and isinstance(rec, Event):
                out.write(to_json({"vehicle": vid, **event_row(name, seq, rec, clock)}, default=json_default) + "\n")
    return written, problems
