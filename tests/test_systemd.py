"""systemd deployment: the units pass systemd's own checks, the exposure score, and the liveness watchdog."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from configparser import ConfigParser
from pathlib import Path

import can
import pytest

from carledger.config import local_streams_policy
from carledger.dbc import path as dbc_path
from carledger.notify import Notifier, Watchdog
from carledger.sources import BusSource
from conftest import wait_until

SYSTEMD = Path(__file__).resolve().parents[1] / "systemd"
SERVICE = SYSTEMD / "carledger.service"
CONSOLE = SYSTEMD / "carledger-console.service"
INSTALLED_PATH = "/opt/carledger/bin/carledger"  # where docs/raspberry-pi.md installs the agent
NETWORKD = Path("/lib/systemd/systemd-networkd")

needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (scripts/setup installs systemd)"
)


def service_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in SERVICE.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@needs_systemd
@pytest.mark.parametrize("service", [SERVICE, CONSOLE], ids=lambda p: p.name)
def test_the_service_passes_systemd_analyze_verify(tmp_path, service):
    # verify also checks that ExecStart's program exists: point it at this checkout's carledger
    installed = shutil.which("carledger", path=str(Path(sys.executable).parent))
    assert installed
    text = service.read_text()
    assert text.count(INSTALLED_PATH) == 1
    unit = tmp_path / service.name
    unit.write_text(text.replace(INSTALLED_PATH, installed))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (0, "")


@needs_systemd
def test_a_misspelt_setting_would_fail_that_check(tmp_path):
    unit = tmp_path / "carledger.service"
    unit.write_text(SERVICE.read_text().replace(INSTALLED_PATH, sys.executable).replace("ProtectHome=", "ProtectHomes="))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert "Unknown key" in done.stderr


@needs_systemd
@pytest.mark.parametrize("service", [SERVICE, CONSOLE], ids=lambda p: p.name)
def test_exposure_score(capsys, service):
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(service)], capture_output=True, text=True,
    )
    match = re.search(rf"Overall exposure level for {re.escape(service.name)}: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    with capsys.disabled():
        print(f"\nsystemd-analyze security --offline=yes systemd/{service.name}: exposure {match.group(1)}")
    assert float(match.group(1)) <= 2.0


def test_the_service_is_a_hardened_notify_service():
    s = service_settings()
    assert s["Type"] == ["notify"] and s["Restart"] == ["on-failure"] and int(s["WatchdogSec"][0]) > 0
    assert s["User"] == ["carledger"] and s["StateDirectory"] == ["carledger"] and s["ConfigurationDirectory"] == ["carledger"]
    assert set(s["RestrictAddressFamilies"][0].split()) == {"AF_CAN", "AF_UNIX", "AF_INET", "AF_INET6"}
    assert s["CapabilityBoundingSet"] == [""] and s["NoNewPrivileges"] == ["yes"]
    assert s["ProtectSystem"] == ["strict"] and s["ProtectHome"] == ["yes"] and s["PrivateTmp"] == ["yes"]
    assert "@system-service" in s["SystemCallFilter"]
    assert s["ExecStart"][0].endswith("run -c /etc/carledger/agent.toml")


@pytest.mark.skipif(not NETWORKD.exists(), reason="systemd-networkd not installed (scripts/setup installs systemd)")
@pytest.mark.parametrize("name", ["80-can0.network", "80-vcan0.netdev", "80-vcan0.network"])
def test_networkd_files_use_settings_this_systemd_knows(name):
    parser = ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(SYSTEMD / name)
    known = NETWORKD.read_bytes()  # networkd's table of Section.Key names is in its binary
    keys = [f"{section}.{key}" for section in parser.sections() for key in parser[section]]
    assert keys
    assert [k for k in keys if k.encode() not in known] == []
    if name == "80-can0.network":
        assert int(parser["CAN"]["BitRate"]) > 0 and parser["CAN"]["ListenOnly"] == "yes"
    if name.endswith(".netdev"):
        assert parser["NetDev"]["Kind"] == "vcan"


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers not installed")
def test_sysusers_file_creates_the_service_user(tmp_path):
    (tmp_path / "etc").mkdir()
    done = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", "--dry-run", str(SYSTEMD / "carledger.sysusers")],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "Creating user 'carledger'" in done.stdout + done.stderr


# -- the watchdog: fed by the pipeline's liveness ---------------------------------------


class Listener:
    """A NOTIFY_SOCKET as systemd has it: a unix datagram socket, read in a thread."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except OSError:
                return

    def count(self, text: str) -> int:
        return sum(text in m for m in list(self.messages))


class HangingBus(can.BusABC):
    """A bus whose driver call never returns once `hang` is set (a wedged USB adapter)."""

    hang = threading.Event()
    release = threading.Event()
    inside = threading.Event()

    def __init__(self, channel=None, **kwargs):
        super().__init__(channel=channel, **kwargs)

    def _recv_internal(self, timeout):
        if HangingBus.hang.is_set():
            HangingBus.inside.set()
            HangingBus.release.wait()
        time.sleep(min(timeout or 0, 0.02))
        return None, False

    def send(self, msg, timeout=None):
        raise can.CanOperationError("read-only")


def test_watchdog_is_fed_only_while_sources_and_store_are_alive(tmp_path, monkeypatch):
    monkeypatch.setitem(can.interfaces.BACKENDS, "hanging", (__name__, "HangingBus"))
    monkeypatch.setattr(can.util, "VALID_INTERFACES", can.util.VALID_INTERFACES | {"hanging"})
    listener = Listener(tmp_path / "notify.sock")
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "30000"})
    healthy = BusSource("healthy", None, interface="virtual", channel=f"wd-{uuid.uuid4().hex[:8]}")
    wedged = BusSource("wedged", None, interface="hanging", channel="x")
    watchdog = Watchdog(notifier, [healthy, wedged], stall=0.5)
    stop = threading.Event()
    threads = [threading.Thread(target=lambda s=s: [None for _ in s.batches(stop)], daemon=True) for s in (healthy, wedged)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: healthy.opened.is_set() and wedged.opened.is_set())
        assert watchdog.beat() is None
        wait_until(lambda: listener.count("WATCHDOG=1") >= 1)

        HangingBus.hang.set()
        wait_until(HangingBus.inside.is_set)
        wait_until(lambda: watchdog.beat() is not None)  # the wedged call outlives its promise by `stall`
        assert "source wedged stalled" in watchdog.problem  # and only that one: the healthy reader keeps going
        pings = listener.count("WATCHDOG=1")
        notifier._last_ping = 0.0  # a ping would be due now, were all alive
        assert watchdog.beat() is not None
        wait_until(lambda: listener.count("STATUS=watchdog withheld: source wedged") >= 1)
        assert listener.count("WATCHDOG=1") == pings  # withheld

        HangingBus.release.set()  # the driver call returns: the reader is alive again
        wait_until(lambda: wedged.alive_until > time.monotonic() - 0.5)
        notifier._last_ping = 0.0
        assert watchdog.beat() is None
        wait_until(lambda: listener.count("WATCHDOG=1") > pings)

    finally:
        HangingBus.release.set()
        stop.set()
        for thread in threads:
            thread.join(5)
        listener.sock.close()
        HangingBus.hang.clear()
        HangingBus.release.clear()
        HangingBus.inside.clear()


def test_watchdog_is_withheld_while_the_store_does_not_keep_up(tmp_path):
    listener = Listener(tmp_path / "notify.sock")
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "30000"})
    watchdog = Watchdog(notifier, [], stall=0.5)
    now = time.monotonic()
    assert watchdog.beat(unsealed=True, now=now) is None  # records wait: fine for a while
    assert "nothing sealed for 1 s" in watchdog.beat(unsealed=True, now=now + 0.6)
    watchdog.sealed()
    assert watchdog.beat(unsealed=True, now=now + 0.7) is None
    assert watchdog.beat(unsealed=False, now=now + 5) is None
    wait_until(lambda: listener.count("STATUS=watchdog withheld: nothing sealed") == 1 and listener.count("STATUS=recording") == 1)
    listener.sock.close()


def test_a_finished_or_waiting_source_is_not_a_stall():
    notifier = Notifier({})
    idle = BusSource("idle", None, interface="virtual", channel="unused")
    assert idle.alive_until is None  # never started: nothing promised
    assert Watchdog(notifier, [idle], stall=0.1).beat() is None


def _refuse_writable_executable_memory() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        os._exit(99)


@pytest.mark.skipif(sys.platform != "linux" or tuple(map(int, os.uname().release.split(".")[:2])) < (6, 3),
                    reason="PR_SET_MDWE needs Linux 6.3")
def test_the_agent_runs_with_memory_deny_write_execute(tmp_path):
    """MemoryDenyWriteExecute=yes in the unit: the agent (Python, PyNaCl, SQLite) must work without W+X memory."""
    policy = tmp_path / "policy.toml"
    policy.write_text(local_streams_policy({"driving": ["Vehicle.Speed"]}))
    config = tmp_path / "agent.toml"
    config.write_text(textwrap.dedent(f"""
        [agent]
        store = "ledger"
        policy = "{policy}"
        [[bus]]
        name = "sim"
        interface = "carledger-sim"
        channel = "city"
        options = {{ seed = 2, speed = 20 }}
        dbc = ["{dbc_path('carledger_demo.dbc')}"]
    """))
    done = subprocess.run(
        [sys.executable, "-m", "carledger", "run", "-c", str(config), "--for", "3"],
        preexec_fn=_refuse_writable_executable_memory, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"stream driving: [1-9][\d,]* records", done.stderr), done.stderr
