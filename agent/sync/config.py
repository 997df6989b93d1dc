"""The `[mqtt]` table of the agent configuration (docs/sync.md), validated with line numbers.

Shared by the agent's sync and the collector: both are MQTT clients of the
same broker with the same kinds of credentials.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from carledger.configtable import ConfigTable
from carledger.tomlfile import TomlDocument

__all__ = ["MqttConfig", "mqtt_config_from_table", "PROTOCOLS"]

PROTOCOLS = ("5", "3.1.1")


@dataclass(frozen=True)
class MqttConfig:
    """How to reach the broker, and how hard to push.

    `window` bounds the blocks of one stream sent but not yet acked by the
    collector; `max_inflight` bounds them over all streams. Keep it below the
    broker's `max_queued_messages` (1000 by default) for the collector, or
    mosquitto drops what does not fit.
    """

    host: str = "localhost"
    port: int | None = None  # None: 8883 with TLS, else 1883
    protocol: str = "5"
    client_id: str | None = None  # None: carledger-<vehicle>
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls: bool = False  # TLS with the system CAs when no tls_ca is given
    keepalive: int = 30
    connect_timeout: float = 10.0
    session_expiry: int = 7 * 86400
    window: int = 64
    max_inflight: int = 256
    ack_timeout: float = 30.0
    backoff_initial: float = 1.0
    backoff_max: float = 120.0
    bandwidth: int = 0  # bytes/s of block payloads, 0: no cap
    status_interval: float = 60.0
    compression: int = 15  # zstd level of block payloads (15: ~9% smaller than 9, ~1 ms a block), 0: none

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.tls_ca is not None or self.tls_cert is not None

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else (8883 if self.uses_tls else 1883)

    def with_(self, **changes: Any) -> "MqttConfig":
        return replace(self, **changes)


_INTS = {
    "port": (1, 65535),
    "keepalive": (5, 65535),
    "session_expiry": (0, 0xFFFFFFFF),
    "window": (1, 10_000),
    "max_inflight": (1, 65535),
    "bandwidth": (0, 1 << 40),
    "compression": (0, 22),
}
_FLOATS = {
    "connect_timeout": 0.1,
    "ack_timeout": 0.1,
    "backoff_initial": 0.01,
    "backoff_max": 0.01,
    "status_interval": 0.1,
}
_TEXTS = ("host", "client_id", "username", "password")
_TOP = {*_INTS, *_FLOATS, *_TEXTS, "protocol", "password_file", "tls"}
_TLS = {"ca", "cert", "key", "enabled"}


def mqtt_config_from_table(doc: TomlDocument, table: dict, prefix: str = "mqtt") -> MqttConfig:
    """The MqttConfig of `table` (a `[mqtt]` table of `doc`); ConfigError naming the line otherwise."""
    t = ConfigTable(doc, table, prefix, _TOP)
    values: dict[str, Any] = {}
    for key in _TEXTS:
        value = t.value(key, (str,), "text")
        if value is not None:
            if not value:
                raise t.error(key, "must not be empty")
            values[key] = value
    for key, (lo, hi) in _INTS.items():
        value = t.value(key, (int,), "an integer")
        if value is not None:
            if not lo <= value <= hi:
                raise t.error(key, f"must be between {lo} and {hi}, got {value}")
            values[key] = value
    for key, lo in _FLOATS.items():
        value = t.value(key, (int, float), "a number of seconds")
        if value is not None:
            if value < lo:
                raise t.error(key, f"must be at least {lo}, got {value}")
            values[key] = float(value)
    protocol = t.value("protocol", (str,), 'text ("5" or "3.1.1")')
    if protocol is not None:
        if protocol not in PROTOCOLS:
            raise t.error("protocol", f'must be "5" or "3.1.1", got {protocol!r}')
        values["protocol"] = protocol
    password_file = t.readable_file("password_file")
    if password_file is not None:
        if "password" in values:
            raise t.error("password_file", "give either password or password_file, not both")
        values["password"] = Path(password_file).read_text(encoding="utf-8").strip()
    if "tls" in table:
        tls = ConfigTable(doc, table["tls"], f"{prefix}.tls", _TLS)
        enabled = tls.value("enabled", (bool,), "true or false")
        values["tls"] = True if enabled is None else enabled
        values["tls_ca"], values["tls_cert"], values["tls_key"] = tls.readable_file("ca"), tls.readable_file("cert"), tls.readable_file("key")
        if not values["tls"]:
            values["tls_ca"] = values["tls_cert"] = values["tls_key"] = None
        if (values["tls_cert"] is None) != (values["tls_key"] is None):
            raise tls.error("cert" if values["tls_cert"] is None else "key", "a client certificate needs both cert and key")
    if values.get("backoff_max", 120.0) < values.get("backoff_initial", 1.0):
        raise t.error("backoff_max", "must not be less than backoff_initial")
    return MqttConfig(**values)
