"""`carledger doctor`: the first command on a new car. Is everything in place to record?

It checks, in the order a fitter would: the configuration; each CAN
interface (up, bitrate, controller state and error counters); what the bus
carries for a few seconds (the share of frames the configured DBCs decode,
and the busiest identifiers they do not know); the owner's policy, checked
as `run` checks it (a missing or invalid one stops `run`, so it is a FAIL
here); the clock; the vehicle key's
permissions; the store (intact, room left); the MQTT broker. Every problem
comes with what to do about it.

Exit status: 0 ready (warnings possible), 1 something to fix, 2 the
configuration cannot be read.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import logging
import os
import shutil
import socket
import sqlite3
import stat
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from carledger.cli._args import address, host_port

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
_RANK = {SKIP: 0, OK: 0, WARN: 1, FAIL: 2}
EARLIEST_SANE_TIME = 1_704_067_200  # 2024-01-01: a clock before that was never set (no RTC, no NTP yet)
MIN_FREE_BYTES = 256 << 20
BUSY_UNKNOWN = 5  # how many unknown identifiers to name

EPILOG = """\
examples:
  carledger doctor                              # /etc/carledger/agent.toml, listening 5 s per bus
  carledger doctor -c agent.toml --listen 10 --json
  carledger doctor -c agent.toml --broker mqtt.example.net:8883

exit status: 0 ready (maybe with warnings), 1 something to fix, 2 the configuration cannot be read.
"""


@dataclass
class Check:
    """One finding: what was checked, how it stands, what was seen, and what to do."""

    name: str
    status: str
    summary: str
    fix: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    from carledger.cli._args import seconds
    from carledger.config import DEFAULT_PATH

    parser = subparsers.add_parser(
        "doctor", help="check interfaces, traffic, clock, key, store and broker before recording",
        description="Check that everything is in place to record, and say what to fix.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", metavar="FILE", default=DEFAULT_PATH, help=f"configuration (default {DEFAULT_PATH})")
    parser.add_argument("--listen", type=seconds, default=5.0, metavar="SECONDS",
                        help="how long to listen to each bus (default 5; 0 skips the traffic check)")
    parser.add_argument("--broker", metavar="HOST:PORT", type=_broker_arg,
                        help="check this MQTT broker instead of the configured one (port 1883 if none)")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carledger.config import ConfigError, load_config
    from carledger.tomlfile import FieldError

    try:
        config = load_config(args.config)
    except (ConfigError, FieldError, OSError) as exc:
        checks = [Check("configuration", FAIL, str(exc), "correct the file (docs/agent.example.toml is the reference)")]
        _print(checks, args.json)
        return 2
    checks = diagnose(config, listen=args.listen, broker=args.broker)
    _print(checks, args.json)
    return 1 if verdict(checks) == FAIL else 0


def diagnose(config: Any, *, listen: float = 5.0, broker: tuple[str, int] | None = None) -> list[Check]:
    """Every check for a loaded configuration, in order."""
    from carledger.sources.bus import unknown_interface

    checks = [Check("configuration", OK, f"{config.path}: {len(config.buses)} bus(es)")]
    for bus in config.buses:
        if bus.is_replay:
            continue
        why = unknown_interface(bus.interface or "")  # what `carledger run` refuses before it opens anything
        if why is not None:  # said even with --listen 0, where no traffic check tries to open the bus
            checks.append(Check(f"bus {bus.name}", FAIL, why, _bus_fix(bus.name)))
        interface = check_interface(str(bus.channel), bus.bitrate, bus.fd) if bus.interface == "socketcan" else None
        if interface is not None:
            checks.append(interface)
        if listen > 0 and interface is not None and interface.status == FAIL:
            checks.append(Check(f"traffic on {bus.name}", SKIP, f"not listened to: interface {bus.channel} is not usable"))
        elif listen > 0:
            checks.append(check_traffic(bus, listen))
    checks.append(check_policy(config))
    checks.append(check_clock(time.time(), config.store))
    checks.append(check_key(config.store))
    checks.append(check_store(config.store))
    checks.append(check_broker(broker or _configured_broker(config)))
    return checks


def verdict(checks: list[Check]) -> str:
    worst = max((_RANK[c.status] for c in checks), default=0)
    return {0: OK, 1: WARN, 2: FAIL}[worst]


# -- interfaces ------------------------------------------------------------------------


def interface_details(name: str) -> dict[str, Any] | None:
    """`ip -details -json link show dev NAME` as a dict (sysfs where `ip` is missing); None when absent."""
    if shutil.which("ip"):
        done = subprocess.run(["ip", "-details", "-json", "link", "show", "dev", name], capture_output=True, text=True)
        if done.returncode != 0:
            return None
        try:
            return json.loads(done.stdout)[0]
        except (ValueError, IndexError):
            return None
    sysfs = Path("/sys/class/net") / name
    if not sysfs.exists():
        return None
    flags = int((sysfs / "flags").read_text(), 16)
    return {"ifname": name, "flags": ["UP"] if flags & 1 else [], "operstate": (sysfs / "operstate").read_text().strip().upper(),
            "mtu": int((sysfs / "mtu").read_text())}


def describe_interface(name: str, details: dict[str, Any] | None, bitrate: int | None, fd: bool) -> Check:
    """The interface check from what `ip -details -json link` says (pure: tested with recorded output)."""
    check_name = f"interface {name}"
    if details is None:
        return Check(check_name, FAIL, "no such interface",
                     f"bring it up: a .network file for {name} (systemd/80-can0.network) or `ip link set {name} up type can bitrate 500000`; "
                     "is the CAN HAT's dtoverlay in /boot/firmware/config.txt?")
    info = details.get("linkinfo", {})
    kind = info.get("info_kind", "?")
    data = info.get("info_data", {}) or {}
    up = "UP" in details.get("flags", [])
    mtu = details.get("mtu")
    facts: dict[str, Any] = {"kind": kind, "up": up, "mtu": mtu}
    if not up:
        return Check(check_name, FAIL, f"{kind} interface is down", f"`ip link set {name} up` (or systemd-networkd)", facts)
    problems: list[tuple[str, str, str]] = []  # (status, what, fix)
    if fd and mtu != 72:
        problems.append((FAIL, f"mtu {mtu}: not CAN FD", f"`ip link set {name} mtu 72` / FDMode=yes in its .network"))
    if kind == "vcan":
        summary = "up (virtual CAN, no bitrate" + (", CAN FD)" if mtu == 72 else ")")
        return _interface_check(check_name, summary, problems, facts)
    state = data.get("state", "unknown")
    counters = data.get("berr_counter", {})
    actual = data.get("bittiming", {}).get("bitrate")
    facts.update(state=state, bitrate=actual, tx_errors=counters.get("tx"), rx_errors=counters.get("rx"),
                 listen_only="LISTEN-ONLY" in data.get("ctrlmode", []))
    summary = f"up, {actual or '?'} bit/s, {state.lower()}"
    if counters:
        summary += f", error counters tx {counters.get('tx', 0)} rx {counters.get('rx', 0)}"
    if bitrate and actual and bitrate != actual:
        problems.append((WARN, f"configured bitrate {bitrate} but the interface runs at {actual}",
                         "make [[bus]] bitrate and the .network BitRate= agree with the car"))
    if state == "BUS-OFF":
        problems.append((FAIL, "bus-off: the controller stopped", "wrong bitrate or wiring; RestartSec= in the .network restarts it"))
    elif state in ("ERROR-PASSIVE", "ERROR-WARNING"):
        problems.append((WARN, f"{state.lower()}: the controller sees many errors", "check the bitrate, CAN-H/CAN-L wiring and termination"))
    return _interface_check(check_name, summary, problems, facts)


def _interface_check(name: str, summary: str, problems: list[tuple[str, str, str]], facts: dict[str, Any]) -> Check:
    if not problems:
        return Check(name, OK, summary, details=facts)
    status = max((p[0] for p in problems), key=_RANK.__getitem__)
    return Check(name, status, summary + "; " + "; ".join(p[1] for p in problems), "; ".join(p[2] for p in problems), facts)


def check_interface(name: str, bitrate: int | None = None, fd: bool = False) -> Check:
    return describe_interface(name, interface_details(name), bitrate, fd)


# -- traffic ---------------------------------------------------------------------------


def known_keys(bus: Any) -> Callable[[int], bool]:
    """Does any configured DBC of the bus define this frame key (J1939 by PGN where the DBC says so)?"""
    from carledger.decode import DecodeTable, load_dbc

    table = DecodeTable([load_dbc(p) for p in bus.dbc], None, j1939=bus.j1939)
    return lambda key: table.lookup(key) is not None


def listen(bus: Any, seconds: float) -> tuple[collections.Counter, int, str | None]:
    """Frames per key on the bus for `seconds` (every identifier, no filter), error frames, and an open error."""
    from carledger.sources import BusSource

    counts: collections.Counter = collections.Counter()
    source = BusSource(bus.name, None, interface=bus.interface, channel=bus.channel, bitrate=bus.bitrate,
                       fd=bus.fd, data_bitrate=bus.data_bitrate, options=bus.options, backoff=(seconds, seconds))
    errors: list[str] = []
    source.on_event = lambda kind, detail: errors.append(detail.get("error", kind)) if kind == "bus-error" else None
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    quiet = logging.getLogger("carledger.sources")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its failures are reported by the check, not logged as they happen
    timer.start()
    try:
        for batch in source.batches(stop):
            counts.update(key for _, key, _ in batch)
    finally:
        timer.cancel()
        quiet.setLevel(level)
        source.close()
    opened = next((e for e in errors if e.startswith("cannot open")), None)
    return counts, source.error_frames, opened


def check_traffic(bus: Any, seconds: float) -> Check:
    name = f"traffic on {bus.name}"
    try:
        known = known_keys(bus)
    except Exception as exc:  # a DBC the agent would refuse as well
        return Check(name, FAIL, f"cannot load the DBCs: {exc}", "carledger dbc check FILE")
    counts, error_frames, cannot_open = listen(bus, seconds)
    if cannot_open and not counts:
        # only a SocketCAN bus has an interface check of its own
        fix = "see the interface check above" if bus.interface == "socketcan" else _bus_fix(bus.name)
        return Check(name, FAIL, f"{bus.interface} {bus.channel}: {cannot_open}", fix)
    return describe_traffic(name, counts, known, seconds, error_frames)


def _bus_fix(name: str) -> str:
    return (f"check bus {name!r} in the configuration: `interface` (a python-can interface, or an installed "
            "plug-in's), `channel` and `options`")


def describe_traffic(name: str, counts: collections.Counter, known: Callable[[int], bool], seconds: float,
                     error_frames: int = 0) -> Check:
    """The traffic check from frame counts per key (pure: unit-tested)."""
    from carledger.sources.frame import EFF_FLAG

    total = sum(counts.values())
    if not total:
        return Check(name, WARN, f"no frames in {seconds:g} s", "is the ignition on, and the bitrate right?",
                     {"frames": 0, "error_frames": error_frames})
    decoded = sum(n for key, n in counts.items() if known(key))
    unknown = sorted(((n, key) for key, n in counts.items() if not known(key)), reverse=True)

    def ident(key: int) -> str:
        return f"{key & 0x1FFFFFFF:08X}" if key & EFF_FLAG else f"{key:03X}"

    busy = [{"id": ident(key), "frames": n, "per_second": round(n / seconds, 1)} for n, key in unknown[:BUSY_UNKNOWN]]
    share = decoded / total
    facts = {"frames": total, "decodable": decoded, "share": round(share, 4), "identifiers": len(counts),
             "unknown_identifiers": len(unknown), "busy_unknown": busy, "error_frames": error_frames}
    summary = f"{total} frames ({total / seconds:.0f}/s), {share:.0%} decodable by the DBCs, {len(unknown)} unknown identifiers"
    if busy:
        summary += "; busiest unknown: " + ", ".join(f"{b['id']} ({b['per_second']:g}/s)" for b in busy)
    if error_frames:
        summary += f"; {error_frames} error frames"
    if decoded == 0:
        return Check(name, FAIL, summary, "none of these frames is in the configured DBCs: is it the right DBC for this car and bus?", facts)
    if share < 0.5 or error_frames:
        return Check(name, WARN, summary, "add a DBC for the unknown identifiers if you need them (opendbc has many cars)"
                     + ("; error frames: check bitrate and wiring" if error_frames else ""), facts)
    return Check(name, OK, summary, details=facts)


# -- the owner's policy ------------------------------------------------------------------


def check_policy(config: Any, now: float | None = None) -> Check:
    """The policy as `run` would put it in force: the same file, the same checks against the same signals.

    `run` refuses to start on a configured policy it cannot read or that is
    invalid, and records nothing but its health without any policy: each is
    a FAIL. A valid file whose version is not higher than the one in force is
    a WARN, since `run` keeps the one in force.
    """
    from datetime import datetime, timezone

    from carledger.decode import DbcError
    from carledger.ledger.store import DB_FILE
    from carledger.owner import OwnerState, OwnerStateError
    from carledger.policy import PolicyError, policy_from_text

    now = time.time() if now is None else now
    in_force = None
    if (Path(config.store) / DB_FILE).exists():  # read only what exists: doctor creates nothing
        try:
            in_force = OwnerState.load(config.store).policy
        except (OwnerStateError, PolicyError, OSError) as exc:
            return Check("policy", FAIL, f"the policy in force in {config.store} cannot be read: {exc}",
                         f"carledger verify {config.store}")
    version = in_force.version if in_force is not None else 0
    if config.policy is None:
        if version:
            return Check("policy", OK, f"none configured; version {version} is in force in {config.store}")
        return Check("policy", FAIL, "no policy: nothing would be recorded but the agent's own health",
                     '[agent] policy = "policy.toml" in the configuration (docs/policy.example.toml), '
                     "or carledger policy apply FILE")
    try:
        text = Path(config.policy).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return Check("policy", FAIL, f"{config.policy}: cannot read: {reason}",
                     "write the owner's policy there (docs/policy.example.toml), or correct [agent] policy")
    try:
        known = _known_signals(config)
    except DbcError as exc:
        return Check("policy", FAIL, f"cannot check it against the car's signals: {exc}", "carledger dbc check FILE")
    try:
        policy = policy_from_text(config.policy, text, known, now=datetime.fromtimestamp(now, timezone.utc))
    except PolicyError as exc:
        problems = str(exc).splitlines()
        summary = f"{config.policy} is not valid ({len(problems)} problem{'s' * (len(problems) != 1)}): {problems[0]}"
        return Check("policy", FAIL, summary, f"carledger policy check {config.policy} (lists every problem)",
                     {"problems": problems})
    leaving = sum(1 for s in policy.streams if not s.local)
    summary = f"{config.policy}: version {policy.version}, {len(policy.streams)} streams ({leaving} leave the car)"
    if version and policy.version <= version and policy.digest() != in_force.digest():
        return Check("policy", WARN, f"{summary}; not higher than version {version} in force, which the agent keeps",
                     f"set version = {version + 1} or higher in {config.policy}")
    return Check("policy", OK, summary)


def _known_signals(config: Any) -> list[tuple[str, str]]:
    """What a policy may name on this car: the signals `run` offers it (the DBCs' and, with OBD-II, the PIDs')."""
    from carledger.diagnostics import known_signals
    from carledger.dispatch import BusDispatch

    return known_signals(config, [BusDispatch(bus) for bus in config.buses])


# -- clock, key, store -------------------------------------------------------------------


class _Timex(ctypes.Structure):
    _fields_ = [("modes", ctypes.c_uint), ("pad", ctypes.c_long * 64)]


def clock_synchronized() -> bool | None:
    """What the kernel says of NTP synchronisation (adjtimex: TIME_ERROR = not synchronised); None if unknown."""
    try:
        state = ctypes.CDLL(None, use_errno=True).adjtimex(ctypes.byref(_Timex()))
    except (OSError, AttributeError):
        return None
    return None if state < 0 else state != 5


def newest_block_time(store: str) -> float | None:
    path = Path(store) / "ledger.sqlite"
    if not path.exists():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            row = conn.execute("SELECT max(t1) FROM blocks").fetchone()
    except sqlite3.Error:
        return None
    return row[0] / 1e6 if row and row[0] is not None else None


def check_clock(now: float, store: str, synchronized: bool | None = None) -> Check:
    synchronized = clock_synchronized() if synchronized is None else synchronized
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    newest = newest_block_time(store)
    facts = {"now": now, "synchronized": synchronized, "newest_block": newest}
    if now < EARLIEST_SANE_TIME:
        return Check("clock", FAIL, f"{stamp}: never set", "enable NTP (systemd-timesyncd) or fit an RTC; "
                     "records would carry this time", facts)
    if newest is not None and now < newest - 60:
        return Check("clock", FAIL, f"{stamp} is before the newest block in the store ({newest:.0f})",
                     "the clock went back: set it (NTP, RTC) before recording", facts)
    if synchronized is False:
        return Check("clock", WARN, f"{stamp}, not synchronised", "enable NTP (timedatectl set-ntp true) or an RTC", facts)
    return Check("clock", OK, f"{stamp}" + (", synchronised" if synchronized else ""), details=facts)


def check_key(store: str) -> Check:
    from carledger.ledger import key_path

    path = key_path(store)
    if not path.exists():
        return Check("vehicle key", OK, f"{path} not created yet (the first run creates it, mode 0600)")
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    dir_mode = stat.S_IMODE(path.parent.stat().st_mode)
    facts = {"path": str(path), "mode": f"{mode:04o}", "dir_mode": f"{dir_mode:04o}", "uid": info.st_uid}
    if mode & 0o077 or dir_mode & 0o077:
        return Check("vehicle key", FAIL, f"{path} is readable by others (mode {mode:04o}, directory {dir_mode:04o})",
                     f"chmod 600 {path}; chmod 700 {path.parent}; and consider the key exposed", facts)
    return Check("vehicle key", OK, f"{path}, mode {mode:04o}", details=facts)


def check_store(store: str) -> Check:
    path = Path(store)
    existing = path if path.exists() else next((p for p in path.parents if p.exists()), Path("/"))
    usage = shutil.disk_usage(existing)
    facts: dict[str, Any] = {"path": store, "free_bytes": usage.free, "total_bytes": usage.total}
    room = f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB"
    low = usage.free < MIN_FREE_BYTES
    fix_room = f"free space on {existing} (retention in the policy, or a larger card)"
    db = path / "ledger.sqlite"
    if not db.exists():
        if not os.access(existing, os.W_OK):
            return Check("store", FAIL, f"{store} does not exist and {existing} is not writable",
                         "create it for the agent's user (systemd: StateDirectory=carledger does)", facts)
        return Check("store", FAIL if low else OK, f"{store} not created yet (the first run creates it); {room}",
                     fix_room if low else "", facts)
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            integrity = conn.execute("PRAGMA quick_check").fetchone()[0]
            blocks = conn.execute("SELECT count(*) FROM blocks").fetchone()[0]
    except sqlite3.Error as exc:
        return Check("store", FAIL, f"{db}: {exc}", "run `carledger verify` on it; restore from the synced copy", facts)
    facts.update(blocks=blocks, integrity=integrity, size_bytes=db.stat().st_size)
    if integrity != "ok":
        return Check("store", FAIL, f"{db}: SQLite says {integrity}", f"carledger verify {store}", facts)
    summary = f"{blocks} blocks, {db.stat().st_size / 2**20:.1f} MiB; {room}"
    return Check("store", FAIL if low else OK, summary, fix_room if low else "", facts)


# -- broker ----------------------------------------------------------------------------


def _broker_arg(text: str) -> tuple[str, int]:
    """`--broker`: HOST (port 1883), HOST:PORT or [IPv6]:PORT, as every command reads an address."""
    try:
        return host_port(text, 1883)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _configured_broker(config: Any) -> tuple[str, int] | None:
    mqtt = getattr(config, "mqtt", None)
    if mqtt is None:
        return None
    port = getattr(mqtt, "effective_port", None) or getattr(mqtt, "port", None) or 1883
    return mqtt.host, int(port)


def mqtt_connack(sock: socket.socket) -> int | None:
    """Sends an MQTT 3.1.1 CONNECT; the CONNACK return code (0 accepted, 4/5 credentials), None if no CONNACK."""
    client = f"carledger-doctor-{os.getpid()}".encode()
    body = struct.pack("!H4sBBH", 4, b"MQTT", 4, 0x02, 10) + struct.pack("!H", len(client)) + client
    sock.sendall(bytes([0x10, len(body)]) + body)
    reply = sock.recv(4)
    if len(reply) == 4 and reply[0] == 0x20:
        sock.sendall(b"\xe0\x00")  # DISCONNECT
        return reply[3]
    return None


def check_broker(broker: tuple[str, int] | None, timeout: float = 3.0) -> Check:
    if broker is None:
        return Check("broker", SKIP, "not configured (no [mqtt] table): records stay in the car")
    host, port = broker
    facts: dict[str, Any] = {"host": host, "port": port}
    where = address(host, port)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if port == 8883:
                return Check("broker", OK, f"{where} reachable (TLS port: the handshake is the agent's)", details=facts)
            code = mqtt_connack(sock)
    except OSError as exc:
        return Check("broker", WARN, f"{where} not reachable: {exc}",
                     "fine while the car has no connectivity; otherwise check host, port and firewall", facts)
    facts["connack"] = code
    if code is None:
        return Check("broker", WARN, f"{where} answers, but not as an MQTT broker", "check the port", facts)
    if code in (4, 5):
        return Check("broker", OK, f"{where} is an MQTT broker; it wants credentials (the agent's are in [mqtt])", details=facts)
    return Check("broker", OK, f"{where} is an MQTT broker (CONNACK {code})", details=facts)


# -- output ----------------------------------------------------------------------------

_VERDICTS = {
    OK: "ready to record",
    WARN: "ready to record, but look at the warnings",
    FAIL: "not ready: fix the failures above",
}


def _print(checks: list[Check], as_json: bool) -> None:
    result = verdict(checks)
    if as_json:
        print(json.dumps({"verdict": result, "checks": [asdict(c) for c in checks]}))
        return
    marks = {OK: "ok  ", WARN: "WARN", FAIL: "FAIL", SKIP: "--  "}
    for c in checks:
        print(f"[{marks[c.status]}] {c.name}: {c.summary}")
        if c.fix and c.status in (WARN, FAIL):
            print(f"       fix: {c.fix}")
    print(f"verdict: {_VERDICTS[result]}", file=sys.stdout)
