"""A real Debian mosquitto for the tests: a free loopback port, a generated configuration in tmp_path.

    broker = Broker(tmp_path / "broker").start()              # plain TCP, anonymous
    broker = Broker(dir, ca=TestCA(dir / "ca")).start()       # TLS, client certificates, ACL by CN
    broker.kill(); broker.start()                             # SIGKILL and restart on the same port
    broker.pause(); broker.resume()                           # SIGSTOP / SIGCONT

The TLS set-up is the one docs/sync.md documents (deploy/mosquitto/): a test
CA, a server certificate for 127.0.0.1, one client certificate per vehicle
whose CN is the vehicle id (`use_identity_as_username`), and the ACL patterns
of deploy/mosquitto/acl so a vehicle reaches only carledger/v1/<its id>/.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import REPO, wait_until

MOSQUITTO = "/usr/sbin/mosquitto"
ACL = REPO / "deploy" / "mosquitto" / "acl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class TestCA:
    """A throw-away certificate authority (openssl), its server certificate, and client certificates by name."""

    __test__ = False

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.cert = self.path / "ca.crt"
        if not self.cert.exists():
            _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                     "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=carledger test CA",
                     cwd=self.path)
        self.server = self.issue("127.0.0.1", server=True)

    def issue(self, name: str, *, server: bool = False) -> tuple[Path, Path]:
        """(certificate, key) for CN=name, signed by this CA; a server certificate also gets IP:name as SAN."""
        crt, key = self.path / f"{name}.crt", self.path / f"{name}.key"
        if crt.exists():
            return crt, key
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", key.name, "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=self.path)
        ext = self.path / f"{name}.ext"
        ext.write_text(f"subjectAltName=IP:{name}\n" if server else "extendedKeyUsage=clientAuth\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", crt.name, "-days", "2", "-extfile", ext.name, cwd=self.path)
        os.chmod(key, 0o600)
        return crt, key


class Broker:
    """One mosquitto process; persistence on, so a restart keeps sessions and retained messages."""

    def __init__(self, path: Path, *, ca: TestCA | None = None, max_queued: int = 1000, extra: str = ""):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.ca = ca
        self.port = free_port()
        self.host = "127.0.0.1"
        self.proc: subprocess.Popen | None = None
        self.log = self.path / "mosquitto.log"
        lines = [
            "per_listener_settings false",
            f"user {pwd.getpwuid(os.getuid()).pw_name}",  # as root, mosquitto would drop to a user that cannot read tmp_path
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.path}/",
            "autosave_interval 1",
            f"max_queued_messages {max_queued}",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if ca is None:
            lines.append("allow_anonymous true")
        else:
            crt, key = ca.server
            lines += [
                f"cafile {ca.cert}",
                f"certfile {crt}",
                f"keyfile {key}",
                "require_certificate true",
                "use_identity_as_username true",
                "allow_anonymous false",
                f"acl_file {ACL}",
            ]
        self.conf = self.path / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n" + extra)

    def start(self) -> "Broker":
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            wait_until(lambda: _port_open(self.port) or self.proc.poll() is not None, timeout=10)
        except AssertionError:
            self.kill()
            raise
        if self.proc.poll() is not None:
            err = self.proc.stderr.read().decode(errors="replace")
            self.proc = None
            raise RuntimeError(f"mosquitto did not start: {err}\n{self.log_text()}")
        return self

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: what a crash or a power cut does to the broker."""
        if self.proc is not None:
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc.stderr.close()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc.stderr.close()
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the broker keeps its sockets and says nothing, like a dead network path."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def require_mosquitto() -> None:
    if not os.path.exists(MOSQUITTO):
        pytest.skip(f"{MOSQUITTO} is not installed (scripts/setup installs Debian's mosquitto)")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")


@pytest.fixture
def broker(tmp_path):
    require_mosquitto()
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def tls_broker(tmp_path):
    require_mosquitto()
    b = Broker(tmp_path / "broker", ca=TestCA(tmp_path / "ca")).start()
    yield b
    b.stop()


# -- the agent's and the collector's side, for the tests that need both ------------------------

T0 = 1_700_000_000.0


def mqtt_for(broker: Broker, **changes):
    """An MqttConfig for `broker` with test timings: quick reconnects, short ack timeout, frequent status."""
    from carledger.sync import MqttConfig

    cfg = MqttConfig(host=broker.host, port=broker.port, keepalive=5, connect_timeout=2.0, backoff_initial=0.05,
                     backoff_max=0.5, ack_timeout=2.0, status_interval=1.0)
    return cfg.with_(**changes)


def tls_for(broker: Broker, name: str, **changes):
    """The MqttConfig of the client certificate CN=name (a vehicle id, "collector", or an owner)."""
    crt, key = broker.ca.issue(name)
    return mqtt_for(broker, tls_ca=str(broker.ca.cert), tls_cert=str(crt), tls_key=str(key), **changes)


class Drive:
    """Seals blocks into an agent store the way the pipeline does: one seal per tick, every stream.

    Like the pipeline, it works under a policy: when the store has none, grant()'s, for those of its
    streams that RECIPIENTS names (the others stay in the car).
    """

    def __init__(self, store: Path, vehicle: str = "car-1", streams: tuple[str, ...] = ("speed", "gps"), per_block: int = 20):
        from carledger.ledger import Ledger
        from carledger.owner import OwnerState

        self.ledger = Ledger.open(store, vehicle)
        if not OwnerState.load(store).policy.version:
            grant(store, {s: RECIPIENTS[s] for s in streams if s in RECIPIENTS})
        self._name_the_car(store, streams)
        self.streams = streams
        self.per_block = per_block
        self.blocks = 0  # ticks sealed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _name_the_car(self, store: Path, streams: tuple[str, ...]) -> None:
        """Each stream's blocks name the car as the pipeline's would: a recipient's stream by its pseudonym,
        a stream the policy no longer has as its chain does."""
        from carledger.ledger import load_or_create_secret
        from carledger.owner import OwnerState
        from carledger.owner.streams import name_the_car

        secret = load_or_create_secret(store)
        self.ledger.load_certified(secret)
        policy = {s.name: s for s in OwnerState.load(store).policy.streams}
        for name in streams:
            writer = self.ledger.writer(name)
            stream = policy.get(name)
            if stream:
                name_the_car(self.ledger, writer, stream, secret)
            else:
                writer.vid = writer.chain_vid

    def tick(self) -> None:
        t = T0 + self.blocks
        for s in self.streams:
            w = self.ledger.writer(s)
            for i in range(self.per_block):
                w.add_sample(t + i / self.per_block, f"Vehicle.{s}", float((self.blocks * 7 + i) % 50), "ECU.SIG")
        self.ledger.seal()
        self.blocks += 1

    def start(self, period: float) -> "Drive":
        def loop():
            while not self._stop.wait(period):
                self.tick()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.ledger.close()


def start_collector(path: Path, cfg, *, group: str | None = "carledger", gap_wait: float = 30.0):
    """A CollectorService in a thread, connected and subscribed."""
    from carledger.collect import CollectorService

    service = CollectorService(path, cfg, group=group, gap_wait=gap_wait)
    service.start()
    wait_until(service.connected.is_set, timeout=10)
    return service


RECIPIENTS = {"speed": "insurer", "gps": "fleet"}  # the recipients the policy of grant() names by default


def grant(store: Path, streams: dict[str, str] | None = None, local: tuple[str, ...] = (), version: int = 1,
          identity: str = "vin") -> None:
    """Put a policy in force in `store` that sends each of `streams` (name -> recipient) under a consent
    covering T0 (the Drive's time), and keeps `local` in the car: what the sync needs before anything leaves.

    `identity`: "vin" (default) names the car by its vehicle id on every stream, so that the tests of the
    sync's and the collector's mechanics address one car by one id and key; "pseudonym" gives each recipient
    its own id and key (tests/test_unlinkable_recipients.py, and every test that runs the agent itself).
    """
    from carledger.owner import OwnerState
    from carledger.policy import policy_from_text

    lines = [f"version = {version}"]
    named = 'identity = "vin"\nallow = ["personal"]' if identity == "vin" else f'identity = "{identity}"'
    for name, recipient in (RECIPIENTS if streams is None else streams).items():
        lines += ["[[stream]]", f'name = "{name}"', f'recipient = "{recipient}"', 'purpose = "test"', named,
                  'signals = ["Vehicle.*"]', "consent = { granted = 2023-06-01T00:00:00Z, expires = 2025-05-01T00:00:00Z }"]
    for name in local:
        lines += ["[[stream]]", f'name = "{name}"', "local = true", 'signals = ["Vehicle.*"]']
    text = "\n".join(lines) + "\n"
    state = OwnerState.load(store)
    state.install_policy(policy_from_text("test-policy", text, check_expiry=False), text.encode())


def recipient_identity(store: Path, recipient: str, vehicle: str | None = None) -> tuple[str, bytes]:
    """(the id the recipient knows the car by, the public key its blocks verify with), as `carledger remote
    identity --recipient` prints them: the recipient's pseudonym and own key, or the vehicle's for the VIN."""
    from carledger.cli.remote import recipient_identity as identity

    doc = identity(store, recipient)
    return doc["vehicle"], bytes.fromhex(doc["public_key"])


def enroll(collector_dir: Path, vehicle: str, store: Path, recipients: tuple[str, ...] = (),
           only: tuple[str, ...] | None = None, into=None) -> None:
    """Pair a car and a collector both ways: the car's key in the collector, the collector's ack key in the car
    (for `recipients` and every recipient the car's policy names).

    The collector enrols the vehicle key under `vehicle`, and for each recipient the id and key that recipient
    knows the car by (its pseudonym and own key: `carledger remote identity --recipient`). `only`: enrol just
    these recipients' identities (each recipient's own collector), not the vehicle's. `into`: an open
    CollectorStore (a PostgreSQL one) to enrol in instead of collector_dir's, which then holds only the ack key.
    """
    from carledger.collect import Registry
    from carledger.owner import OwnerState
    from carledger.sync import collector_key, enroll_collector

    policy = OwnerState.load(store).policy
    named = {s.recipient for s in policy.streams if s.recipient}
    registry = into if into is not None else Registry(collector_dir)
    if only is None:
        registry.enroll(vehicle, store / "keys" / "vehicle.pub")
    if named or recipients or only:
        from carledger.ledger import load_or_create_secret

        load_or_create_secret(store)  # as the agent does when it starts (atomic: one secret whoever is first)
    for recipient in sorted({*named, *recipients} if only is None else set(only)):
        vid, pub = recipient_identity(store, recipient)
        if vid != vehicle or only is not None:
            registry.enroll(vid, pub)
    if into is None:
        registry.close()
    recipients = {*recipients, *(named if only is None else only)}
    if policy.edr is not None and policy.edr.recipient:
        recipients.add(policy.edr.recipient)
    key = collector_key(collector_dir).verify_key
    for recipient in recipients:
        enroll_collector(store, recipient, key)


def chains(store: Path) -> dict[str, list[tuple[int, bytes]]]:
    """Every stream's blocks as stored, in storage order: [(seq, digest)]."""
    from carledger.ledger import Store

    with Store.open_readonly(store) as s:
        out: dict[str, list[tuple[int, bytes]]] = {}
        for row in s.iter_blocks():
            out.setdefault(row.stream, []).append((row.seq, bytes(row.digest)))
        return out


def all_acked(store: Path) -> bool:
    from carledger.ledger import Store

    with Store.open_readonly(store) as s:
        return s.block_count() > 0 and not s.backlog()


def assert_same_ledgers(store: Path, collector_dir: Path, vehicle: str, streams: set[str] | None = None) -> None:
    """The collector holds every sealed block of every (outbound) stream once, in order, and its copy verifies."""
    from carledger.verify import verify_store

    agent = chains(store)
    if streams is not None:
        agent = {name: blocks for name, blocks in agent.items() if name in streams}
    vids = stream_vids(store)
    copies: dict[str, dict] = {}
    for stream, blocks in agent.items():
        vid = vehicle if vids[stream] == vehicle_id(store) else vids[stream]  # a recipient's: under its pseudonym
        copy = copies.setdefault(vid, chains(collector_dir / "vehicles" / vid))
        assert copy.get(stream) == blocks, f"stream {stream}: {len(copy.get(stream, []))} blocks collected of {len(blocks)}"
        assert [seq for seq, _ in blocks] == list(range(len(blocks)))
    assert {s for copy in copies.values() for s in copy} == set(agent)
    for vid in copies:
        report = verify_store(collector_dir / "vehicles" / vid)
        assert report.ok, report.problems


def stream_vids(store: Path) -> dict[str, str]:
    """Per stream of the car's store, the vehicle id its blocks carry (a recipient's pseudonym, or the car's id)."""
    from carledger.ledger import Store

    with Store.open_readonly(store) as s:
        return s.stream_vids()


def vehicle_id(store: Path) -> str:
    from carledger.ledger import Store

    with Store.open_readonly(store) as s:
        return s.vehicle_id


def copies(collector_dir: Path, store: Path) -> dict[str, list[tuple[int, bytes]]]:
    """`chains` of the collector's copy of the car at `store`: each stream from the replica of the id it carries."""
    out: dict[str, list[tuple[int, bytes]]] = {}
    for vid in sorted(set(stream_vids(store).values())):
        if (collector_dir / "vehicles" / vid).is_dir():
            out.update({s: b for s, b in chains(collector_dir / "vehicles" / vid).items() if stream_vids(store).get(s) == vid})
    return out


def replica(collector_dir: Path, store: Path, stream: str) -> Path:
    """Where the collector keeps `stream` of the car at `store`: COLLECTOR/vehicles/<the id its blocks carry>."""
    return collector_dir / "vehicles" / stream_vids(store)[stream]
