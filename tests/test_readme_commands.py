"""Every shell command in the README (and the docs' shell blocks) runs as written, with the data the project ships.

Commands are read out of the Markdown: indented blocks and ```sh / ```shell /
```console / ``` blocks whose lines start with a command we ship or a tool the
flow needs. They run in order, one shell per block, in a temporary directory
that holds what the README's names stand for:

    car.dbc      the demo DBC (dbc/carledger_demo.dbc)
    drive.log    a recorded simulated drive (carledger-sim record)
    policy.toml  the example policy (docs/policy.example.toml)
    dbc/         the shipped dbc/ folder, as in a checkout
    docs/policy.example.toml  the example policy where a checkout has it

Commands that cannot run here are skipped by rule (SKIPPED, each with its
reason: root, a CAN HAT, systemd, a running daemon, a broker across the
network); anything else must exit 0 (or what it documents). A command can also
be skipped in the Markdown itself with an HTML comment on the line before its
block, `<!-- readme-test: skip REASON -->`, which the rendered page does not
show. The sync block runs against a real mosquitto (tests/broker.py).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker import broker  # noqa: F401 - a fixture, taken by name
from conftest import REPO

BIN = Path(sys.executable).parent
SKIP_MARK = re.compile(r"<!--\s*readme-test:\s*skip\s+(.+?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
# A command we ship or a tool the flow needs (`carledger/v1/...` is a topic, not a command).
OURS = re.compile(r"^((carledger|carledger-sim|mosquitto|systemd-analyze)(\s|$)|scripts/|\.venv/bin/python)")

# (pattern on the command, reason): commands that need what a test machine does not have.
SKIPPED: tuple[tuple[str, str], ...] = (
    (r"^scripts/(demo|test|setup)\b", "runs the whole demo or suite; CI runs these itself"),
    (r"^(sudo )?scripts/vcan-", "needs root or user-mode-linux; tests/test_socketcan.py covers it"),
    (r"/etc/carledger/", "needs the installed agent's configuration under /etc"),
    (r"/var/lib/carledger\b", "needs the installed agent's store under /var/lib"),
    (r"--interface socketcan|--channel vcan0|can0", "needs a CAN interface (a HAT or vcan)"),
    (r"carledger-sim elm327", "opens a pseudo-terminal and waits for a client"),
    (r"carledger-sim run\b", "broadcasts until stopped"),
    (r"^systemd-analyze", "needs systemd (tests/test_systemd.py covers the unit)"),
    (r"bench/", "a benchmark, never pass/fail"),
    (r"--host \.\.\.", "a placeholder for the user's broker"),
    (r"--host (?!localhost)", "a broker across the network, with TLS files"),
    (r"^carledger (consent|pause|resume|status|audit|wipe)\b(?!.*(--store|-c ))", "needs the installed agent's default store"),
    (r"^carledger edr", "needs a crash capture first (tests/test_edr.py)"),
    (r"^carledger console\b", "serves until stopped, on the installed agent's store (tests/test_console.py runs it)"),
    (r"\[|\b(COLLECTOR|STORE|KEY|CONFIG)\b", "a synopsis with placeholders, not a command as written"),
    (r"^carledger remote (?!identity --store \./ledger)", "needs an enrolled owner and a running car"),
    (r"^carledger read \./collected/vehicles/\* --stream insurer", "needs an encrypted stream synced first"),
    (r"^carledger policy (diff|apply)", "needs two policy versions and the agent's default store"),
)


# Further rules for docs/*.md, whose blocks show one step of a flow the README runs whole.
DOCS_SKIPPED: tuple[tuple[str, str], ...] = (
    (r"^carledger (sync|collect (run|key))\b", "one step of the README's sync session, which runs whole with a broker"),
)


@dataclass
class Block:
    source: str  # "README.md:123"
    commands: list[str]
    skip: str | None  # reason from the Markdown, if any


def _join_continuations(lines: list[str]) -> list[str]:
    out: list[str] = []
    buf = ""
    for line in lines:
        part = line.strip() if buf else line.rstrip()
        if part.endswith("\\"):
            buf += part[:-1].rstrip() + " "
            continue
        out.append(buf + part)
        buf = ""
    if buf:
        out.append(buf)
    return out


def _strip_comment(command: str) -> str:
    """A trailing `# comment` (outside quotes) goes; the command stays as written."""
    in_quote = ""
    for i, ch in enumerate(command):
        if in_quote:
            if ch == in_quote:
                in_quote = ""
        elif ch in "'\"":
            in_quote = ch
        elif ch == "#" and (i == 0 or command[i - 1] in " \t"):
            return command[:i].rstrip()
    return command.rstrip()


# `carledger read: not encrypted ...`: what a command prints (its name, then a colon), shown as an example.
OUTPUT = re.compile(r"^carledger(-sim)?( [a-z][\w-]*)*: ")


def _is_command(line: str) -> bool:
    return bool(OURS.match(line)) and not OUTPUT.match(line)


def blocks_of(path: Path) -> list[Block]:
    """Shell command blocks of a Markdown file: indented blocks and shell-ish fenced ones."""
    text = path.read_text().splitlines()
    name = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
    blocks: list[Block] = []
    i = 0
    pending_skip: str | None = None
    while i < len(text):
        line = text[i]
        mark = SKIP_MARK.search(line)
        if mark:
            pending_skip = mark.group(1)
            i += 1
            continue
        fence = FENCE.match(line)
        body: list[str] = []
        start = i + 1
        if fence:
            if fence.group(1) not in ("", "sh", "shell", "bash", "console"):
                i = _skip_fence(text, i)
                pending_skip = None
                continue
            i += 1
            while i < len(text) and not text[i].startswith("```"):
                body.append(text[i])
                i += 1
            i += 1
        elif line.startswith("    ") and (i == 0 or not text[i - 1].strip()):
            while i < len(text) and (text[i].startswith("    ") or not text[i].strip()):
                body.append(text[i][4:])
                i += 1
        else:
            i += 1
            continue
        lines = [b.removeprefix("$ ") for b in _join_continuations([b for b in body if b.strip()])]
        commands = [_strip_comment(b) for b in lines if _is_command(b)]
        if commands:
            blocks.append(Block(f"{name}:{start}", commands, pending_skip))
        pending_skip = None
    return blocks


def _skip_fence(text: list[str], i: int) -> int:
    i += 1
    while i < len(text) and not text[i].startswith("```"):
        i += 1
    return i + 1


def skip_reason(command: str, rules: tuple[tuple[str, str], ...] = SKIPPED) -> str | None:
    for pattern, reason in rules:
        if re.search(pattern, command):
            return reason
    return None


def all_blocks() -> list[Block]:
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return [block for path in files for block in blocks_of(path)]


# -- the extraction itself --------------------------------------------------------------------------


def test_the_readme_yields_the_commands_it_shows():
    readme = [c for b in blocks_of(REPO / "README.md") for c in b.commands]
    assert "scripts/demo" in readme
    assert any(c.startswith("carledger run --replay drive.log --dbc car.dbc") and "--stream" in c for c in readme)
    assert "carledger dbc check car.dbc" in readme
    assert all("\\" not in c and "#" not in c.split("'")[0] for c in readme)  # continuations joined, comments gone


def test_a_skip_marker_skips_the_next_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n<!-- readme-test: skip needs a car -->\n\n    carledger run -c x.toml\n\nthen\n\n    carledger verify x\n")
    found = blocks_of(page)
    assert [(b.commands, b.skip) for b in found] == [(["carledger run -c x.toml"], "needs a car"), (["carledger verify x"], None)]


def test_every_skip_rule_still_skips_a_command():
    """A rule nothing matches any more is stale: the docs changed, and the rule may now hide nothing or the wrong thing."""
    commands = [c for b in all_blocks() for c in b.commands]
    stale = [pattern for pattern, _ in SKIPPED + DOCS_SKIPPED if not any(re.search(pattern, c) for c in commands)]
    assert stale == []


# -- running them ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    """What the README's names stand for, and a recorded simulated drive; copied, never changed."""
    base = tmp_path_factory.mktemp("shipped")
    shutil.copy(REPO / "dbc" / "carledger_demo.dbc", base / "car.dbc")
    shutil.copy(REPO / "dbc" / "carledger_demo.vss.toml", base / "car.vss.toml")
    shutil.copytree(REPO / "dbc", base / "dbc")
    shutil.copy(REPO / "docs" / "policy.example.toml", base / "policy.toml")
    (base / "docs").mkdir()
    shutil.copy(REPO / "docs" / "policy.example.toml", base / "docs" / "policy.example.toml")
    subprocess.run([str(BIN / "carledger-sim"), "record", "--scenario", "city", "--seed", "1", "--duration", "60",
                    "-o", str(base / "drive.log")], check=True, capture_output=True, timeout=300)
    return base


@pytest.fixture
def workdir(shipped, tmp_path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(shipped, work)
    return work


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    return env


def run_block(block: Block, work: Path, port: int | None = None, rules: tuple[tuple[str, str], ...] = SKIPPED) -> list[str]:
    """Run a block's commands in order; the failures as lines saying the file, line, command and output."""
    failures = []
    background: list[subprocess.Popen] = []
    try:
        for command in block.commands:
            reason = skip_reason(command, rules)
            if reason:
                continue
            if port is not None and "--host localhost" in command:  # the test's broker, wherever the README points
                command = re.sub(r" --port \d+", "", command).replace("--host localhost", f"--host localhost --port {port}")
            if command.startswith("mosquitto "):
                continue  # the test's own broker stands in for it
            if command.endswith("&"):
                background.append(subprocess.Popen(command[:-1], shell=True, cwd=work, env=_env(), start_new_session=True,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                continue
            result = subprocess.run(command, shell=True, cwd=work, env=_env(), capture_output=True, text=True,
                                    timeout=300, executable="/bin/bash")
            if result.returncode != 0:
                tail = (result.stderr.strip().splitlines() or [""])[-1]
                failures.append(f"{block.source}: {command!r} exited {result.returncode}: {tail}")
    finally:
        for process in background:  # the shell and what it started: their own process group
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    return failures


def test_replay_commands_of_the_readme_run_as_written(workdir):
    """The 'Using it' section: replay, verify, list, show, export, dbc check, policy check/show, the simulator."""
    blocks = [b for b in blocks_of(REPO / "README.md") if not b.skip and not any(c.startswith("mosquitto") for c in b.commands)]
    failures = [line for block in blocks for line in run_block(block, workdir)]
    assert failures == []


def test_doc_commands_run_as_written(workdir):
    """Shell blocks of docs/*.md, in order, in one work directory like the README's, with its ./ledger replayed."""
    shutil.copy(workdir / "car.dbc", workdir / "other.dbc")  # `dbc check car.dbc other.dbc`
    replay = next(c for b in blocks_of(REPO / "README.md") for c in b.commands if c.startswith("carledger run --replay drive.log"))
    assert run_block(Block("README.md", [replay], None), workdir) == []  # the store the docs' commands read
    blocks = [b for path in sorted((REPO / "docs").glob("*.md")) for b in blocks_of(path) if not b.skip]
    failures = [line for block in blocks for line in run_block(block, workdir, rules=SKIPPED + DOCS_SKIPPED)]
    assert failures == []


@pytest.mark.integration
def test_the_sync_block_runs_against_a_real_broker(workdir, broker):  # noqa: F811 - the fixture
    """The copy-paste sync session, with the test's mosquitto standing in for `mosquitto -p 1883 -d`."""
    block = next(b for b in blocks_of(REPO / "README.md") if any(c.startswith("mosquitto") for c in b.commands))
    assert run_block(block, workdir, port=broker.port) == []


def test_stream_errors_name_the_option_not_a_made_up_policy_line(workdir, tmp_path):
    result = subprocess.run(
        [str(BIN / "carledger"), "run", "--replay", "drive.log", "--dbc", "car.dbc", "--store", str(tmp_path / "ledger"),
         "--stream", "speed=Vehicle.Speed,WHEEL_SPEEDS.*", "--stream", "gps=Vehicle.CurrentLocation.*", "--fast"],
        cwd=workdir, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert errors == [
        "carledger: --stream speed=Vehicle.Speed,WHEEL_SPEEDS.*: unknown signal pattern 'WHEEL_SPEEDS.*': "
        "it matches no signal the vehicle's DBC/VSS mapping knows"
    ]
