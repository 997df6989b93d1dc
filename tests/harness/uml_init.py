"""PID 1 inside user-mode-linux: mount, load the CAN modules, add the vcans, run the guest, power off.

Nothing here may assume more than Python and the host's files: a bare Debian
has no `insmod` (kmod), so modules are loaded with the finit_module system
call through ctypes. Whatever happens, the guest's exit status is written and
the machine powers off, or the kernel would wait forever.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import subprocess
import sys
import traceback

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_FINIT_MODULE = {"x86_64": 313, "aarch64": 273}
_RB_POWER_OFF = 0x4321FEDC


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str, target: str, fstype: str) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode(), 0, None), f"mount {target}")


def _load_module(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        number = _SYS_FINIT_MODULE[platform.machine()]
        if _libc.syscall(number, fd, b"", 0) != 0 and ctypes.get_errno() != 17:  # EEXIST: built in already
            _check(-1, f"finit_module {path}")
    finally:
        os.close(fd)


def _setup(plan: dict) -> None:
    _mount("proc", "/proc", "proc")
    _mount("sysfs", "/sys", "sysfs")
    modules = f"/usr/lib/uml/modules/{os.uname().release}/kernel"
    for module in plan["modules"]:
        _load_module(f"{modules}/{module}")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for name, mtu in plan["interfaces"]:
        subprocess.run(["ip", "link", "add", "dev", name, "type", "vcan"], check=True)
        subprocess.run(["ip", "link", "set", name, "mtu", str(mtu), "up"], check=True)


def main(plan_path: str) -> None:
    status = 255
    plan: dict = {}
    try:
        with open(plan_path) as f:
            plan = json.load(f)
        os.environ.clear()
        os.environ.update(plan["env"])
        os.chdir(plan["cwd"])
        with open(plan["log"], "wb") as log:
            try:
                _setup(plan)
            except Exception:
                log.write(traceback.format_exc().encode())
                raise
            log.flush()
            status = subprocess.run(plan["argv"], stdout=log, stderr=subprocess.STDOUT).returncode
    except Exception:
        traceback.print_exc(file=sys.stdout)
    finally:
        if plan.get("status"):
            with open(plan["status"], "w") as f:
                f.write(str(status))
        os.sync()
        _libc.reboot(_RB_POWER_OFF)
