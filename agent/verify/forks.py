"""Evidence of forks of the car's logs: what `carledger verify` reports (docs/transparency.md, "Forks in verify").

Two sources, each a pair of statements signed by the car's own log key, so
that anyone holding only that key can check them:

- the store's `forks` table: a checkpoint the car signed that this store does
  not hold (shown by a witness or a collector): the store is an older copy;
- a witness's `evidence` table (`--witness DIR`): two checkpoints of one of
  this store's logs that no consistency proof joins (kind `conflict` or
  `bad-proof`), the one it had cosigned and the one offered.

Each note is opened with the stream's log key here; a note that does not
verify is listed as unsigned and is no evidence against the car.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from carledger.ledger import Store
from carledger.ledger.checkpoints import log_verifier, origin_for
from carledger.transparency.checkpoint import CheckpointError, open_checkpoint
from carledger.transparency.note import NoteError

__all__ = ["Fork", "fork_evidence"]


class Fork(NamedTuple):
    stream: str
    source: str  # "store" (its forks table) or the witness directory
    kind: str  # store: "not-held"; witness: "conflict" or "bad-proof"
    detail: str
    received: int
    notes: tuple[str, ...]  # the signed checkpoint notes, as kept
    signed: bool  # every note verifies with the stream's log key: evidence against the car's log

    def to_json(self) -> dict:
        return self._asdict() | {"notes": list(self.notes)}


def _signed(note: bytes, key: bytes, stream: str) -> bool:
    try:
        open_checkpoint(note, [log_verifier(key, stream)], origin_for(key, stream))
        return True
    except (NoteError, CheckpointError, ValueError):
        return False


def _text(note: bytes) -> str:
    return note.decode("utf-8", "replace")


def fork_evidence(store_dir: str | os.PathLike, witness_dirs: tuple[str, ...] = ()) -> list[Fork]:
    """The forks the store keeps and those the given witnesses hold for this store's logs, each checked."""
    from carledger.transparency.witness import parse_request, read_evidence

    out: list[Fork] = []
    with Store.open_readonly(store_dir) as store:
        keys = {name: key for name in store.streams() if (key := store.stream_key(name)) is not None}
        rows = store.forks()
    for stream, source, note, detail, received in rows:
        out.append(Fork(stream, f"store (shown by {source})", "not-held", detail, received, (_text(note),),
                        stream in keys and _signed(note, keys[stream], stream)))
    origins = {origin_for(key, name): name for name, key in keys.items()}
    for directory in witness_dirs:
        for e in read_evidence(directory):
            stream = origins.get(e["origin"])
            if stream is None:
                continue  # another car's log, or a stream this store no longer holds
            try:
                offered = parse_request(e["request"]).checkpoint
            except ValueError:
                offered = e["request"]
            notes = (e["stored"], offered)
            out.append(Fork(stream, f"witness {directory}", e["kind"],
                            "the witness had cosigned the first checkpoint and was offered the second",
                            e["received"], tuple(_text(n) for n in notes),
                            all(_signed(n, keys[stream], stream) for n in notes)))
    return out
