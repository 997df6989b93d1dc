"""Submitting the car's checkpoints to witnesses (C2SP tlog-witness) and keeping their cosignatures.

The agent configuration names the witnesses (`[[witness]]`, docs/agent.example.toml):

    [[witness]]
    url = "https://witness.example/w1"          # POST <url>/add-checkpoint
    key = "witness.example/w1+1a2b3c4d+BA..."   # its verifier key (`carledger witness keygen` prints it)
    streams = ["insurer-ubi"]                   # optional: the streams it sees (default: every one)

For each stream's newest signed checkpoint, `submit` posts `old <size the
witness holds>`, the consistency proof from there and the checkpoint; a 200
carries the witness's cosignature, verified with the configured key before it
is kept (table `cosignatures`). A 409 with the witness's size is retried
once from that size. A witness that holds a checkpoint of this log the
store does not (its answer carries it, `Carledger-Checkpoint`) shows the
store is an older copy: `Store.check_signed_checkpoint` keeps it as evidence
and the store refuses to write (docs/transparency.md, "Recovery").
"""

from __future__ import annotations

import base64
import http.client
import logging
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Iterable

from carledger.ledger.checkpoints import ForkedStore, Signed
from carledger.ledger.errors import StoreError
from carledger.ledger.store import Store
from carledger.transparency import note
from carledger.transparency.checkpoint import CheckpointError
from carledger.transparency.witness import CHECKPOINT_HEADER, SIZE_CONTENT_TYPE, format_request

__all__ = ["WitnessConfig", "Submitted", "witnesses_from_table", "submit"]

log = logging.getLogger(__name__)

TIMEOUT = 15.0


@dataclass(frozen=True)
class WitnessConfig:
    url: str  # POST <url>/add-checkpoint
    key: str  # the witness's verifier key string
    streams: tuple[str, ...] = ()  # empty: every stream

    @property
    def verifier(self) -> note.Verifier:
        return note.parse_verifier_key(self.key)


@dataclass
class Submitted:
    """What one witness said of one stream's checkpoint."""

    witness: str
    stream: str
    size: int
    status: int | None  # HTTP status of the last answer, None when unreachable
    cosigned: bool = False
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def witnesses_from_table(items: Any, error: Any) -> list[WitnessConfig]:
    """The `[[witness]]` tables; `error(field, why)` builds the configuration error naming the field."""
    if not isinstance(items, list):
        raise error("witness", "must be an array of tables ([[witness]])")
    out = []
    for i, item in enumerate(items):
        where = f"witness[{i}]"
        if not isinstance(item, dict):
            raise error(where, "must be a table with url and key")
        unknown = sorted(set(item) - {"url", "key", "streams"})
        if unknown:
            raise error(f"{where}.{unknown[0]}", "unknown field (url, key, streams)")
        url, key, streams = item.get("url"), item.get("key"), item.get("streams", [])
        parsed = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise error(f"{where}.url", "must be an http:// or https:// URL")
        if not isinstance(key, str):
            raise error(f"{where}.key", "must be the witness's verifier key (name+keyid+base64)")
        try:
            note.parse_verifier_key(key)
        except note.NoteError as exc:
            raise error(f"{where}.key", str(exc)) from None
        if not isinstance(streams, list) or not all(isinstance(s, str) and s for s in streams):
            raise error(f"{where}.streams", "must be a list of stream names")
        out.append(WitnessConfig(url.rstrip("/"), key, tuple(streams)))
    return out


def _post(url: str, body: bytes) -> tuple[int, str, bytes, bytes]:
    """(status, content type, body, the Carledger-Checkpoint note or b"") of one add-checkpoint POST."""
    parts = urllib.parse.urlsplit(url)
    conn_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_type(parts.hostname, parts.port, timeout=TIMEOUT)
    try:
        conn.request("POST", parts.path + "/add-checkpoint", body=body, headers={"Content-Type": "text/plain"})
        r = conn.getresponse()
        data = r.read(1 << 16)
        held = r.getheader(CHECKPOINT_HEADER) or ""
        try:
            held_note = base64.b64decode(held, validate=True)
        except ValueError:
            held_note = b""
        return r.status, (r.getheader("Content-Type") or "").split(";")[0], data, held_note
    finally:
        conn.close()


def _keep_cosignature(store: Store, w: WitnessConfig, cp: Signed, body: bytes) -> str:
    """Verify the witness's answer as a cosignature of this checkpoint and keep it; '' when kept, else why not."""
    verifier = w.verifier
    try:
        text = body.decode("utf-8")
        lines = [line + "\n" for line in text.split("\n") if line]
        opened = note.open_note(cp.note + "".join(lines).encode(), [verifier])
    except (UnicodeDecodeError, note.NoteError) as exc:
        return f"its answer is not a cosignature by {verifier.name} that verifies: {exc}"
    sig = next(s for s in opened.sigs if s.name == verifier.name and s.key_id == verifier.key_id)
    store.add_cosignature(cp.row, verifier.name, sig.line())
    return ""


def _one(store: Store, w: WitnessConfig, stream: str, cp: Signed) -> Submitted:
    size = cp.checkpoint.size
    out = Submitted(w.url, stream, size, None)
    done = store.cosigned(w.verifier.name, stream)
    if done and done[0][0] == cp.row:
        out.cosigned, out.detail = True, "cosigned before"
        return out
    old = min(int(done[0][1]) if done and isinstance(done[0][1], int) else 0, size)  # a guess: a 409 corrects it
    for _attempt in range(2):
        body = format_request(old, store.consistency_proof(stream, old, size), cp.note)
        try:
            status, ctype, answer, held = _post(w.url, body)
        except (OSError, http.client.HTTPException) as exc:
            out.detail = f"unreachable: {exc}"
            return out
        out.status = status
        if held:  # the checkpoint the witness holds for this log: is it one the store holds?
            try:
                store.check_signed_checkpoint(stream, held, f"witness {w.url}")  # ForkedStore when not
            except (note.NoteError, CheckpointError) as exc:
                out.extra["held"] = f"not a checkpoint of this log: {exc}"  # not the car's: evidence of nothing
        if status == 200:
            why = _keep_cosignature(store, w, cp, answer)
            out.cosigned, out.detail = not why, why or "cosigned"
            return out
        if status == 409 and ctype == SIZE_CONTENT_TYPE:
            text = answer.decode("ascii", "replace").strip()
            if not (text.isascii() and text.isdigit()):  # the spec's decimal size; not -5, which no proof starts from
                out.detail = f"409 without a size: {text[:40]!r}"
                return out
            theirs = int(text)
            if theirs > size or theirs == old:
                out.detail = f"the witness holds size {theirs}, this store's checkpoint is {size}"
                return out
            old = theirs
            continue
        out.detail = answer.decode("utf-8", "replace").strip()[:200]
        return out
    return out


def submit(store: Store, witnesses: Iterable[WitnessConfig], streams: Iterable[str] | None = None) -> list[Submitted]:
    """Submit each stream's newest checkpoint to each witness; ForkedStore when one shows the store is a copy."""
    names = sorted(store.streams()) if streams is None else list(streams)
    results = []
    for w in witnesses:
        for stream in names:
            if w.streams and stream not in w.streams:
                continue
            try:
                cp = store.latest_checkpoint(stream)
            except ForkedStore:
                raise
            except StoreError as exc:
                results.append(Submitted(w.url, stream, 0, None, detail=str(exc)))
                continue
            if cp is None:
                continue
            result = _one(store, w, stream, cp)
            log.info("witness %s: stream %s size %d: %s", w.url, stream, result.size, result.detail)
            results.append(result)
    return results


class WitnessThread:
    """The agent's submitter: every `interval` seconds (and at stop) submits to every configured witness.

    It works on its own delivery-marks connection, as the syncer does. When a
    witness shows the store is an older copy it logs the one-line reason and
    stops; the writer refuses at its next seal (the evidence is in `forks`).
    """

    def __init__(self, store_dir: str, witnesses: Iterable[WitnessConfig], interval: float = 60.0):
        import threading

        self.store_dir, self.witnesses, self.interval = store_dir, list(witnesses), interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="carledger-witness", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def round(self) -> list[Submitted]:
        with Store.open_marks(self.store_dir) as store:
            return submit(store, self.witnesses)

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self.interval)
            try:
                self.round()
            except ForkedStore as exc:
                log.error("%s", exc)
                return
            except Exception as exc:  # a witness round must never take the agent down
                log.warning("witness submission failed: %s", exc)
            if stopping:
                return
