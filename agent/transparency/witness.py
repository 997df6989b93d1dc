"""A C2SP tlog-witness (c2sp.org/tlog-witness): cosigns a log's checkpoints only while they stay consistent.

`POST <prefix>/add-checkpoint` takes

    old <size of the checkpoint the client believes the witness holds>
    <zero to 63 consistency-proof hashes, one base64 line each>
    <blank line>
    <the signed checkpoint note>

and answers, as the spec says:

| status | when | body |
|---|---|---|
| 200 | consistent: stored, then cosigned | cosignature line(s) `— <witness> base64(...)` |
| 400 | not a request of that form, or old > checkpoint size | one line |
| 403 | no signature of the log's known keys verifies | one line |
| 404 | unknown origin | one line |
| 409 | old is not the stored size (body: the stored size, text/x.tlog.size), or same size with another root | |
| 422 | the consistency proof does not verify | one line |

State is one SQLite row per origin (its latest cosigned checkpoint), read,
checked and replaced in one IMMEDIATE transaction, so two requests can never
roll a log back (the spec's race), and durable before the answer. A request
with a valid log signature that shows a fork (same size, other root; or a
proof from the stored tree that fails) is kept in `evidence` with the stored
checkpoint: both signed checkpoints, the log's own proof against itself.
"""

from __future__ import annotations

import base64
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterable, Sequence

from carledger.ledger import merkle
from carledger.transparency import note
from carledger.transparency.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from carledger.transparency.cosignature import CosignatureSigner

__all__ = [
    "CHECKPOINT_HEADER",
    "DB_FILE",
    "MAX_PROOF_LINES",
    "MAX_BODY",
    "RequestError",
    "AddCheckpoint",
    "Answer",
    "parse_request",
    "format_request",
    "Witness",
    "read_evidence",
    "serve",
]

log = logging.getLogger(__name__)

DB_FILE = "witness.sqlite"
MAX_PROOF_LINES = 63
MAX_BODY = note.MAX_NOTE_SIZE + 4096  # a checkpoint note, 63 proof lines and the old line
SIZE_CONTENT_TYPE = "text/x.tlog.size"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS logs (
    origin     TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    root       BLOB NOT NULL,
    checkpoint BLOB NOT NULL,   -- the signed checkpoint note as received
    updated    INTEGER NOT NULL -- POSIX seconds
);
CREATE TABLE IF NOT EXISTS evidence (
    id          INTEGER PRIMARY KEY,
    origin      TEXT NOT NULL,
    received    INTEGER NOT NULL,
    kind        TEXT NOT NULL,  -- 'conflict' (same size, other root) or 'bad-proof'
    request     BLOB NOT NULL,  -- the whole add-checkpoint body, its signed checkpoint included
    stored      BLOB NOT NULL   -- the signed checkpoint the witness held
);
"""


class RequestError(ValueError):
    """A body that is not an add-checkpoint request (400)."""


@dataclass(frozen=True)
class AddCheckpoint:
    old_size: int
    proof: tuple[bytes, ...]
    checkpoint: bytes  # the signed note


CHECKPOINT_HEADER = "Carledger-Checkpoint"  # on a 409: base64 of the signed checkpoint held (not in the spec)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    held: bytes = b""  # on a 409: the signed checkpoint the witness holds, sent in CHECKPOINT_HEADER


def _decimal(text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit() or (text != "0" and text.startswith("0")):
        raise RequestError(f"{what} {text!r} is not a decimal without leading zeroes")
    return int(text)


def parse_request(body: bytes) -> AddCheckpoint:
    """The three parts of an add-checkpoint body; RequestError says what is wrong."""
    head, sep, rest = body.partition(b"\n\n")
    if not sep:
        raise RequestError("no blank line between the proof and the checkpoint")
    try:
        lines = head.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise RequestError("old and proof lines must be ASCII") from None
    first = lines[0]
    if not first.startswith("old "):
        raise RequestError("the first line must be 'old <size>'")
    old = _decimal(first[4:], "old size")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise RequestError(f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = []
    for i, line in enumerate(lines[1:], 2):
        try:
            h = note.b64decode_strict(line)
        except ValueError as exc:
            raise RequestError(f"line {i}: {exc}") from None
        if len(h) != merkle.HASH_SIZE:
            raise RequestError(f"line {i}: a {len(h)}-byte hash, expected {merkle.HASH_SIZE}")
        proof.append(h)
    return AddCheckpoint(old, tuple(proof), rest)


def format_request(old_size: int, proof: Sequence[bytes], signed_checkpoint: bytes) -> bytes:
    """The add-checkpoint body a log (or a test) sends."""
    import base64

    lines = [f"old {old_size}"] + [base64.b64encode(h).decode() for h in proof]
    return ("\n".join(lines) + "\n\n").encode() + signed_checkpoint


def _origin_of(signed: bytes) -> str:
    """The checkpoint's first line, read before any signature is checked (only to find the log's keys)."""
    first = signed.split(b"\n", 1)[0]
    try:
        return first.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("the checkpoint's origin line is not UTF-8") from None


class Witness:
    """The witness's state (DIR/witness.sqlite), its logs' keys and its cosigning key."""

    def __init__(
        self, directory: str | Path, signer: CosignatureSigner, log_keys: Iterable[note.Verifier]
    ) -> None:
        self.signer = signer
        self.keys: dict[str, list[note.Verifier]] = {}
        for key in log_keys:  # a log is known by its key name, which the spec says matches its origin
            self.keys.setdefault(key.name, []).append(key)
        self.path = Path(directory) / DB_FILE
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # the spec: persist before answering
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def state(self, origin: str) -> tuple[int, bytes] | None:
        row = self._db.execute("SELECT size, root FROM logs WHERE origin = ?", (origin,)).fetchone()
        return (row[0], bytes(row[1])) if row else None

    def evidence(self) -> list[dict]:
        return _evidence(self._db)

    def add_checkpoint(self, body: bytes) -> Answer:
        """One add-checkpoint request, answered as c2sp.org/tlog-witness says."""
        try:
            req = parse_request(body)
            origin = _origin_of(req.checkpoint)
        except RequestError as exc:
            return _text(HTTPStatus.BAD_REQUEST, str(exc))
        keys = self.keys.get(origin)
        if not keys:
            return _text(HTTPStatus.NOT_FOUND, f"unknown log {origin!r}")
        try:
            cp, opened = open_checkpoint(req.checkpoint, keys, origin=origin)
        except (note.UnverifiedNoteError, note.InvalidSignatureError, note.AmbiguousKeyError) as exc:
            return _text(HTTPStatus.FORBIDDEN, f"checkpoint signature: {exc}")
        except (note.NoteError, CheckpointError) as exc:
            return _text(HTTPStatus.BAD_REQUEST, f"checkpoint: {exc}")
        if req.old_size > cp.size:
            return _text(HTTPStatus.BAD_REQUEST, f"old size {req.old_size} is over the checkpoint's {cp.size}")
        if req.old_size == 0 and req.proof:
            return _text(HTTPStatus.UNPROCESSABLE_ENTITY, "a proof from size 0 must be empty")
        with self._lock:
            answer = self._check_and_store(req, cp, body)
        if answer is not None:
            return answer
        line = note.signature_for(opened.text, self.signer).line()
        return Answer(HTTPStatus.OK, line.encode())

    def _check_and_store(self, req: AddCheckpoint, cp: Checkpoint, body: bytes) -> Answer | None:
        """Compare with the stored checkpoint and replace it, in one transaction; an Answer when refused."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT size, root, checkpoint FROM logs WHERE origin = ?", (cp.origin,)).fetchone()
            size, root, stored = (row[0], bytes(row[1]), bytes(row[2])) if row else (0, merkle.EMPTY_ROOT, b"")
            refused = None
            if req.old_size != size:
                refused = Answer(HTTPStatus.CONFLICT, f"{size}\n".encode(), SIZE_CONTENT_TYPE, stored)
            elif cp.size == size and size > 0:
                if cp.root_hash != root:
                    self._keep(cp.origin, "conflict", body, stored)
                    why = f"checkpoint of size {size} with another root than the one cosigned"
                    refused = Answer(HTTPStatus.CONFLICT, (why + "\n").encode(), held=stored)
                elif req.proof:
                    refused = _text(HTTPStatus.UNPROCESSABLE_ENTITY, "a proof between equal sizes must be empty")
            elif size > 0 and not merkle.verify_consistency(size, cp.size, root, cp.root_hash, req.proof):
                self._keep(cp.origin, "bad-proof", body, stored)
                why = f"consistency proof from {size} to {cp.size} does not verify"
                refused = _text(HTTPStatus.UNPROCESSABLE_ENTITY, why)
            if refused is None:
                db.execute(
                    "INSERT INTO logs (origin, size, root, checkpoint, updated) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(origin) DO UPDATE SET size = excluded.size, root = excluded.root, "
                    "checkpoint = excluded.checkpoint, updated = excluded.updated",
                    (cp.origin, cp.size, cp.root_hash, req.checkpoint, int(time.time())),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if refused is not None:
            log.warning("witness: %s: %s %s", cp.origin, refused.status, refused.body.decode(errors="replace").strip())
        return refused

    def _keep(self, origin: str, kind: str, body: bytes, stored: bytes) -> None:
        self._db.execute(
            "INSERT INTO evidence (origin, received, kind, request, stored) VALUES (?, ?, ?, ?, ?)",
            (origin, int(time.time()), kind, body, stored),
        )


def _evidence(db: sqlite3.Connection) -> list[dict]:
    rows = db.execute("SELECT id, origin, received, kind, request, stored FROM evidence ORDER BY id")
    return [dict(id=r[0], origin=r[1], received=r[2], kind=r[3], request=bytes(r[4]), stored=bytes(r[5])) for r in rows]


def read_evidence(directory: str | Path) -> list[dict]:
    """The evidence kept in DIR/witness.sqlite, opened read-only (a reader never creates or changes it)."""
    db = sqlite3.connect(f"file:{Path(directory) / DB_FILE}?mode=ro", uri=True)
    try:
        return _evidence(db)
    finally:
        db.close()


def _text(status: int, message: str) -> Answer:
    return Answer(status, (message + "\n").encode())


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"  # keep-alive, as the spec asks
    # Headers and body go out in two writes: with Nagle on, the body waits for the client's delayed ACK
    # (40 ms on Linux) on every keep-alive request; bench/bench_witness.py measured 22 requests/s.
    disable_nagle_algorithm = True

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        if self.path != self.server.prefix + "/add-checkpoint":
            return self._send(_text(HTTPStatus.NOT_FOUND, f"no such endpoint {self.path}"))
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._send(_text(HTTPStatus.LENGTH_REQUIRED, "Content-Length required"))
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            return self._send(_text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY} bytes"))
        self._send(self.server.witness.add_checkpoint(self.rfile.read(length)))

    def do_GET(self) -> None:  # noqa: N802
        self._send(_text(HTTPStatus.METHOD_NOT_ALLOWED, "add-checkpoint takes POST"))

    def _send(self, answer: Answer) -> None:
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        if answer.held:  # lets the log's own client see the checkpoint it is told of: its fork evidence
            self.send_header(CHECKPOINT_HEADER, base64.b64encode(answer.held).decode())
        self.end_headers()
        self.wfile.write(answer.body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        log.info("witness: %s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], witness: Witness, prefix: str) -> None:
        super().__init__(address, _Handler)
        self.witness = witness
        self.prefix = prefix.rstrip("/")


def serve(witness: Witness, host: str, port: int, prefix: str = "") -> _Server:
    """A bound HTTP server (port 0: any free one, see `server_address`); the caller runs serve_forever."""
    return _Server((host, port), witness, prefix)
