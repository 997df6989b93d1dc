"""The dependency floors setup.cfg declares are the versions .venv-min tests (scripts/setup, scripts/test)."""

from __future__ import annotations

import configparser
import re
import subprocess

import pytest

from conftest import REPO


def _requirements() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in cfg["options.extras_require"].values():
        lines += extra.splitlines()
    return [line.strip() for line in lines if line.strip()]


def test_every_declared_dependency_has_a_floor_and_no_ceiling():
    """.venv-min pins each `>=` floor; a requirement without one would go untested at its oldest version."""
    for requirement in _requirements():
        assert re.fullmatch(r"[A-Za-z0-9_.-]+>=[0-9][0-9.]*", requirement), requirement


def test_the_minimum_environment_holds_exactly_the_floors():
    python = REPO / ".venv-min" / "bin" / "python"
    if not python.exists():
        pytest.skip(".venv-min is made by scripts/setup")
    floors = {name.lower(): version for name, version in (r.split(">=") for r in _requirements())}
    code = "import importlib.metadata as m, sys; print('\\n'.join(n + ' ' + m.version(n) for n in sys.argv[1:]))"
    out = subprocess.run([str(python), "-c", code, *floors], capture_output=True, text=True, check=True).stdout
    installed = dict(line.split() for line in out.splitlines())

    def same(a: str, b: str) -> bool:  # "7" is "7.0.0" to pip
        strip = lambda v: re.sub(r"(\.0)+$", "", v)  # noqa: E731
        return strip(a) == strip(b)

    assert {n: v for n, v in installed.items() if not same(v, floors[n])} == {}
