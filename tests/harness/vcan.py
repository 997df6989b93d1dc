"""Real vcan interfaces for tests: the host kernel's where it has CAN, otherwise user-mode-linux.

Where the host kernel has no AF_CAN (CI containers say "Address family not
supported"), Debian's user-mode-linux kernel boots in about three seconds
with the host's file system as its root and has vcan and can-utils. A guest
program runs there (or directly on the host, against host vcan interfaces)
and writes its results to a host directory the test then reads.

`CARLEDGER_HARNESS=uml` or `=host` forces one of the two.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UML_KERNEL = Path("/usr/bin/linux.uml")
UML_MODULES = Path("/usr/lib/uml/modules")
HARNESS_DIR = Path(__file__).resolve().parent
# load order matters: each needs the ones before it
CAN_MODULES = (
    "net/can/can.ko",
    "net/can/can-raw.ko",
    "drivers/net/can/dev/can-dev.ko",
    "net/can/can-bcm.ko",
    "drivers/net/can/vcan.ko",
)
NEEDED_COMMANDS = ("ip", "cangen", "candump", "canplayer", "cansend")


@dataclass(frozen=True)
class Vcan:
    """Where the vcan interfaces come from: mode "host" or "uml", and a line saying so for the test output."""

    mode: str
    description: str


def _missing_commands() -> list[str]:
    return [c for c in NEEDED_COMMANDS if shutil.which(c) is None]


def _host_vcan() -> Vcan | None:
    try:
        socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW).close()
    except (OSError, AttributeError):
        return None
    name = f"clprobe{os.getpid() % 100000}"
    added = subprocess.run(["ip", "link", "add", "dev", name, "type", "vcan"], capture_output=True)
    if added.returncode != 0:
        return None
    subprocess.run(["ip", "link", "del", "dev", name], capture_output=True)
    return Vcan("host", f"host kernel {platform.release()} vcan")


def _uml_version() -> str | None:
    if not os.access(UML_KERNEL, os.X_OK) or not UML_MODULES.is_dir():
        return None
    for version in sorted(p.name for p in UML_MODULES.iterdir()):
        kernel = UML_MODULES / version / "kernel"
        if all((kernel / m).is_file() for m in CAN_MODULES):
            return version
    return None


def find_vcan() -> tuple[Vcan | None, str]:
    """The vcan this machine offers, or None and the reason neither is usable."""
    missing = _missing_commands()
    if missing:
        return None, f"missing commands {', '.join(missing)} (scripts/setup installs iproute2 and can-utils)"
    forced = os.environ.get("CARLEDGER_HARNESS", "")
    host = _host_vcan() if forced in ("", "host") else None
    if host is not None:
        return host, ""
    version = _uml_version() if forced in ("", "uml") else None
    if version is not None:
        return Vcan("uml", f"user-mode-linux {version} vcan (host kernel {platform.release()} has no usable AF_CAN)"), ""
    if forced:
        return None, f"CARLEDGER_HARNESS={forced} is not usable on this machine"
    return None, (
        f"the host kernel has no usable vcan (AF_CAN or `ip link add type vcan` failed) and "
        f"user-mode-linux is not installed ({UML_KERNEL} with CAN modules under {UML_MODULES})"
    )


@dataclass
class GuestRun:
    """What a guest program left behind: its exit status, its log, and one result per scenario."""

    vcan: Vcan
    out_dir: Path
    returncode: int | None
    interfaces: dict[str, str]

    @property
    def log(self) -> str:
        parts = []
        for name in ("guest.log", "console.log"):
            path = self.out_dir / name
            if path.exists():
                parts.append(f"--- {name} ---\n" + path.read_text(errors="replace")[-6000:])
        return "\n".join(parts)

    def result(self, scenario: str) -> dict[str, Any]:
        """The scenario's result; fails the calling test with the guest's own error where it had one."""
        path = self.out_dir / "results" / f"{scenario}.json"
        if not path.exists():
            raise AssertionError(f"scenario {scenario!r} left no result (guest exit {self.returncode})\n{self.log}")
        outcome = json.loads(path.read_text())
        if not outcome["ok"]:
            raise AssertionError(f"scenario {scenario!r} failed inside the {self.vcan.mode} guest:\n{outcome['error']}")
        return outcome["result"]

    def files(self, scenario: str) -> Path:
        """The directory where the scenario kept its files (logs, stores)."""
        return self.out_dir / "results" / scenario


def run_guest(
    vcan: Vcan,
    script: Path,
    out_dir: Path,
    interfaces: dict[str, int],
    *,
    timeout: float = 600.0,
    env: dict[str, str] | None = None,
    keep_names: bool = False,
) -> GuestRun:
    """Run `script` against fresh vcan interfaces ({logical name: mtu}, 16 classic, 72 CAN FD).

    The guest finds its interface names in CARLEDGER_VCAN (JSON) and its
    output directory in CARLEDGER_RESULTS. Tests get names that cannot
    clash with a developer's own vcans; `keep_names` uses the logical names.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results").mkdir(exist_ok=True)
    if keep_names:
        names = {logical: logical for logical in interfaces}
    elif vcan.mode == "host":
        names = {logical: f"cl{os.getpid() % 10000}{i}" for i, logical in enumerate(interfaces)}
    else:
        names = {logical: f"vcan{i}" for i, logical in enumerate(interfaces)}
    guest_env = {
        "CARLEDGER_RESULTS": str(out_dir),
        "CARLEDGER_VCAN": json.dumps(names),
        "CARLEDGER_HARNESS": vcan.mode,
        "PATH": f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    setup = [(names[logical], mtu) for logical, mtu in interfaces.items()]
    if vcan.mode == "host":
        returncode = _run_on_host(script, out_dir, setup, guest_env, timeout)
    else:
        returncode = _run_in_uml(script, out_dir, setup, guest_env, timeout)
    return GuestRun(vcan, out_dir, returncode, names)


def _run_on_host(script: Path, out_dir: Path, setup: list[tuple[str, int]], env: dict[str, str], timeout: float) -> int | None:
    try:
        for name, mtu in setup:
            subprocess.run(["ip", "link", "add", "dev", name, "type", "vcan"], check=True)
            subprocess.run(["ip", "link", "set", name, "mtu", str(mtu), "up"], check=True)
        with open(out_dir / "guest.log", "wb") as log:
            try:
                return subprocess.run(
                    [sys.executable, str(script)], stdout=log, stderr=subprocess.STDOUT,
                    env=dict(os.environ, **env), timeout=timeout,
                ).returncode
            except subprocess.TimeoutExpired:
                return None
    finally:
        for name, _ in setup:
            subprocess.run(["ip", "link", "del", "dev", name], capture_output=True)


def _run_in_uml(script: Path, out_dir: Path, setup: list[tuple[str, int]], env: dict[str, str], timeout: float) -> int | None:
    plan = out_dir / "uml-plan.json"
    plan.write_text(json.dumps({
        "modules": list(CAN_MODULES), "interfaces": setup, "env": env,
        "argv": [sys.executable, str(script)], "log": str(out_dir / "guest.log"),
        "status": str(out_dir / "guest.status"), "cwd": str(Path.cwd()),
    }))
    init = out_dir / "uml-init"
    init.write_text(
        f"#!{sys.executable}\n"
        f"import sys\nsys.path.insert(0, {str(HARNESS_DIR)!r})\n"
        f"import uml_init\numl_init.main({str(plan)!r})\n"
    )
    init.chmod(0o755)
    command = [
        str(UML_KERNEL), "mem=512M", "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "rw",
        f"init={init}", "con=null", "con0=fd:0,fd:1",
    ]
    with open(out_dir / "console.log", "wb") as console:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                start_new_session=True, env={"PATH": "/usr/bin:/bin", "TMPDIR": "/tmp", "HOME": str(out_dir)})
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            else:  # UML leaves helper processes in its group; none may outlive the run
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    status = out_dir / "guest.status"
    return int(status.read_text()) if status.exists() else None
