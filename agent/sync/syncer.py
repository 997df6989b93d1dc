"""Store-and-forward: the agent's sync thread, from the local store to the broker (docs/sync.md).

The pipeline thread owns the Store that appends blocks. The sync thread has
its own SQLite connection (`Store.open_marks`): it reads unacked blocks a
window at a time and writes only the `synced` (broker PUBACK) and `acked`
(the collector's ack) marks. Nothing but the window is ever held in memory,
whatever the backlog.

Per outbound stream, blocks leave in seq order; at most `window` of them are
out without the collector's ack (`max_inflight` over all streams). After a
reconnect, or when the collector's ack does not come within `ack_timeout`
(mosquitto drops QoS 1 messages for a full subscriber queue), the stream is
sent again from its first unacked block. Only the collector's signed ack
counts (carledger.sync.ack), and only streams the policy in force lets leave
are ever sent (carledger.sync.gate), whoever asks.

The window and the ack timeout adapt like TCP's (carledger.sync.window), so a
broker that drops what does not fit in a small queue costs a round trip or
two, not 30 s.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import paho.mqtt.client as paho

from carledger.ledger import BlockRow, Store, StoreError
from carledger.ledger.store import block_vid
from carledger.ledger.errors import KeyFileError
from carledger.ledger.keys import Signer
from carledger.sync import topics
from carledger.sync.ack import WRONG_SUBJECT, AckRejected, collector_keys, keep_receipt, open_ack
from carledger.sync.config import MqttConfig
from carledger.sync.gate import OutboundGate, OutboundStream
from carledger.sync.mqtt import Backoff, ConnectError, close, connect, make_client, status_expiry
from carledger.sync.policy_update import PolicyHandler
from carledger.sync.window import Window
from carledger.sync.wire import BlockPacker

__all__ = ["Syncer", "OutboundStream", "Disclosure", "SyncStats"]

log = logging.getLogger(__name__)

POLL = 0.2  # seconds between looks for new blocks when idle
LOOP = 0.05  # longest wait for the network in one turn
MARK_EVERY = 0.5  # seconds between writes of batched `synced` marks


@dataclass(frozen=True)
class Disclosure:
    """The collector acked blocks first_seq..last_seq of `stream`: what the audit trail records."""

    stream: str
    recipient: str
    first_seq: int
    last_seq: int
    records: int
    t: float


@dataclass
class SyncStats:
    connected: bool = False
    connects: int = 0
    published: int = 0  # block messages handed to the broker (resends included)
    resent: int = 0  # of which sent again (reconnect or ack timeout)
    payload_bytes: int = 0  # bytes of block payloads published
    wire_bytes: int = 0  # payload + topic + MQTT PUBLISH header
    records: int = 0  # records in the blocks published (first sends only)
    acked_blocks: int = 0
    last_sync: float | None = None  # time of the last collector ack that advanced a stream
    timeouts: int = 0  # ack timeouts (each sends a stream again from its first unacked block)
    acks_ignored: dict[str, int] = field(default_factory=dict)  # cause -> acks the car did not act on
    receipts_refused: int = 0  # acks whose receipt (cosignature) did not verify: the ack counted, no receipt kept
    refused: dict[str, str] = field(default_factory=dict)  # stream -> why the policy does not let it leave
    connect_error: str | None = None  # why the last connection attempt failed (None once connected)
    unknown_host: bool = False  # ... because the broker's host name does not resolve
    connect_failures: int = 0  # connection attempts that failed


class _Out:
    """One outbound stream's send state: the window between the collector's ack and the cursor."""

    __slots__ = ("name", "spec", "acked", "cursor", "buffer", "inflight", "last_progress", "window", "sent_max",
                 "last_fetch", "vid")

    def __init__(self, name: str, spec: OutboundStream, acked: int | None, cfg: MqttConfig):
        self.name, self.spec = name, spec
        self.acked = -1 if acked is None else acked  # highest seq the collector acked
        self.cursor = self.acked + 1  # next seq to send
        self.buffer: deque[BlockRow] = deque()  # fetched, not yet sent
        self.inflight: dict[int, tuple[int, int, float]] = {}  # seq -> (row id, records, sent at; -1 when sent again)
        self.last_progress = time.monotonic()
        self.window = Window(cfg)
        self.sent_max = self.acked  # highest seq ever sent: a lower one sent again is a resend
        self.last_fetch = 0.0  # when the store was last asked for blocks from the cursor on
        self.vid: str | None = None  # the vehicle id its blocks carry: its topics' (a recipient's pseudonym, or ours)

    @property
    def room(self) -> int:
        return self.window.room(len(self.inflight))

    def rewind(self) -> None:
        self.cursor = self.acked + 1
        self.buffer.clear()
        self.inflight.clear()
        self.last_fetch = 0.0
        self.last_progress = time.monotonic()


class Syncer:
    """Sends the outbound streams of the store at `store_dir` to the broker, and takes acks and policies back.

    `streams()` is asked every second which streams to send (stream name ->
    OutboundStream; default: every stream the policy lets leave). Each is
    checked against the policy in force in the store (OutboundGate): one the
    policy does not send to that recipient under a consent is refused, named
    in `stats.refused` and logged once. `on_policy(toml_bytes) -> dict` receives an
    owner-signed policy (default: carledger.sync.policy_update.submit_policy, which passes the signed update on);
    `on_disclosure(Disclosure)` is called (from the sync thread) whenever the
    collector acks blocks. `signer` (the vehicle key) signs each policy outcome the status
    carries; without it the outcomes go out unsigned and `remote send-policy --wait`
    does not believe them. Call `notify()` after sealing to send at once.
    """

    def __init__(
        self,
        store_dir: str | Path,
        vehicle_id: str,
        mqtt: MqttConfig,
        streams: Callable[[], Mapping[str, OutboundStream]] | None = None,
        *,
        on_policy: Callable[[bytes], dict] | None = None,
        on_disclosure: Callable[[Disclosure], None] | None = None,
        signer: Signer | None = None,
    ):
        if not topics.valid_vehicle_id(vehicle_id):
            raise ValueError(f"vehicle id {vehicle_id!r} cannot be an MQTT topic level (1-64 of [A-Za-z0-9._:-])")
        self.store_dir = Path(store_dir)
        self.vehicle = vehicle_id
        self.cfg = mqtt
        self.client_id = mqtt.client_id or f"carledger-{vehicle_id}"
        self._gate = OutboundGate(self.store_dir)
        self._streams_fn = streams or self._gate.allowed
        self._collector_keys: dict = {}
        self._logged: set[tuple[str, str]] = set()  # (what, cause) already logged once
        # default: submit_policy, with the signed update; the vehicle key (`signer`) signs each outcome
        self._policy = PolicyHandler(self.store_dir, on_policy, vehicle=vehicle_id, signer=signer)
        self._on_disclosure = on_disclosure
        self.stats = SyncStats()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._packer = BlockPacker(mqtt.compression)
        self._store: Store | None = None
        self._client: paho.Client | None = None
        self._out: dict[str, _Out] = {}
        self._mids: dict[int, tuple[str, int, int]] = {}  # mid -> (stream, seq, row id)
        self._synced: list[int] = []
        self._last_mark = 0.0
        self._last_status = 0.0
        self._last_streams = 0.0
        self._status_due = True
        self._tokens = 0.0
        self._last_tokens = time.monotonic()
        self._subscribed = False
        self._ack_vids: set[str] = set()  # the vehicle ids whose acks this session subscribed to
        self._collection: dict | None = None  # the owner's collection switch, as last read
        self.problems: deque[str] = deque(maxlen=20)

    # -- the public surface ------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the syncer is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="carledger-sync", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Publish the offline status, disconnect cleanly and end the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def notify(self) -> None:
        """New blocks were sealed: look at once instead of at the next poll."""
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(self.cfg.backoff_initial, self.cfg.backoff_max)
        try:
            while not self._stop.is_set():
                try:
                    if self._store is None:
                        self._store = Store.open_marks(self.store_dir)
                    self._session()
                    backoff.reset()
                    continue
                except StoreError as exc:
                    log.warning("sync: store not readable yet: %s", exc)
                except ConnectError as exc:
                    # Once at WARNING, then quietly until a connection works: a wrong host name must not flood the log.
                    level = logging.DEBUG if self.stats.connect_error is not None else logging.WARNING
                    self.stats.connect_error, self.stats.unknown_host = str(exc), exc.unknown_host
                    self.stats.connect_failures += 1
                    log.log(level, "sync: cannot reach the broker: %s (trying again with backoff)", exc)
                except Exception:  # never let the sync thread die: log, back off, try again
                    log.exception("sync: unexpected error; reconnecting")
                self._drop_connection()
                self._stop.wait(backoff.next())
        finally:
            self._drop_connection()
            if self._store is not None:
                self._store.close()
                self._store = None

    def _session(self) -> None:
        """One connection, from CONNACK until it breaks (then return, to reconnect) or stop()."""
        will = (topics.status(self.vehicle), self._status_json("offline", reason="connection lost"))
        client = make_client(self.cfg, self.client_id, will=will)
        client.on_publish = self._on_puback
        client.on_message = self._on_message
        client.on_subscribe = lambda *_: setattr(self, "_subscribed", True)
        connect(client, self.cfg, self._stop.is_set)
        self.stats.connect_error, self.stats.unknown_host = None, False
        self._client = client
        self.stats.connected = True
        self.stats.connects += 1
        self._subscribed = False
        self._mids.clear()
        for out in self._out.values():
            out.rewind()  # resume from the first unacked block: the broker may have lost anything after it
        # A recipient's stream is sent, and acked, under the id its blocks carry (that recipient's pseudonym).
        self._ack_vids = {self.vehicle, *self._store.stream_vids().values()}
        client.subscribe([*((topics.ack(v, "+"), 1) for v in sorted(self._ack_vids)), (topics.policy(self.vehicle), 1)])
        self._status_due = True
        log.info("sync: connected to %s:%s as %s", self.cfg.host, self.cfg.effective_port, self.client_id)
        deadline_sub = time.monotonic() + self.cfg.connect_timeout
        while not self._stop.is_set():
            woken = self._wake.is_set()
            self._wake.clear()
            self._step(woken, time.monotonic() > deadline_sub)
            rc = client.loop(timeout=LOOP)
            if rc != paho.MQTT_ERR_SUCCESS:
                raise ConnectError(f"connection lost: {paho.error_string(rc)}")
        self._goodbye(client)

    def _step(self, woken: bool, subscribed_anyway: bool) -> None:
        """Everything between two network turns: marks, timeouts, status, and sending."""
        now = time.monotonic()
        if now - self._last_streams >= 1.0 or self._gate.changed():  # a new policy counts at once
            self._refresh_streams()
            self._last_streams = now
            collection = self._read_collection()
            if collection != self._collection:  # paused, resumed (by the owner, or a pause's end): say so at once
                self._collection = collection
                self._status_due = True
        if self._synced and (now - self._last_mark >= MARK_EVERY or len(self._synced) >= 512):
            self._flush_marks()
        self._check_timeouts(now)
        if self._status_due or now - self._last_status >= self.cfg.status_interval:
            self._publish_status("online")
        if self._subscribed or subscribed_anyway:  # retained acks come with the SUBACK: wait for them first
            self._fill(now, woken)

    # -- streams and windows -----------------------------------------------------------------

    def _refresh_streams(self) -> None:
        """The streams to send now: what the caller asks for, narrowed by the policy in force (OutboundGate)."""
        try:
            wanted, refused = self._gate.narrow(dict(self._streams_fn()))
        except Exception as exc:  # an owner state that cannot be read sends nothing
            wanted, refused = {}, {}
            self._once("owner-state", str(exc), "sync: cannot read the policy in force; sending nothing: %s", exc)
        for name, why in refused.items():
            self._once(f"refused {name}", why, "sync: stream %s does not leave the car: %s", name, why)
        self.stats.refused = refused
        for name in list(self._out):
            if name not in wanted:
                del self._out[name]
        for name, spec in wanted.items():
            out = self._out.get(name)
            if out is None:
                self._out[name] = _Out(name, spec, self._store.acked_seq(name), self.cfg)
            elif out.spec != spec:
                out.spec = spec
        try:
            self._collector_keys = collector_keys(self.store_dir)
        except KeyFileError as exc:
            self._collector_keys = {}
            self._once("collector-keys", str(exc), "sync: %s; no ack can be checked", exc)
        for recipient in sorted({spec.recipient for spec in wanted.values()} - set(self._collector_keys)):
            self._once("collector-key", recipient, "sync: no collector key is enrolled for %r: its acks cannot be "
                       "checked, so its blocks stay unacked (carledger sync %s --enroll-collector)", recipient,
                       self.store_dir)

    def _once(self, what: str, cause: str, message: str, *args) -> None:
        """Log a warning once per (what, cause): a repeated cause is counted, not repeated in the log."""
        if (what, cause) not in self._logged:
            self._logged.add((what, cause))
            log.warning(message, *args)

    def _fill(self, now: float, woken: bool) -> None:
        """Publish the oldest sendable block over all streams while windows and the bandwidth allow."""
        total_inflight = sum(len(o.inflight) for o in self._out.values())
        while total_inflight < self.cfg.max_inflight:
            best: _Out | None = None
            for out in self._out.values():
                if out.room <= 0:
                    continue
                if not out.buffer and (woken or now - out.last_fetch >= POLL):
                    self._fetch(out, now)
                if out.buffer and (best is None or out.buffer[0].id < best.buffer[0].id):
                    best = out
            if best is None:
                return
            row = best.buffer[0]
            payload = self._packer.pack(self._store.message(row))
            if not self._take_tokens(len(payload)):
                return
            best.buffer.popleft()
            self._publish_block(best, row, payload)
            total_inflight += 1

    def _fetch(self, out: _Out, now: float) -> None:
        out.last_fetch = now
        rows = self._store.unacked_blocks(out.name, out.cursor, out.room)
        until = out.spec.until
        for row in rows:
            if until is not None and row.t1 > until * 1e6:
                break  # sealed after consent ended: never leaves (and nothing after it)
            out.buffer.append(row)
        if len(out.buffer) == len(rows) and rows:
            out.last_fetch = 0.0  # a full window: there may be more right behind it

    def _vid(self, out: _Out, row: BlockRow) -> str:
        """The id `out`'s blocks carry (from its block: a stream's id never changes); its acks are subscribed to."""
        if out.vid is None:
            out.vid = block_vid(row.sign1) or self.vehicle
        if out.vid not in self._ack_vids:
            self._ack_vids.add(out.vid)
            self._client.subscribe(topics.ack(out.vid, "+"), 1)
        return out.vid

    def _publish_block(self, out: _Out, row: BlockRow, payload: bytes) -> None:
        topic = topics.block(self._vid(out, row), out.name)
        info = self._client.publish(topic, payload, qos=1)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_QUEUE_SIZE):
            raise ConnectError(f"publish failed: {paho.error_string(info.rc)}")
        self._mids[info.mid] = (out.name, row.seq, row.id)
        out.cursor = row.seq + 1
        if row.seq <= out.sent_max:
            self.stats.resent += 1
            out.inflight[row.seq] = (row.id, row.count, -1.0)
        else:
            out.inflight[row.seq] = (row.id, row.count, time.monotonic())
            out.sent_max = row.seq
            self.stats.records += row.count
        self.stats.published += 1
        self.stats.payload_bytes += len(payload)
        self.stats.wire_bytes += publish_size(topic, len(payload), self.cfg.protocol == "5")

    def _take_tokens(self, size: int) -> bool:
        rate = self.cfg.bandwidth
        if rate <= 0:
            return True
        now = time.monotonic()
        burst = max(rate, size)
        self._tokens = min(burst, self._tokens + (now - self._last_tokens) * rate)
        self._last_tokens = now
        if self._tokens < size:
            return False
        self._tokens -= size
        return True

    def _check_timeouts(self, now: float) -> None:
        for out in self._out.values():
            if out.inflight and now - out.last_progress > out.window.timeout:
                log.info("sync: stream %s: no ack for %.1f s; sending again from seq %d, one block at a time",
                         out.name, out.window.timeout, out.acked + 1)
                self.stats.timeouts += 1
                out.window.timed_out(len(out.inflight))
                out.rewind()

    # -- broker events -----------------------------------------------------------------------

    def _on_puback(self, _client, _userdata, mid, reason_code, _properties) -> None:
        entry = self._mids.pop(mid, None)
        if entry is None:
            return
        if getattr(reason_code, "is_failure", False):
            self.problems.append(f"broker refused {entry[0]} seq {entry[1]}: {reason_code}")
            log.warning("sync: the broker refused %s seq %d: %s", entry[0], entry[1], reason_code)
            return
        self._synced.append(entry[2])

    def _on_message(self, _client, _userdata, msg) -> None:
        topic = topics.parse(msg.topic)
        if topic is None or topic.vehicle not in self._ack_vids:
            return
        try:
            if topic.kind == topics.ACK:
                self._on_ack(topic.stream, msg.payload, topic.vehicle)
            elif topic.kind == topics.POLICY and topic.vehicle == self.vehicle:
                outcome = self._policy.receive(bytes(msg.payload))
                if outcome is not None:
                    self._status_due = True
        except StoreError:
            raise
        except Exception:
            log.exception("sync: could not handle a message on %s", msg.topic)

    def _on_ack(self, stream: str, payload: bytes, vid: str) -> None:
        """Mark blocks acked, only on an ack the recipient's enrolled collector signed for one of our blocks.

        Anything else is counted per cause (`stats.acks_ignored`), logged once
        per cause, and marks nothing: retention never drops what it vouches for.
        """
        try:
            recipient = self._gate.recipient(stream)
        except Exception as exc:  # an owner state that cannot be read: no recipient, so no key, so no ack counts
            self._once("owner-state", str(exc), "sync: cannot read the policy in force: %s", exc)
            recipient = None
        key = self._collector_keys.get(recipient) if recipient is not None else None
        try:
            out = self._out.get(stream)
            if out is not None and out.vid is not None and out.vid != vid:
                raise AckRejected(WRONG_SUBJECT, f"an ack under vehicle {vid!r} for stream {stream}, which is sent as {out.vid!r}")
            ack = open_ack(payload, key, vid, stream)
        except AckRejected as exc:
            self._ignore_ack(stream, exc.cause, str(exc))
            return
        seq, digest = ack.seq, ack.digest
        mine = self._store.digest_at(stream, seq)
        if mine is None:
            self._ignore_ack(stream, "unknown-block", f"an ack of seq {seq}, which this store does not hold")
            return
        if mine != digest:
            from carledger.owner.wipe import previous_head  # here: carledger.owner imports the sync

            if previous_head(self.store_dir, stream, seq, digest):
                log.info("sync: stream %s: the broker's last ack of the previous owner's chain (before carledger wipe); "
                         "ignored", stream)
                return
            self._ignore_ack(stream, "other-digest", f"the collector acked seq {seq} with digest {digest.hex()[:16]}…, "
                                                     f"ours is {mine.hex()[:16]}…")
            return
        why = keep_receipt(self._store, recipient, key, ack) if recipient is not None else ""
        if why:
            self.stats.receipts_refused += 1
            self.problems.append(f"stream {stream}: receipt refused: {why}")
            self._once("receipt", stream, "sync: stream %s: the ack's receipt is refused: %s", stream, why)
        out = self._out.get(stream)
        stored = self._store.acked_seq(stream) if out is None else None
        known = out.acked if out is not None else (-1 if stored is None else stored)
        if seq <= known:
            return
        self._flush_marks()
        self._store.mark_acked(stream, seq)
        now = time.time()
        self.stats.last_sync = now
        if out is None:
            return
        first = out.acked + 1
        sent = out.inflight.get(seq)
        delay = time.monotonic() - sent[2] if sent is not None and sent[2] >= 0 else None
        records = sum(r for s, (_, r, _t) in out.inflight.items() if s <= seq)
        for s in [s for s in out.inflight if s <= seq]:
            del out.inflight[s]
        self.stats.acked_blocks += seq - out.acked
        out.acked = seq
        if out.cursor <= seq:
            out.cursor = seq + 1
            out.buffer.clear()
            out.last_fetch = 0.0
        while out.buffer and out.buffer[0].seq <= seq:
            out.buffer.popleft()
        out.window.progressed(seq - first + 1, delay, resending=out.cursor <= out.sent_max)
        out.last_progress = time.monotonic()
        if self._on_disclosure is not None:
            try:
                self._on_disclosure(Disclosure(stream, out.spec.recipient, first, seq, records, now))
            except Exception:
                log.exception("sync: the disclosure callback failed")

    def _ignore_ack(self, stream: str, cause: str, detail: str) -> None:
        self.stats.acks_ignored[cause] = self.stats.acks_ignored.get(cause, 0) + 1
        self.problems.append(f"stream {stream}: ack ignored: {detail}")
        self._once("ack", cause, "sync: stream %s: ack ignored (%s): %s; later ones of this cause are only counted",
                   stream, cause, detail)

    def _flush_marks(self) -> None:
        if self._synced:
            ids, self._synced = self._synced, []
            self._store.mark_synced(ids)
        self._last_mark = time.monotonic()

    # -- status ------------------------------------------------------------------------------

    def _status_json(self, state: str, **extra) -> bytes:
        doc = {"vehicle": self.vehicle, "state": state, "t": round(time.time(), 3)}
        doc.update(extra)
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    def _read_collection(self) -> dict | None:
        """The owner's collection switch now (collecting, paused, paused until T), from STORE/owner/.

        Unsigned files, read for the status only: a wrong value shows a wrong
        switch to whoever reads the status, and changes nothing that is recorded or sent.
        """
        from carledger.owner.state import OwnerState  # here: carledger.owner imports the sync

        try:
            return OwnerState.load(self.store_dir).collection(time.time())
        except Exception as exc:  # an owner state that cannot be read: the status says nothing of it
            self._once("owner-state", str(exc), "sync: cannot read the owner state: %s", exc)
            return None

    def status(self, state: str = "online") -> dict:
        """What the retained status says: backlog, last sync, the collection switch, the last policy outcome."""
        backlog = self._store.backlog() if self._store is not None else {}
        return {
            "collection": self._collection if self._collection is not None else self._read_collection(),
            "backlog": {
                "blocks": sum(n for n, _ in backlog.values()),
                "bytes": sum(b for _, b in backlog.values()),
                "streams": {name: n for name, (n, _) in sorted(backlog.items()) if name in self._out},
            },
            "last_sync": None if self.stats.last_sync is None else round(self.stats.last_sync, 3),
            "policy": self._policy.last,
            "problems": list(self.problems)[-5:],
        }

    def _publish_status(self, state: str, **extra) -> paho.MQTTMessageInfo:
        payload = self._status_json(state, **self.status(state), **extra)
        info = self._client.publish(topics.status(self.vehicle), payload, qos=1, retain=True,
                                    properties=status_expiry(self.cfg, state))
        self._last_status = time.monotonic()
        self._status_due = False
        return info

    def _goodbye(self, client: paho.Client) -> None:
        """On stop(): the last marks, a retained offline status, then a clean DISCONNECT (no will)."""
        try:
            self._flush_marks()
            info = self._publish_status("offline", reason="stopped")
            deadline = time.monotonic() + 2.0
            while not info.is_published() and time.monotonic() < deadline:
                client.loop(timeout=0.05)
            self._flush_marks()
            client.disconnect()
            client.loop(timeout=0.05)
        except Exception:
            log.debug("sync: goodbye failed", exc_info=True)

    def _drop_connection(self) -> None:
        if self._client is not None:
            close(self._client)
            self._client = None
        self.stats.connected = False
        if self._store is not None and self._synced:
            try:
                self._flush_marks()
            except StoreError:
                log.warning("sync: could not write the synced marks", exc_info=True)


def publish_size(topic: str, payload: int, v5: bool) -> int:
    """Bytes of a QoS 1 PUBLISH packet: fixed header, topic, packet id, (v5) empty properties, payload."""
    rest = 2 + len(topic.encode()) + 2 + (1 if v5 else 0) + payload
    length = 1
    while rest >= 128 ** length:
        length += 1
    return 1 + length + rest
