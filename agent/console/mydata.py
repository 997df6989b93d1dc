"""'My data': everything the car holds, as one ZIP streamed to the connection (docs/console.md).

Streaming with constant memory: zipfile writes each member through a
deflate stream into an unseekable sink (sizes in data descriptors), each
stream is read block by block, as `carledger log export` reads it, and what
the sink holds is handed to the server after each block: the archive is a
generator of chunks, which the server sends as they come.
The archive holds the data and what is needed to read and check it:

- `streams/NAME.jsonl`: samples and declared events, the `log export --events`
  format (docs/exports.md), from blocks whose signature and Merkle root were checked;
- `streams/NAME.cose`: the same blocks as signed (`log export --format cose`),
  for docs/third_party_verify.py with the stream's key in `vehicle.json`;
- `vehicle.json`: the vehicle id, its Ed25519 public key, the time of the export,
  and each stream's signing key (a recipient's pseudonymous stream has its own);
- `key-proof.json`: the key statements by which the vehicle key certifies each
  recipient's own key, as `carledger remote identity --prove` writes them
  (`carledger remote check-proof key-proof.json` checks them);
- `policy.toml` and `policies/`: the policy in force and every version applied
  (the blocks name them by digest);
- `signals.json`: each signal's VSS name, DBC message and signal, unit and
  description (when the console knows the car's DBCs: `-c`).

The audit is there as the `audit` stream itself (what `carledger audit`
reads); its --json report is not, since it is built whole in memory.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from contextlib import contextmanager
from typing import Any, BinaryIO, Iterator

from carledger.cli._store import Target

README = """carledger: my data
Everything this car's carledger store held when it was exported, with what is
needed to read and check it. Formats: docs/exports.md (jsonl), docs/block-format.md
(cose), docs/console.md ("My data"). Verify a stream without carledger:
    python third_party_verify.py PUBLIC_KEY_HEX streams/NAME.cose
with stream_keys[NAME] from vehicle.json: the vehicle's public_key for the
car's own streams; a recipient's pseudonymous stream is signed with a key of
that recipient's own, which the vehicle key certifies: key-proof.json holds those
certificates (carledger remote check-proof key-proof.json; docs/ledger-keys.md).
Times in jsonl are seconds since 1970 (UTC).
"""


class _Sink(io.RawIOBase):
    """Where zipfile writes: bytes kept until the next `take`; unseekable, so zipfile streams (data descriptors)."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


def archive(where: Target) -> Iterator[bytes]:
    """The whole archive, as chunks of at most about one block's worth each (empty ones are skipped)."""
    sink = _Sink()
    yield from (chunk for chunk in _write_archive(sink, where) if chunk)


def _write_archive(sink: _Sink, where: Target) -> Iterator[bytes]:
    from carledger.cli._export import SAMPLE_FORMATS, Clock, Rounding, event_row, rounding_from, sample_row
    from carledger.cli.log import _checked_blocks
    from carledger.cli.remote import key_proof
    from carledger.ledger import Sample, Store, decode_record
    from carledger.owner.state import OwnerState, iso

    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("README.txt", README)
        with Store.open_readonly(where.store) as store:
            meta = store.meta()
            vehicle = meta.get("vehicle")
            archive.writestr("vehicle.json", json.dumps({
                "vehicle": vehicle.decode() if isinstance(vehicle, bytes) else vehicle,
                "public_key": bytes(meta["public_key"]).hex(), "exported": iso(time.time()),
                "stream_keys": {name: key.hex() for name in store.streams() if (key := store.stream_key(name))},
            }, indent=1))
            ring = store.keyring()  # only statements the vehicle key signed: the ring checked each one
            archive.writestr("key-proof.json", json.dumps(key_proof(
                store.vehicle_id, store.public_key, [cert.statement.hex() for cert in ring.by_kid.values()]), indent=1))
            state = OwnerState.load(where.store)
            if state.policy_bytes:
                archive.writestr("policy.toml", state.policy_bytes)
            for path in state.history():
                archive.write(path, f"policies/{path.name}")
            archive.writestr("signals.json", json.dumps(_signals(where), indent=1))
            yield sink.take()
            clock = Clock(None, machine=True)
            rounding = (rounding_from(list(where.dbc)) if where.dbc else None) or Rounding()  # as log export --dbc
            for stream in store.streams():
                problems: list = []
                with _member(archive, f"streams/{stream}.jsonl") as binary, \
                        io.TextIOWrapper(binary, encoding="utf-8", newline="") as text:
                    writer = SAMPLE_FORMATS["jsonl"].writer(text)
                    for row, records in _checked_blocks(store, stream, problems):
                        for raw in records:
                            rec = decode_record(raw)
                            if isinstance(rec, Sample):
                                writer.sample(sample_row(stream, row.seq, rec, clock, rounding))
                            else:
                                writer.event(event_row(stream, row.seq, rec, clock))
                        yield sink.take()
                with _member(archive, f"streams/{stream}.cose") as binary:
                    for row in store.iter_blocks(stream):
                        binary.write(store.message(row))
                        yield sink.take()
    yield sink.take()  # the central directory, written when the archive closes


@contextmanager
def _member(archive: zipfile.ZipFile, name: str) -> Iterator[BinaryIO]:
    """A member written as a stream (zip64: its size is not known in advance)."""
    info = zipfile.ZipInfo(name, date_time=time.gmtime()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w", force_zip64=True) as member:
        yield member  # type: ignore[misc]


def _signals(where: Target) -> dict[str, Any]:
    """Each signal of the car's DBCs: its ledger name (VSS path), DBC source, unit and description."""
    if not where.dbc:
        return {"signals": [], "note": "the console was not given the car's DBCs (start it with -c agent.toml)"}
    from carledger.decode import VssMapping, load_dbc

    mapping = VssMapping.load(list(where.vss) if where.vss else VssMapping.beside(list(where.dbc)))
    signals = []
    for path in where.dbc:
        for message in load_dbc(path).database.messages:
            for signal in message.signals:
                source = f"{message.name}.{signal.name}"
                comment = signal.comment
                signals.append({"name": mapping.name(source), "message": message.name, "signal": signal.name,
                                "unit": signal.unit, "description": comment if isinstance(comment, str) else None,
                                "dbc": str(path)})
    return {"signals": signals}
