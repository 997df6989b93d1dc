"""Stream writers (cheap appends on the hot path) and the Ledger facade that seals and commits."""

from __future__ import annotations

import hashlib
import logging
import numbers
import os
import threading
from typing import Any, Callable, Iterable, Mapping

import cbor2

from carledger.ledger import checkpoints, identity, merkle
from carledger.ledger.block import ZERO_DIGEST, SealedBlock, encode_event, seal_block, valid_stream_name
from carledger.ledger.errors import LedgerError
from carledger.ledger.keys import Signer, kid
from carledger.ledger.store import Store

__all__ = ["StreamWriter", "Ledger", "valid_stream_name"]

log = logging.getLogger(__name__)

_EVENT = object()  # marks an event in the `source` slot of a pending tuple
_VALUE_TYPES = frozenset({int, float, str})


class _Slow(Exception):
    pass


_TAILS: dict[tuple, tuple[bytes, bytes, bytes]] = {}  # (head, head with a 64-bit time's byte, tail)
_TAILS_LIMIT = 1 << 13


_TEXTS: dict[str, bytes] = {}  # a name's or a source's canonical CBOR text


def _text(text: str) -> bytes:
    encoded = _TEXTS[text] = cbor2.dumps(text, canonical=True)
    return encoded


def _encode_fast(recs: list) -> tuple[list[bytes], list[int]]:
    """Encode pending records, the seal's hot loop.

    A sample encodes as array header, 0, time, then name, value and source.
    Everything after the time repeats a lot (the same signal at the same
    value), so that part is cached per (name, type, value, source); only the
    time is encoded per record. A value not cached yet costs one cbor2 call on
    the value alone (names and sources are cached as text): on a tuple, cbor2
    takes six times as long, and many values (a steering angle) are new. The result is byte-identical to
    cbor2.dumps(record, canonical=True), which the tests check.
    """
    dumps = cbor2.dumps
    okv = _VALUE_TYPES
    tails = _TAILS
    if len(tails) > _TAILS_LIMIT:
        tails.clear()
    texts = _TEXTS
    if len(texts) > _TAILS_LIMIT:
        texts.clear()
    out: list[bytes] = []
    tus: list[int] = []
    put = out.append
    put_t = tus.append
    for t, name, value, src in recs:
        tu = round(t * 1e6)
        put_t(tu)
        if src is _EVENT:
            put(encode_event(tu, name, value))
            continue
        key = (name, type(value), value, src)
        cached = tails.get(key)
        if cached is None:
            if type(value) not in okv or type(name) is not str or (src is not None and type(src) is not str):
                raise _Slow
            if src == name:
                src = None
            # An array's encoding is its items' one after the other: the name's and the source's
            # are kept, only the value is encoded here (a scalar: far cheaper than the whole tuple).
            tail = (texts.get(name) or _text(name)) + dumps(value, canonical=True)
            if src is not None:
                tail += texts.get(src) or _text(src)
            head = b"\x84\x00" if src is None else b"\x85\x00"
            cached = (head, head + b"\x1b", tail)
            if not (type(value) is float and value == 0.0 or value != value):
                # 0.0 == -0.0 and NaN != NaN: keys that cannot tell values apart are not cached
                tails[key] = cached
        if 0xFFFFFFFF < tu <= 0xFFFFFFFFFFFFFFFF:
            put(cached[1] + tu.to_bytes(8, "big") + cached[2])
        else:
            put(cached[0] + dumps(tu, canonical=True) + cached[2])
    return out, tus


def _coerce_value(value: Any) -> int | float | str:
    t = type(value)
    if t in _VALUE_TYPES:
        return value
    if t is bool:
        return int(value)
    inner = getattr(value, "value", None)  # cantools NamedSignalValue and similar
    if inner is not None and type(inner) in (int, float) and not isinstance(value, numbers.Number):
        return inner
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return str(value)
    raise TypeError(f"value of type {t.__name__} is not int, float or text")


def _encode_careful(recs: list, stream: str) -> tuple[list[bytes], list[int]]:
    """Slow path: coerce what can be coerced; declare (event `bad-record`) what cannot. Never raises."""
    out: list[bytes] = []
    tus: list[int] = []
    last_t = None
    for t, name, value, src in recs:
        try:
            tu = round(t * 1e6)
            if type(tu) is not int:
                raise TypeError("time is not a number")
        except Exception:
            tu = None
        try:
            if tu is None:
                raise ValueError(f"invalid time {t!r}")
            if src is _EVENT:
                rec = encode_event(tu, name, value)
            else:
                if type(name) is not str or not name:
                    raise TypeError(f"name {name!r} is not text")
                v = _coerce_value(value)
                if src is not None and type(src) is not str:
                    raise TypeError(f"source {src!r} is not text")
                rec = cbor2.dumps(
                    (0, tu, name, v) if src is None or src == name else (0, tu, name, v, src), canonical=True
                )
        except Exception as exc:
            tu = tu if tu is not None else (last_t if last_t is not None else 0)
            detail = {"name": str(name)[:64], "error": str(exc)[:160]}
            rec = encode_event(tu, "bad-record", detail)
            log.warning("stream %s: record %s replaced by a bad-record event: %s", stream, str(name)[:64], exc)
        last_t = tu
        out.append(rec)
        tus.append(tu)
    return out, tus


class StreamWriter:
    """Pending records of one stream and its chain head. Obtain through `Ledger.writer(name)`.

    `add_sample` / `add_event` only append a tuple: call them from the hot path.
    """

    __slots__ = ("name", "policy_digest", "vid", "signer", "sealer", "_ledger", "_recs", "_head", "_chain_vid", "_built")

    def __init__(self, ledger: "Ledger", name: str, head: tuple[int, bytes] | None, chain_vid: str | None = None):
        self.name = name
        self.policy_digest: bytes | None = None  # None: the ledger's policy_digest
        self.vid: str | None = None  # the vehicle as this stream's recipient knows it; None: its chain's, else the ledger's
        self.signer: Signer | None = None  # None: the key of its vehicle id (Ledger.signer_for)
        # (records, t0_us, t1_us) -> the records to sign instead, e.g. ledger.encrypt.RecordSealer
        self.sealer: Callable[[list[bytes], int, int], list[bytes]] | None = None
        self._ledger = ledger
        self._recs: list[tuple] = []
        self._head = head
        self._chain_vid = chain_vid  # the vehicle id the stream's last signed block carries
        self._built: tuple[SealedBlock, int] | None = None

    def add_sample(self, t: float, name: str, value: int | float | str, source: str | None = None) -> None:
        """A sample at `t` seconds. `source` is the `Message.Signal` it came from, when it differs from `name`."""
        self._recs.append((t, name, value, source))

    def add_event(self, t: float, kind: str, detail: Mapping | None = None) -> None:
        """A declared event (`policy`, `gap`, `retention`, `pause`, ...) with a detail map."""
        self._recs.append((t, kind, dict(detail) if detail else {}, _EVENT))

    def discard_from(self, t: float) -> int:
        """Drop pending records at or after `t` seconds (collected after consent ended); returns how many."""
        recs = self._recs
        keep = [r for r in recs if r[0] < t]
        dropped = len(recs) - len(keep)
        if dropped:
            if self._built is not None:
                raise LedgerError(f"stream {self.name}: discard_from() between build() and committed()")
            recs[:] = keep
        return dropped

    @property
    def pending(self) -> int:
        return len(self._recs)

    @property
    def pending_events(self) -> int:
        """How many pending records are declared events: the run summary counts them apart from samples."""
        return sum(1 for r in self._recs if r[3] is _EVENT)

    @property
    def first_time(self) -> float | None:
        """Time (seconds) of the oldest pending record."""
        recs = self._recs
        return recs[0][0] if recs else None

    @property
    def last_time(self) -> float | None:
        recs = self._recs
        return recs[-1][0] if recs else None

    @property
    def chain_vid(self) -> str | None:
        """The vehicle id this stream's last signed block carries (None: no block yet); `build` signs only under it."""
        return self._chain_vid

    @property
    def head(self) -> tuple[int, bytes] | None:
        """(seq, digest) of the last committed block of this stream."""
        return self._head

    def build(self, policy_digest: bytes | None = None) -> SealedBlock | None:
        """Seal the pending records into the next block of the chain, without committing it.

        None when nothing is pending. Records added meanwhile stay pending.
        `Ledger.seal` commits the block and then calls `committed(block)`;
        until then the records stay pending and the head does not move.
        """
        n = len(self._recs)
        if n == 0:
            return None
        recs = self._recs[:n]
        try:
            encoded, tus = _encode_fast(recs)
        except Exception:
            encoded, tus = _encode_careful(recs, self.name)
        policy = policy_digest or self.policy_digest or self._ledger.policy_digest
        t0, t1 = min(tus), max(tus)
        if self.sealer is not None:
            encoded = self.sealer(encoded, t0, t1)
        head = self._head
        seq, prev = (0, ZERO_DIGEST) if head is None else (head[0] + 1, head[1])
        led = self._ledger
        # Unnamed, a stream goes on as its chain is signed (an eviction or closing event of a recipient's
        # stream names the car by that recipient's pseudonym); only a new chain takes the store's id.
        vid = self.vid or self._chain_vid or led.vehicle_id
        if self._chain_vid is not None and vid != self._chain_vid:
            raise LedgerError(
                f"stream {self.name}: its chain is signed as vehicle {self._chain_vid!r}; "
                f"refusing to sign seq {seq} as {vid!r}"
            )
        block = seal_block(
            vid=vid,
            stream=self.name,
            seq=seq,
            prev=prev,
            t0=t0,
            t1=t1,
            policy=policy,
            records=encoded,
            signing_key=self.signer or led.signer_for(vid),
            root=merkle.root(encoded),
        )
        self._built = (block, n)
        return block

    def committed(self, block: SealedBlock) -> None:
        """`block` (the last one built) is durable: drop its records from pending, move the head."""
        built = self._built
        if built is None or built[0] is not block:
            raise LedgerError(f"stream {self.name}: committed() for a block this writer did not just build")
        self._built = None
        del self._recs[: built[1]]
        self._head = (block.header.seq, block.digest)
        self._chain_vid = block.header.vid

    def __repr__(self) -> str:
        return f"<StreamWriter {self.name} pending={len(self._recs)} head={self._head and self._head[0]}>"


class Ledger:
    """The store, the vehicle key and id, and one StreamWriter per stream.

    `seal()` builds a block for every writer with pending records and commits
    them all in one store transaction; heads move only once it is durable.
    """

    def __init__(self, store: Store, *, policy_digest: bytes | None = None):
        if store.readonly or store.signer is None:
            raise LedgerError("the ledger needs a store opened for writing (Store.open)")
        self.store = store
        self.signer = store.signer  # every block is signed through it (keys.Signer: a file, a TPM, a secure element)
        self.signing_key = store.signing_key  # the PyNaCl key when the vehicle key is a file, else None
        self.verify_key = store.verify_key
        self.kid = kid(self.verify_key)
        self.vehicle_id: str = store.vehicle_id  # type: ignore[assignment]
        self._policy_digest = ZERO_DIGEST
        if policy_digest is not None:
            self.policy_digest = policy_digest
        self._writers: dict[str, StreamWriter] = {}
        self._lock = threading.RLock()
        self._pseudonym_signers: dict[str, Signer] = {}  # pseudonym -> the recipient's own key (identity.py)
        # A stream's log gets a signed checkpoint once it grew this many blocks (1: at each seal), and at close.
        self.checkpoint_every = checkpoints.DEFAULT_EVERY

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        vehicle_id: str | None = None,
        *,
        policy_digest: bytes | None = None,
        signer: Signer | None = None,
    ) -> "Ledger":
        """The ledger at `path`, signing with `signer` (default: STORE/keys/vehicle.key, created on first use)."""
        return cls(Store.open(path, vehicle_id, signer=signer), policy_digest=policy_digest)

    def signer_for(self, vid: str) -> Signer:
        """The key a block naming the car as `vid` is signed with: a recipient's own key for its pseudonym, else the vehicle key."""
        return self._pseudonym_signers.get(vid, self.signer)

    def certify(self, secret: bytes, recipient: str, pseudonym: str) -> Signer:
        """The recipient's own signing key, certified once by a key statement the vehicle key signs (stored).

        Keys of an earlier secret (before `carledger wipe`) never come back: the
        key is derived from the secret in force, and its statement says so.
        """
        signer = self._pseudonym_signers.get(pseudonym)
        if signer is not None:
            return signer
        signer = identity.pseudonym_signer(secret, self.vehicle_id, recipient)
        have = self.store.keyring().for_pseudonym(pseudonym)
        if have is None or have.public_key != signer.public_key:
            if have is not None:
                raise LedgerError(f"pseudonym {pseudonym}: the store certifies another key (kid {have.key_id.hex()}) "
                                  f"than the pseudonym secret gives (kid {signer.key_id.hex()})")
            self.store.add_key_statement(pseudonym, identity.make_statement(
                self.signer, self.vehicle_id, recipient, pseudonym, signer.public_key))
        self._pseudonym_signers[pseudonym] = signer
        return signer

    def load_certified(self, secret: bytes) -> None:
        """Sign with every recipient key the store certifies and `secret` gives (a closing event of a stream
        the policy no longer names is signed as its chain was)."""
        for cert in self.store.keyring().by_kid.values():
            if cert.vehicle == self.vehicle_id and cert.pseudonym not in self._pseudonym_signers:
                signer = identity.pseudonym_signer(secret, self.vehicle_id, cert.recipient)
                if signer.public_key == cert.public_key:
                    self._pseudonym_signers[cert.pseudonym] = signer

    @property
    def policy_digest(self) -> bytes:
        """SHA-256 of the policy version in force; written into every block sealed from now on."""
        return self._policy_digest

    @policy_digest.setter
    def policy_digest(self, value: bytes) -> None:
        if type(value) is not bytes or len(value) != 32:
            raise ValueError("policy digest must be 32 bytes (SHA-256)")
        self._policy_digest = value

    @staticmethod
    def digest_policy(data: bytes) -> bytes:
        return hashlib.sha256(data).digest()

    def writer(self, name: str) -> StreamWriter:
        """The writer of stream `name` (created on first use, continuing the stored chain)."""
        w = self._writers.get(name)
        if w is None:
            with self._lock:
                w = self._writers.get(name)
                if w is None:
                    if not valid_stream_name(name):
                        raise ValueError(f"invalid stream name {name!r}: 1-64 of [A-Za-z0-9._:-], alphanumeric first")
                    head = self.store.signed_head(name)
                    w = StreamWriter(self, name, head and (head.seq, head.digest), head and head.vid)
                    self._writers[name] = w
        return w

    @property
    def writers(self) -> list[StreamWriter]:
        return list(self._writers.values())

    def due(
        self, now: float, max_age_s: float, max_records: int, clocks: Mapping[str, float] | None = None,
        *, along_s: float | None = None,
    ) -> list[StreamWriter]:
        """Writers that must be sealed: oldest pending record at least `max_age_s` old, or `max_records` pending.

        A record's age is judged by the clock its time comes from: `now` for
        most streams, `clocks[name]` for a stream whose records carry another
        clock (while a replay's data runs on the log's clock, the agent's own
        health and audit run on the wall clock; judged by the log's clock they
        would never be due, and a kill would lose them).

        `along_s`: once one writer is due, every writer whose oldest record is
        at least that old comes along, in the same transaction. On a live bus
        each seal is a commit, an fsync: streams that started apart would
        otherwise each pay one, at their own moments, for ever; sealed together
        once, they stay together. A block comes out shorter, never later.
        """
        clocks = clocks or {}
        out = []
        along = []
        for w in list(self._writers.values()):
            n = len(w._recs)
            if n:
                age = clocks.get(w.name, now) - w._recs[0][0]
                if n >= max_records or age >= max_age_s:
                    out.append(w)
                elif along_s is not None and age >= along_s:
                    along.append(w)
        return out + along if out else out

    def seal(self, writers: Iterable[StreamWriter] | None = None, now: float | None = None,
             *, hold: float = 0.0) -> list[SealedBlock]:
        """Seal every given writer (default: all) that has pending records, in ONE transaction.

        Returns the committed blocks, in commit order. On a store error
        nothing moves: the records stay pending and the exception propagates.
        `now` is accepted for symmetry with `due` and is not needed. `hold`:
        the store may group this commit with later ones (`Store.append`).
        """
        with self._lock:
            targets = list(self._writers.values()) if writers is None else list(writers)
            built = []
            for w in targets:
                if w._ledger is not self:
                    raise LedgerError(f"writer {w.name!r} belongs to another ledger")
                block = w.build()
                if block is not None:
                    built.append((w, block))
            if not built:
                return []
            every = max(1, int(self.checkpoint_every))
            due = {
                w.name: self._log_signer(w, b.header.vid) for w, b in built
                if b.header.seq + 1 - self.store.checkpoint_size(w.name) >= every
            }
            self.store.append([b for _, b in built], checkpoint=due, hold=hold)
            for w, b in built:
                w.committed(b)
            return [b for _, b in built]

    def _log_signer(self, w: StreamWriter, vid: str) -> Signer:
        """The key of the stream's log: the one its blocks are signed with."""
        return w.signer or self.signer_for(vid)

    def checkpoint(self, names: Iterable[str] | None = None) -> list[checkpoints.Signed]:
        """Sign a checkpoint of every given stream (default: every stream with a writer) that grew since its last.

        A stream whose log key this process does not hold (a recipient's key
        before `load_certified`) is skipped: its checkpoint must be signed with
        the key its blocks are.
        """
        with self._lock:
            signers = {}
            for name in (list(self._writers) if names is None else list(names)):
                w = self.writer(name)
                if w.chain_vid is None:
                    continue
                signer = self._log_signer(w, w.chain_vid)
                if bytes(signer.public_key) == self.store.stream_key(name):
                    signers[name] = signer
            return self.store.sign_checkpoints(signers) if signers else []

    def close(self, seal: bool = True) -> None:
        """Seal what is pending (unless seal=False), sign the checkpoints that are due, and close the store."""
        try:
            if seal and self.store._conn is not None:
                self.seal()
                if self.store.refusal is None:
                    self.checkpoint()
        finally:
            self.store.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, exc_type, *rest) -> None:
        self.close(seal=exc_type is None)
