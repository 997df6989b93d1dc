"""paho-mqtt 2.x clients from an MqttConfig, connected synchronously, and reconnect backoff.

Both the agent's sync and the collector drive paho from their own thread
(`client.loop()`), so every callback runs in that thread and their state needs
no locks. A fresh client is made for every connection: the broker keeps the
session (clean_start off, session expiry), and the caller decides what to send
again instead of paho replaying its own queue.
"""

from __future__ import annotations

import logging
import math
import random
import socket
import ssl
import time
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from carledger.sync.config import MqttConfig

__all__ = ["Backoff", "ConnectError", "make_client", "connect", "is_v5", "status_expiry"]

#: An online status (and the policy outcome it carries) outlives its use after this many status intervals.
STATUS_LIFETIMES = 3

log = logging.getLogger(__name__)


class ConnectError(Exception):
    """The broker could not be reached, refused us, or did not answer in time.

    `unknown_host`: the host name does not resolve, which waiting will rarely
    fix (a typo): a command gives up at once, the agent keeps trying quietly.
    """

    def __init__(self, message: str, *, unknown_host: bool = False):
        super().__init__(message)
        self.unknown_host = unknown_host


class Backoff:
    """Exponential reconnect delays with jitter: a fleet that lost its broker does not return in step."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None):
        self.initial, self.maximum = initial, maximum
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The next delay: half the exponential step plus a random share of the other half."""
        step = min(self.maximum, self.initial * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return step / 2 + self._rng.uniform(0, step / 2)

    def reset(self) -> None:
        self.attempt = 0


def is_v5(cfg: MqttConfig) -> bool:
    return cfg.protocol == "5"


def status_expiry(cfg: MqttConfig, state: str) -> Properties | None:
    """The MQTT 5 Message Expiry of a retained status: an "online" status expires after a few status intervals,
    so a reader never takes a car's backlog or policy outcome from long ago for today's (a fresh one replaces it
    every interval). An "offline" one (a clean stop; the will) does not: it is the last word until the car returns.
    """
    if not is_v5(cfg) or state != "online":
        return None
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = max(1, math.ceil(STATUS_LIFETIMES * cfg.status_interval))
    return props


def make_client(cfg: MqttConfig, client_id: str, *, will: tuple[str, bytes] | None = None) -> paho.Client:
    """A paho client with the config's protocol, credentials, TLS and (optionally) a retained QoS 1 last will."""
    v5 = is_v5(cfg)
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=None if v5 else cfg.session_expiry == 0,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        reconnect_on_failure=False,
    )
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password)
    if cfg.uses_tls:
        client.tls_set(ca_certs=cfg.tls_ca, certfile=cfg.tls_cert, keyfile=cfg.tls_key, cert_reqs=ssl.CERT_REQUIRED)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.max_inflight_messages_set(max(20, cfg.max_inflight))
    client.connect_timeout = cfg.connect_timeout
    return client


def connect(client: paho.Client, cfg: MqttConfig, stopping: Callable[[], bool] = lambda: False) -> bool:
    """Connect and wait for the CONNACK; returns whether the broker kept our session.

    The session persists (no clean start) for `session_expiry` seconds after
    a disconnect; with 0 it is a clean session that ends with the connection.

    ConnectError when the broker is unreachable, refuses, or does not answer
    within `connect_timeout` (a paused broker accepts TCP and says nothing).
    """
    result: dict = {}

    def on_connect(_c, _u, flags, reason_code, props):
        result["rc"] = reason_code
        result["session"] = bool(getattr(flags, "session_present", False))
        result["receive_maximum"] = getattr(props, "ReceiveMaximum", None)

    previous = client.on_connect
    client.on_connect = on_connect
    kwargs: dict = {}
    if is_v5(cfg):
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = cfg.session_expiry
        kwargs = {"clean_start": cfg.session_expiry == 0, "properties": props}
    try:
        client.connect(cfg.host, cfg.effective_port, keepalive=cfg.keepalive, **kwargs)
    except socket.gaierror as exc:
        raise ConnectError(f"{cfg.host}:{cfg.effective_port}: unknown host ({exc.strerror})", unknown_host=True) from None
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise ConnectError(f"{cfg.host}:{cfg.effective_port}: {exc}") from None
    deadline = time.monotonic() + cfg.connect_timeout
    try:
        while "rc" not in result:
            if time.monotonic() > deadline or stopping():
                raise ConnectError(f"{cfg.host}:{cfg.effective_port}: no CONNACK within {cfg.connect_timeout} s")
            rc = client.loop(timeout=0.05)
            if rc not in (paho.MQTT_ERR_SUCCESS,) and "rc" not in result:
                raise ConnectError(f"{cfg.host}:{cfg.effective_port}: {paho.error_string(rc)}")
    except ConnectError:
        close(client)
        raise
    finally:
        client.on_connect = previous
    if result["rc"].is_failure:
        close(client)
        raise ConnectError(f"{cfg.host}:{cfg.effective_port}: refused: {result['rc']}")
    honour_receive_maximum(client, result["receive_maximum"])
    return result["session"]


def honour_receive_maximum(client: paho.Client, receive_maximum: int | None) -> None:
    """Never have more QoS 1 messages out without a PUBACK than the broker's CONNACK said it takes.

    MQTT 5 §3.2.2.3.3: a client that exceeds the server's Receive Maximum is
    disconnected (0x93). paho reads the property but does not apply it, so we
    lower its in-flight cap; what paho cannot send yet waits in its queue, in
    order. The value is the broker's own, unsigned: trusting it can only slow
    the car's sending (at least 1 stays in flight), never lose or alter a
    block, and only the collector's signed ack marks one delivered.
    """
    if receive_maximum:
        # paho's setter refuses once connected, for fear of a switch between 0 (no cap) and a cap. Here both the
        # old value (make_client: at least 20) and the new one are caps > 0, and nothing was published yet
        # (we are still in connect()), so paho's in-flight count is 0 and its queue logic holds.
        client._max_inflight_messages = max(1, min(client.max_inflight_messages, int(receive_maximum)))


def close(client: paho.Client) -> None:
    """Drop the connection without a DISCONNECT (the will stays armed) and never raise."""
    try:
        sock = client.socket()
        if sock is not None:
            sock.close()
    except Exception:  # pragma: no cover - best effort on a dead socket
        pass
