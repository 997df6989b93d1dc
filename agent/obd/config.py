"""OBD-II polling settings: a `[bus.obd]` table of a CAN bus, or an ELM327 adapter's table.

The TOML shape is in docs/obd.md. Every mistake is a `ConfigError` naming the
file, the line and the key (``agent.toml:31: bus[0].obd.max_rate: must be
more than 0``), built with the document's `error()` like the rest of the
configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from carledger.configtable import ConfigTable, is_number
from carledger.obd.pids import PIDS, pid_by_name
from carledger.tomlfile import TomlDocument

__all__ = ["ObdConfig", "elm327_config_from_table", "obd_config_from_table", "polling_limits"]

_POLLING = {
    "pids", "id_bits", "ecus", "max_rate", "timeout", "pending_timeout", "dtc_interval", "vin",
    "backoff", "silent_after",
}
_ADAPTER = {"port", "baudrate", "protocol"}
_PROTOCOLS = frozenset("6789")  # python-OBD / ELM327 ATSP numbers of the ISO 15765-4 CAN protocols


@dataclass(frozen=True)
class ObdConfig:
    """What to poll, how fast at most, how long to wait, and (ELM327) which adapter.

    pids: (PID, interval in seconds) pairs. ecus: answer identifiers to
    address physically (0x7E8 ..., 29-bit 0x18DAF1xx); empty means find them
    with a functional request. timeout: seconds to wait for an answer (J1979
    P2, 50 ms, plus margin); pending_timeout after a "response pending" (P2*).
    dtc_interval: seconds between reads of stored, pending and permanent DTCs,
    0 never. backoff: (first, longest) wait while no ECU answers.
    silent_after: unanswered requests in a row that mean the ECUs are gone.
    """

    pids: tuple[tuple[int, float], ...] = ()
    id_bits: int = 11
    ecus: tuple[int, ...] = ()
    max_rate: float = 10.0
    timeout: float = 0.1
    pending_timeout: float = 5.0
    dtc_interval: float = 60.0
    vin: bool = True
    backoff: tuple[float, float] = (1.0, 30.0)
    silent_after: int = 3
    port: str | None = None
    baudrate: int | None = None
    protocol: str | None = None


def _pid(text: str) -> int | None:
    entry = pid_by_name(text)
    if entry is not None:
        return entry.pid
    try:
        pid = int(text, 16)
    except ValueError:
        return None
    return pid if pid in PIDS else None


def polling_limits(fields: ConfigTable) -> tuple[float, tuple[float, float], int]:
    """`max_rate`, `backoff` and `silent_after` of a polling table (OBD or UDS), checked."""
    max_rate = fields.value("max_rate", (int, float), "requests per second", 10.0)
    if not 0 < max_rate <= 100:
        raise fields.error("max_rate", f"must be more than 0 and at most 100 requests per second, got {max_rate!r}")
    backoff = fields.value("backoff", (list,), "[first, longest] seconds", [1.0, 30.0])
    if len(backoff) != 2 or any(not is_number(b) or b <= 0 for b in backoff) \
            or backoff[0] > backoff[1]:
        raise fields.error("backoff", f"expected [first, longest] seconds with 0 < first <= longest, got {backoff!r}")
    silent_after = fields.value("silent_after", (int,), "a whole number", 3)
    if silent_after < 1:
        raise fields.error("silent_after", f"must be at least 1, got {silent_after}")
    return float(max_rate), (float(backoff[0]), float(backoff[1])), silent_after


def _parse(doc: TomlDocument, table: Any, prefix: str, allowed: set[str]) -> tuple[ObdConfig, ConfigTable]:
    fields = ConfigTable(doc, table, prefix, allowed)
    pids_table = fields.value("pids", (dict,), "a table of PID = interval in seconds", {})
    pids = []
    for key, interval in pids_table.items():
        pid = _pid(str(key))
        where = f"pids.{key}"
        if pid is None:
            raise fields.error(where, f"{key!r} is not a standard service 01 PID (hex like \"0D\" or a name like SPEED)")
        if not is_number(interval) or not interval > 0:
            raise fields.error(where, f"expected an interval in seconds, more than 0, got {interval!r}")
        if any(p == pid for p, _ in pids):
            raise fields.error(where, f"PID {pid:02X} is listed twice")
        pids.append((pid, float(interval)))
    id_bits = fields.value("id_bits", (int,), "11 or 29", 11)
    if id_bits not in (11, 29):
        raise fields.error("id_bits", f"expected 11 or 29, got {id_bits!r}")
    ecus = fields.value("ecus", (list,), "a list of answer identifiers", [])
    for ecu in ecus:
        ok = isinstance(ecu, int) and not isinstance(ecu, bool) and (
            0x7E8 <= ecu <= 0x7EF if id_bits == 11 else ecu & 0x1FFFFF00 == 0x18DAF100)
        if not ok:
            wanted = "0x7E8 to 0x7EF" if id_bits == 11 else "0x18DAF100 to 0x18DAF1FF"
            raise fields.error("ecus", f"{ecu!r} is not an ECU answer identifier ({wanted} for {id_bits}-bit)")
    max_rate, backoff, silent_after = polling_limits(fields)
    config = ObdConfig(
        pids=tuple(pids),
        id_bits=id_bits,
        ecus=tuple(ecus),
        max_rate=max_rate,
        timeout=fields.seconds("timeout", 0.1),
        pending_timeout=fields.seconds("pending_timeout", 5.0),
        dtc_interval=fields.seconds("dtc_interval", 60.0, zero=True),
        vin=fields.value("vin", (bool,), "true or false", True),
        backoff=backoff,
        silent_after=silent_after,
    )
    return config, fields


def obd_config_from_table(doc: TomlDocument, table: dict, prefix: str) -> ObdConfig:
    """Polling on a CAN bus, from its `[bus.obd]` table; `prefix` names it in errors (``bus[0].obd``)."""
    config, _ = _parse(doc, table, prefix, _POLLING)
    return config


def elm327_config_from_table(doc: TomlDocument, table: dict, prefix: str) -> ObdConfig:
    """Polling through an ELM327 adapter: the polling keys plus `port`, `baudrate` and `protocol`."""
    config, fields = _parse(doc, table, prefix, _POLLING | _ADAPTER)
    port = fields.value("port", (str,), "a serial port path", None)
    if not port:
        raise fields.error("port", "required: the adapter's serial port (/dev/ttyUSB0, /dev/rfcomm0 ...)")
    baudrate = fields.value("baudrate", (int,), "a whole number", None)
    if baudrate is not None and baudrate <= 0:
        raise fields.error("baudrate", f"must be more than 0, got {baudrate}")
    protocol = fields.value("protocol", (str,), 'a protocol number as a string ("6")', None)
    if protocol is not None and protocol not in _PROTOCOLS:
        raise fields.error("protocol", f"{protocol!r} is not an ISO 15765-4 CAN protocol (\"6\", \"7\", \"8\" or \"9\")")
    bits = 29 if protocol in ("7", "9") else 11 if protocol else config.id_bits
    if protocol and "id_bits" in table and bits != config.id_bits:
        raise fields.error("id_bits", f"protocol {protocol} is {bits}-bit")
    return ObdConfig(**{**config.__dict__, "id_bits": bits, "port": port, "baudrate": baudrate, "protocol": protocol})
