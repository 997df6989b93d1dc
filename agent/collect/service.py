"""`carledger collect run`: the Collector on an MQTT 5 shared subscription, with acks back to the vehicles.

Messages are verified in batches: what arrives between two network turns (up
to BATCH) is stored in one transaction per vehicle, then acked. An ack is
published only after that transaction is durable, so a vehicle forgets
nothing the collector could still lose.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

import paho.mqtt.client as paho

from carledger.collect.collector import Collector
from carledger.collect.store import StoreUnavailable
from carledger.sync import topics
from carledger.sync.config import MqttConfig
from carledger.sync.mqtt import Backoff, ConnectError, close, connect, make_client

__all__ = ["CollectorService", "DEFAULT_GROUP", "subscription"]

log = logging.getLogger(__name__)

DEFAULT_GROUP = "carledger"
BATCH = 256  # messages verified and stored per transaction, at most
BATCH_WAIT = 0.02  # seconds a partial batch may wait for more
GAP_CHECK = 1.0


def subscription(group: str | None) -> str:
    """The topic filter: a shared subscription of `group` (several collectors split the messages), or plain."""
    base = f"{topics.PREFIX}/+/+/{topics.BLOCK}"
    return f"$share/{group}/{base}" if group else base


class _ReadBuffer:
    """The session's socket for paho, reading ahead: paho asks for each packet in three or more recv calls (the
    command byte, each length byte, the rest), one system call each; this reads up to 256 KiB at once and
    serves them from memory. `pending()` tells paho's loop that bytes wait here (it asks that of TLS sockets
    for the same reason), so it does not sit in select(). Everything else is the socket's."""

    def __init__(self, sock) -> None:
        self._sock = sock
        self._data = memoryview(b"")
        self._pos = 0

    def recv(self, n: int) -> bytes:
        pos, data = self._pos, self._data
        if pos >= len(data):
            chunk = self._sock.recv(max(n, 1 << 18))  # BlockingIOError, TLS's want-read, b"" at the end: as before
            if len(chunk) <= n:
                return chunk
            self._data, self._pos = memoryview(chunk), n
            return chunk[:n]
        end = min(pos + n, len(data))
        self._pos = end
        return data[pos:end].tobytes()

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._data) - self._pos + inner

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class CollectorService:
    """Runs a Collector against a broker until stop(); reconnects with backoff, keeps a persistent session."""

    def __init__(self, path: str | os.PathLike, mqtt: MqttConfig, *, group: str | None = DEFAULT_GROUP,
                 gap_wait: float = 30.0, store: str | None = None):
        self.collector = Collector(path, gap_wait=gap_wait, store=store)
        self.cfg = mqtt
        self.group = group
        self.client_id = mqtt.client_id or f"carledger-collector-{group or 'all'}-{os.uname().nodename}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()
        self._failing = False  # the last connection attempt failed (and was logged)
        self._store_backoff = Backoff(0.2, 5.0)
        self._store_retry = 0.0  # monotonic time before which the store is not tried again
        self._store_failing = False
        self._client: paho.Client | None = None  # while a session is up: publish() goes through it
        # Where the acks of held blocks linked by check_gaps go. A FleetWorker sends them through every broker:
        # the block that closed the gap may have come through another broker than the car's.
        self.gap_acks: Callable[[list[tuple[str, bytes]]], None] | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="carledger-collect", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run(self) -> None:
        """Serve until stop() (or SIGTERM in the CLI); never returns on a broker or message problem."""
        backoff = Backoff(self.cfg.backoff_initial, self.cfg.backoff_max)
        try:
            while not self._stop.is_set():
                try:
                    self._session()
                    backoff.reset()
                    continue
                except ConnectError as exc:
                    # The first failure after a connection (or at start) is a warning, the rest debug:
                    # a wrong host name must not flood the log.
                    log.log(logging.DEBUG if self._failing else logging.WARNING,
                            "collect: cannot reach the broker: %s (trying again with backoff)", exc)
                    self._failing = True
                except Exception:
                    log.exception("collect: unexpected error; reconnecting")
                self.connected.clear()
                self._stop.wait(backoff.next())
        finally:
            self.collector.close()

    def _session(self) -> None:
        client = make_client(self.cfg, self.client_id)
        self._client = client
        client.on_message = lambda _c, _u, msg: self.collector.receive(msg.topic, msg.payload)
        try:
            connect(client, self.cfg, self._stop.is_set)
            if getattr(client, "_sock", None) is not None:  # paho keeps its socket there (2.x)
                client._sock = _ReadBuffer(client._sock)
            client.subscribe(subscription(self.group), qos=1)
            self.connected.set()
            self._failing = False
            log.info("collect: connected to %s:%s as %s, subscribed to %s", self.cfg.host, self.cfg.effective_port,
                     self.client_id, subscription(self.group))
            first_wait = None
            last_gaps = time.monotonic()
            while not self._stop.is_set():
                rc = client.loop(timeout=BATCH_WAIT if self.collector.queued else 0.2)
                now = time.monotonic()
                if self.collector.queued and now >= self._store_retry:
                    first_wait = first_wait or now
                    if self.collector.queued >= BATCH or now - first_wait >= BATCH_WAIT or rc != paho.MQTT_ERR_SUCCESS:
                        self._guarded(client, self.collector.flush)
                        first_wait = None
                if now - last_gaps >= GAP_CHECK and now >= self._store_retry:
                    self._guarded(client, self.collector.check_gaps, self.gap_acks)
                    last_gaps = now
                if rc != paho.MQTT_ERR_SUCCESS:
                    raise ConnectError(f"connection lost: {paho.error_string(rc)}")
            if self.collector.queued:
                self._guarded(client, self.collector.flush)
            client.disconnect()
            client.loop(timeout=0.1)
        finally:
            self.connected.clear()
            self._client = None
            close(client)

    def publish(self, acks: list[tuple[str, bytes]]) -> None:
        """Publish acks through this service's broker, if connected (paho's publish may be called from any thread)."""
        client = self._client
        if client is not None and self.connected.is_set():
            self._send(client, acks)

    def _guarded(self, client: paho.Client, work, send: Callable[[list[tuple[str, bytes]]], None] | None = None) -> None:
        """Run a flush or gap check and publish its acks; an unreachable store (a database restarting) is
        tried again with backoff while the broker connection stays up, the batch kept and nothing acked."""
        try:
            acks = work()
        except StoreUnavailable as exc:
            log.log(logging.DEBUG if self._store_failing else logging.WARNING,
                    "collect: the store is unavailable: %s (trying again with backoff)", exc)
            self._store_failing = True
            self._store_retry = time.monotonic() + self._store_backoff.next()
            return
        if self._store_failing:
            log.info("collect: the store is back")
        self._store_failing = False
        self._store_backoff.reset()
        if send is not None and acks:
            send(acks)
        else:
            self._send(client, acks)

    @staticmethod
    def _send(client: paho.Client, acks: list[tuple[str, bytes]]) -> None:
        for topic, payload in acks:
            client.publish(topic, payload, qos=1, retain=True)
