"""The agent's configuration: one TOML file, validated completely at start.

A mistake in the file stops the agent before it touches a bus, with an error
naming the file, the line and the key (``agent.toml:12: bus[0].bitrate:
expected an integer``). `docs/agent.example.toml` is the commented reference.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from carledger.ledger.block import valid_stream_name
from carledger.sources.base import WAKEUP_INTERVAL
from carledger.configtable import NAME, ConfigError, ConfigTable, is_number
from carledger.tomlfile import FieldError, TomlDocument, read_toml

if TYPE_CHECKING:
    from carledger.obd.config import ObdConfig
    from carledger.obd.uds_config import UdsConfig
    from carledger.sync.config import MqttConfig

DEFAULT_PATH = "/etc/carledger/agent.toml"
MIN_WAKEUP_INTERVAL = 0.001
MAX_WAKEUP_INTERVAL = 1.0


@dataclass(frozen=True)
class BusConfig:
    """One CAN bus: a live python-can interface, or a recorded log replayed as one."""

    name: str
    dbc: tuple[str, ...]
    vss: tuple[str, ...] = ()
    interface: str | None = None
    channel: str | None = None
    bitrate: int | None = None
    fd: bool = False
    data_bitrate: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    replay: str | None = None
    replay_channels: tuple[str, ...] = ()
    speed: float = 1.0
    j1939: bool | None = None
    obd: "ObdConfig | None" = None  # poll OBD-II on this bus ([bus.obd]); the only thing the agent ever sends
    obd_listen: bool = False  # decode OBD-II answers another tester's polling puts on the bus (or a log)
    uds: "UdsConfig | None" = None  # [bus.uds]: diagnostic pairs, and DID polling if enabled (docs/uds.md)

    @property
    def is_replay(self) -> bool:
        return self.replay is not None


@dataclass(frozen=True)
class SamplingConfig:
    """On-change sampling with a minimum interval, per signal pattern (first match wins)."""

    min_interval: float = 0.0
    overrides: tuple[tuple[str, float], ...] = ()

    def interval(self, stream: Any, name: str, source: str) -> float:
        """A tap's minimum interval: its stream's own, else the first override matching the signal, else the default."""
        if stream.min_interval is not None:
            return stream.min_interval
        for pattern, interval in self.overrides:
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(source, pattern):
                return interval
        return self.min_interval


@dataclass(frozen=True)
class Config:
    path: str
    store: str
    vehicle: str | None
    buses: tuple[BusConfig, ...]
    policy: str | None = None  # the owner's policy file, applied at start when its version is newer
    policy_streams: dict[str, tuple[str, ...]] | None = None  # `carledger run --stream`: local streams, a policy of their own
    sampling: SamplingConfig = SamplingConfig()
    seal_max_age: float = 1.0
    seal_max_records: int = 5000
    checkpoint_every: int = 16  # blocks of a stream between signed checkpoints of its log (docs/transparency.md)
    witnesses: tuple = ()  # [[witness]]: carledger.sync.witnesses.WitnessConfig, where checkpoints are submitted
    health_interval: float = 60.0
    wakeup_interval: float = WAKEUP_INTERVAL  # seconds between a busy agent's wake-ups (readers and pipeline)
    timezone: str | None = None  # IANA name for local time (night driving); None: the system's
    elm327: tuple["ObdConfig", ...] = ()  # OBD-II through ELM327 adapters ([[elm327]])
    mqtt: "MqttConfig | None" = None  # sync to a broker ([mqtt], docs/sync.md); None: the ledger stays local
    disk_quota_mb: float | None = None  # the store's records are evicted (declared) beyond this size
    key: str | None = None  # the vehicle key's backend, "file:PATH" (docs/key-protection.md); None: STORE/keys/vehicle.key

    def describe(self) -> dict[str, Any]:
        return asdict(self)


_TOP = {"agent", "seal", "sampling", "bus", "stream", "elm327", "mqtt", "witness"}
_AGENT = {"store", "vehicle", "health_interval", "policy", "timezone", "disk_quota_mb", "key", "wakeup_interval"}
_SEAL = {"max_age", "max_records", "checkpoint_every"}
_SAMPLING = {"min_interval", "signals"}
_BUS = {
    "name", "interface", "channel", "bitrate", "fd", "data_bitrate", "options",
    "dbc", "vss", "replay", "replay_channels", "speed", "j1939", "obd", "obd_listen",
    "uds",
}


def _parse_key(agent: ConfigTable) -> str | None:
    """`[agent] key`: a backend this build can use, with a file's path made absolute, or the reason it cannot."""
    from carledger.ledger.keys import check_key_spec

    spec = agent.get("key", str)
    if spec is None:
        return None
    problem = check_key_spec(spec)
    if problem is not None:
        raise agent.error("key", problem)
    return "file:" + agent.resolve(spec.partition(":")[2])


def load_config(path: str | Path = DEFAULT_PATH) -> Config:
    """Read and validate the configuration file; raise ConfigError on the first problem."""
    try:
        doc = read_toml(path)
    except FieldError as exc:
        raise ConfigError(exc.file, exc.line, exc.field, exc.message) from None
    return parse_config(doc)


def parse_config(doc: TomlDocument) -> Config:
    top = ConfigTable(doc, doc.data, "", _TOP)
    agent = ConfigTable(doc, top.get("agent", dict, {}), "agent", _AGENT)
    seal = ConfigTable(doc, top.get("seal", dict, {}), "seal", _SEAL)
    sampling = _parse_sampling(doc, top.get("sampling", dict, {}))

    store = agent.get("store", str, "/var/lib/carledger")
    vehicle = agent.get("vehicle", str)
    if vehicle is not None and not NAME.match(vehicle):
        raise agent.error("vehicle", f"{vehicle!r} is not a valid identifier (letters, digits, _ . -)")

    from carledger.obd.config import elm327_config_from_table

    buses = tuple(_parse_bus(doc, i, table) for i, table in enumerate(_array(top, "bus")))
    elm327 = tuple(
        elm327_config_from_table(doc, table, f"elm327[{i}]") for i, table in enumerate(_array(top, "elm327"))
    )
    mqtt = None
    if "mqtt" in doc.data:
        from carledger.sync.config import mqtt_config_from_table

        mqtt = mqtt_config_from_table(doc, top.get("mqtt", dict, {}), "mqtt")
    witnesses: tuple = ()
    if "witness" in doc.data:  # its module needs http.client and ssl: imported where witnesses are configured
        from carledger.sync.witnesses import witnesses_from_table

        witnesses = tuple(witnesses_from_table(top.get("witness", list, []), top.error))
    if not buses and not elm327:
        raise top.error("bus", "at least one [[bus]] (or [[elm327]] adapter) is required")
    _unique(doc, [b.name for b in buses], "bus")
    if "stream" in doc.data:
        raise top.error(
            "stream[0]", "streams are the owner's to decide: they moved to the policy file "
            "([agent] policy = \"policy.toml\"; see docs/policy.md)",
        )
    policy = agent.get("policy", str)
    timezone = agent.get("timezone", str)
    if timezone is not None:
        _check_timezone(agent, timezone)

    key = _parse_key(agent)

    max_records = seal.get("max_records", int, 5000)
    if max_records < 1:
        raise seal.error("max_records", "must be at least 1")
    checkpoint_every = seal.get("checkpoint_every", int, 16)
    if checkpoint_every < 1:
        raise seal.error("checkpoint_every", "must be at least 1")
    return Config(
        path=doc.path,
        store=agent.resolve(store),
        vehicle=vehicle,
        buses=buses,
        policy=agent.resolve(policy) if policy is not None else None,
        timezone=timezone,
        elm327=elm327,
        mqtt=mqtt,
        disk_quota_mb=agent.number("disk_quota_mb", None, minimum=1.0),
        sampling=sampling,
        key=key,
        seal_max_age=seal.number("max_age", 1.0, minimum=0.001),  # type: ignore[arg-type]
        seal_max_records=max_records,
        checkpoint_every=checkpoint_every,
        witnesses=witnesses,
        health_interval=agent.number("health_interval", 60.0, minimum=1.0),  # type: ignore[arg-type]
        wakeup_interval=_wakeup_interval(agent),
    )


def _wakeup_interval(agent: ConfigTable) -> float:
    """`[agent] wakeup_interval`: 1 ms to 1 s; longer would hold a crash capture's seal (docs/edr.md) too long."""
    value = agent.number("wakeup_interval", WAKEUP_INTERVAL, minimum=MIN_WAKEUP_INTERVAL) or WAKEUP_INTERVAL
    if value > MAX_WAKEUP_INTERVAL:
        raise agent.error("wakeup_interval", f"at most {MAX_WAKEUP_INTERVAL:g} seconds (a crash capture seals that much later)")
    return value


def _array(top: ConfigTable, key: str) -> list[dict[str, Any]]:
    items = top.get(key, list, [])
    for item in items:
        if not isinstance(item, dict):
            raise top.error(key, f"use [[{key}]] tables")
    return items


def _unique(doc: TomlDocument, names: list[str], kind: str) -> None:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            base = doc.error(f"{kind}[{index}].name", f"duplicate {kind} name {name!r}")
            raise ConfigError(base.file, base.line, base.field, base.message)
        seen.add(name)


def _parse_sampling(doc: TomlDocument, table: dict[str, Any]) -> SamplingConfig:
    fields = ConfigTable(doc, table, "sampling", _SAMPLING)
    default = fields.number("min_interval", 0.0)
    overrides = []
    for pattern, value in fields.get("signals", dict, {}).items():
        if not is_number(value) or value < 0:
            raise fields.error(f"signals.{pattern}", "expected a minimum interval in seconds (a number >= 0)")
        overrides.append((pattern, float(value)))
    return SamplingConfig(default or 0.0, tuple(overrides))


def _parse_bus(doc: TomlDocument, index: int, table: dict[str, Any]) -> BusConfig:
    f = ConfigTable(doc, table, f"bus[{index}]", _BUS)
    name = f.name("name")
    replay = f.get("replay", str)
    interface = f.get("interface", str)
    if replay is None and interface is None:
        raise f.error("interface", "a bus needs `interface` (a python-can interface) or `replay` (a log file)")
    if replay is not None and interface is not None:
        raise f.error("replay", "give either `interface` or `replay`, not both")
    obd_only = "obd" in table or table.get("obd_listen") is True  # a bus on the OBD-II port needs no DBC
    dbc = tuple(f.resolve(p) for p in f.strings("dbc", required=not obd_only))
    for i, p in enumerate(dbc):
        if not Path(p).is_file():
            raise f.error("dbc", f"DBC file not found: {p}")
    vss = tuple(f.resolve(p) for p in f.strings("vss"))
    for p in vss:
        if not Path(p).is_file():
            raise f.error("vss", f"VSS mapping file not found: {p}")
    bitrate = f.get("bitrate", int)
    if bitrate is not None and bitrate <= 0:
        raise f.error("bitrate", "must be a positive number of bit/s")
    if replay is not None and not Path(f.resolve(replay)).is_file():
        raise f.error("replay", f"log file not found: {f.resolve(replay)}")
    from carledger.obd.config import obd_config_from_table

    obd = obd_config_from_table(doc, table["obd"], f"bus[{index}].obd") if "obd" in table else None
    if obd is not None and replay is not None:
        raise f.error("obd", "a replayed log cannot be polled; use obd_listen = true to decode the polling it recorded")
    from carledger.obd.uds_config import uds_config_from_table

    uds = uds_config_from_table(doc, table["uds"], f"bus[{index}].uds") if "uds" in table else None
    if uds is not None and uds.poll and replay is not None:
        raise f.error("uds", "a replayed log cannot be polled; its recorded answers are decoded without `poll`")
    return BusConfig(
        name=name,
        dbc=dbc,
        vss=vss,
        interface=interface,
        channel=f.get("channel", (str, int)),
        bitrate=bitrate,
        fd=f.get("fd", bool, False),
        data_bitrate=f.get("data_bitrate", int),
        options=dict(f.get("options", dict, {})),
        replay=f.resolve(replay) if replay is not None else None,
        replay_channels=f.strings("replay_channels"),
        speed=f.number("speed", 1.0) or 0.0,
        j1939=f.get("j1939", bool),
        obd=obd,
        obd_listen=f.get("obd_listen", bool, False),
        uds=uds,
    )


def _check_timezone(fields: ConfigTable, name: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise fields.error("timezone", f"unknown time zone {name!r} (an IANA name such as \"Europe/Berlin\" or \"UTC\")") from None


def replay_config(
    log_path: str,
    dbc: list[str],
    store: str,
    streams: dict[str, list[str]] | None = None,
    *,
    policy: str | None = None,
    fast: bool = False,
    vss: list[str] | None = None,
    vehicle: str | None = None,
    channels: list[str] | None = None,
) -> Config:
    """The configuration `carledger run --replay` builds from its options, validated the same way.

    `streams` ({name: patterns}) makes up a policy of local streams (they never
    leave the car) for working on a log; `policy` names a policy file instead.
    """
    for path in dbc:
        if not Path(path).is_file():
            raise ConfigError("--dbc", None, "", f"DBC file not found: {path}")
    if not Path(log_path).is_file():
        raise ConfigError("--replay", None, "", f"log file not found: {log_path}")
    from carledger.sources.replay import check_log

    check_log(log_path)  # ReplayError before anything is created for a log that cannot be read
    if policy is not None and not Path(policy).is_file():
        raise ConfigError("--policy", None, "", f"policy file not found: {policy}")
    for name in streams or {}:
        if not valid_stream_name(name):
            raise ConfigError("--stream", None, "", f"{name!r} is not a valid stream name (1-64 of [A-Za-z0-9._:-], alphanumeric first)")
    bus = BusConfig(
        name="replay",
        dbc=tuple(str(Path(p).resolve()) for p in dbc),
        vss=tuple(str(Path(p).resolve()) for p in (vss or [])),
        replay=str(Path(log_path).resolve()),
        replay_channels=tuple(channels or ()),
        speed=0.0 if fast else 1.0,
    )
    return Config(
        path="(command line)", store=str(Path(store).resolve()), vehicle=vehicle, buses=(bus,),
        policy=str(Path(policy).resolve()) if policy else None,
        policy_streams={name: tuple(patterns) for name, patterns in streams.items()} if streams else None,
    )


def local_streams_policy(streams: Mapping[str, Sequence[str]], version: int = 1) -> str:
    """Policy text for command-line streams: local (never sent), every class allowed."""
    lines = [f"version = {version}", ""]
    for name, patterns in streams.items():
        lines += [
            "[[stream]]",
            f"name = {_toml_string(name)}",
            "local = true",
            'purpose = "streams given on the command line"',
            "signals = [" + ", ".join(_toml_string(p) for p in patterns) + "]",
            'allow = ["location", "personal"]',
            "",
        ]
    return "\n".join(lines)


def stream_option_problems(streams: Mapping[str, Sequence[str]], problems: Sequence[FieldError]) -> str:
    """The problems of the policy `local_streams_policy` made up, said about the `--stream` options typed.

    The made-up policy is no file the user wrote, so its line numbers mean
    nothing to them; each problem names the `--stream NAME=PATTERNS` it comes from.
    """
    names = list(streams)
    lines = []
    for problem in problems:
        at = re.match(r"stream\[(\d+)\]", problem.field or "")
        if at and int(at.group(1)) < len(names):
            name = names[int(at.group(1))]
            lines.append(f"--stream {name}={','.join(streams[name])}: {problem.message}")
        else:
            lines.append(f"--stream: {problem.message}")
    return "\n".join(lines)


def _toml_string(text: str) -> str:
    import json

    return json.dumps(text)
