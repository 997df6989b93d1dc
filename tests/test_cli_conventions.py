"""The command line's conventions (docs/cli.md): how the store is named, paths, exit codes, logs, progress, packaging.

Issue 12 items 8 (paths), 11 (doctor agrees with run), 14 (arguments), 18
(--version, -q, progress, log lines, installed docs and DBC, the [mqtt] page)
and 20 (scripts/setup idempotent and quick). Each test runs the real command
on a real store made by a replay.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from carledger.cli import build_parser, main
from carledger.config import local_streams_policy
from carledger.dbc import path as dbc_path
from carledger_sim.cli import main as sim_main

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A store made by `carledger run --replay` of a drive happening now, under the example policy."""
    base = tmp_path_factory.mktemp("recorded")
    log = base / "drive.log"
    assert sim_main(["record", "--scenario", "city", "--seed", "1", "--duration", "30", "--start-time", "now",
                     "-o", str(log)]) == 0
    assert main(["run", "--replay", str(log), "--dbc", dbc_path("carledger_demo.dbc"), "--store", str(base / "ledger"),
                 "--policy", str(REPO / "docs" / "policy.example.toml"), "--fast"]) == 0
    return base / "ledger"


@pytest.fixture
def store(recorded: Path, tmp_path: Path) -> Path:
    """A copy of the recorded store this test may change."""
    copy = tmp_path / "ledger"
    shutil.copytree(recorded, copy)
    return copy


def agent_config(tmp_path: Path, store: Path, policy: str | None = None) -> Path:
    config = tmp_path / "agent.toml"
    policy_line = f'policy = "{policy}"' if policy else ""
    config.write_text(textwrap.dedent(f"""
        [agent]
        store = "{store}"
        {policy_line}
        [[bus]]
        name = "car"
        interface = "virtual"
        channel = "conventions-{os.getpid()}"
        dbc = ["{dbc_path('carledger_demo.dbc')}"]
    """))
    return config


def last_line(text: str) -> str:
    return text.rstrip("\n").splitlines()[-1]


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- item 8: paths ----------------------------------------------------------------------------


READING_COMMANDS = [
    ("consent", "list", "--store"),
    ("log", "list"),
    ("log", "show", "--stream", "vault", "--store"),
    ("log", "export", "--stream", "vault", "--store"),
    ("verify",),
    ("audit", "--store"),
    ("edr", "list"),
    ("read",),
    ("pause", "--store"),
    ("resume", "--store"),
    ("wipe", "--yes", "--store"),
    ("policy", "apply", str(REPO / "docs" / "policy.example.toml"), "--store"),
    ("remote", "enroll-owner", "ab" * 32, "--store"),
]


@pytest.mark.parametrize("argv", READING_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_a_path_that_is_not_a_store_is_refused_and_nothing_is_created(argv, tmp_path, capsys):
    typo = tmp_path / "typo"
    code, out, err = cli(capsys, *argv, str(typo))
    assert code == 2
    assert last_line(err).endswith(f": error: {typo}: no such directory (not a carledger store)")
    assert err.startswith("usage: carledger "), "a usage error shows the subcommand's usage"
    assert not typo.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli(capsys, *argv, str(empty))
    assert code == 2 and last_line(err).endswith(f": error: {empty}: not a carledger store (no ledger.sqlite in it)")
    assert list(empty.iterdir()) == [], "a command wrote into a directory that is not a store"


def test_consent_list_of_a_typo_is_not_an_empty_store(tmp_path, capsys):
    code, out, err = cli(capsys, "consent", "list", "--store", str(tmp_path / "typo"))
    assert (code, out) == (2, "")
    assert last_line(err) == f"carledger consent list: error: {tmp_path / 'typo'}: no such directory (not a carledger store)"


def test_collect_status_does_not_create_a_collector(tmp_path, capsys):
    code, _, err = cli(capsys, "collect", "status", str(tmp_path / "typo"))
    assert code == 2
    assert last_line(err) == f"carledger collect status: error: {tmp_path / 'typo'}: no such directory (not a carledger collector)"
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("argv", [
    ("log", "export", "{store}", "--stream", "vault", "-o", "{out}"),
    ("read", "{store}", "--stream", "vault", "-o", "{out}"),
    ("edr", "export", "{store}", "--key", "ab" * 32, "-o", "{out}"),
], ids=lambda a: " ".join(a[:2]))
def test_output_paths_that_are_directories_or_miss_their_parent(argv, recorded, tmp_path, capsys):
    prog = "carledger " + " ".join(a for a in argv[:2] if a != "{store}")
    for out, message in ((tmp_path, f"{tmp_path}: is a directory; give a file name"),
                         (Path("/nonexistent/x"), "/nonexistent/x: directory /nonexistent does not exist")):
        code, stdout, err = cli(capsys, *(a.format(store=recorded, out=out) for a in argv))
        assert code == 2 and stdout == ""
        assert last_line(err) == f"{prog}: error: {message}"
        assert "Traceback" not in err


# -- item 14: one way to name the store, exit codes that mean what the help says ----------------


def test_every_store_command_takes_store_and_config(store, tmp_path, capsys):
    config = agent_config(tmp_path, store)
    for argv in (("verify",), ("audit",), ("log", "list"), ("edr", "list"), ("consent", "list")):
        assert cli(capsys, *argv, "--store", str(store))[0] == 0, argv
        code, out_config, _ = cli(capsys, *argv, "-c", str(config))
        assert code == 0, argv
        if argv[0] in ("verify", "audit", "log", "edr"):  # the store only subject: a positional STORE as well
            assert cli(capsys, *argv, str(store))[1] == out_config
    code, _, err = cli(capsys, "verify", str(store), "--store", str(tmp_path / "other"))
    assert code == 2 and last_line(err) == f"carledger verify: error: two stores given ({store} and --store {tmp_path / 'other'}): give one"


def test_readme_owner_commands_with_store(store, capsys):
    """The README's owner commands, as written there, with --store in place of the default configuration."""
    for argv in (("consent", "list"), ("consent", "revoke", "insurer"), ("consent", "grant", "fleet", "--until", "90d"),
                 ("pause", "--for", "2h"), ("resume",), ("audit",), ("wipe", "--yes")):
        code, out, err = cli(capsys, *argv, "--store", str(store))
        assert code == 0, (argv, err)
    assert cli(capsys, "audit", str(store))[0] == 0


def test_pause_on_a_path_that_is_not_a_store_exits_2_as_its_help_says(tmp_path, capsys):
    code, _, err = cli(capsys, "pause", "--store", str(tmp_path / "notastore"))
    assert code == 2
    assert err.splitlines()[0].startswith("usage: carledger pause ")
    assert last_line(err) == f"carledger pause: error: {tmp_path / 'notastore'}: no such directory (not a carledger store)"
    help_text = build_parser()._subparsers._group_actions[0].choices["pause"].format_help()
    assert "2 usage error, unreadable input or a path" in " ".join(help_text.split())


def test_argument_mistakes_found_after_parsing_show_the_subcommands_usage(store, tmp_path, capsys):
    for argv, message in (
        (("consent", "grant", "fleet", "--until", "someday", "--store", str(store)),
         "carledger consent grant: error: --until: 'someday' is neither a date/time (2027-05-01, "
         "2027-05-01T12:00:00+02:00) nor a duration (90d, 12h)"),
        (("run", "--replay", str(tmp_path / "drive.log")), "carledger run: error: --replay needs --dbc and --store"),
        # a duration past the year 9999 stopped a running agent with OverflowError (the audit could not date it)
        (("pause", "--for", "99999999999999999999d", "--store", str(store)),
         "carledger pause: error: --for: '99999999999999999999d' is not a time from 1970 to the year 9999"),
        (("consent", "grant", "fleet", "--until", "99999999999999999999d", "--store", str(store)),
         "carledger consent grant: error: --until: '99999999999999999999d' is not a time from 1970 to the year 9999"),
        # float('inf') * 1e6 rounded: OverflowError, a traceback, before the times went through carledger.times
        (("collect", "export", str(tmp_path), "--since", "inf"),
         "carledger collect export: error: --since 'inf' is not a time from 1970 to the year 9999"),
        (("collect", "enroll", str(tmp_path / "coll"), "car-1", "--identity", str(tmp_path / "none.json")),
         "carledger collect enroll: error: --identity FILE replaces VEHICLE PUBKEY (and has no --handover)"),
        (("prove", str(store), "--stream", "vault", "--from", "1e300", "--to", "2030-01-01", "-o", str(tmp_path / "p")),
         "carledger prove: error: --from '1e300' is not a time from 1970 to the year 9999"),
        (("log", "export", str(store), "--stream", "vault", "--format", "candump"),
         "carledger log export: error: --format candump needs --dbc (the DBC to encode the frames with)"),
    ):
        code, _, err = cli(capsys, *argv)
        assert code == 2 and err.startswith(f"usage: {message.split(':')[0]} ") and last_line(err) == message


@pytest.mark.parametrize("argv", [
    ("run", "--replay", "drive.log", "--for", "nan"), ("run", "--replay", "drive.log", "--for", "-1"),
    ("sync", "STORE", "--drain", "inf"), ("sync", "STORE", "--ack-timeout", "nan"), ("doctor", "--listen", "inf"),
    ("collect", "run", "DIR", "--gap-wait", "nan"), ("remote", "send-policy", "x", "--vehicle", "v", "--wait", "nan"),
])
def test_a_number_of_seconds_must_be_one(argv, capsys):
    """float() takes nan, inf and -1: a deadline of nan never came, so `sync --drain nan` would wait for ever."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    value = argv[-1]
    assert exited.value.code == 2
    assert last_line(capsys.readouterr().err).endswith(
        f"error: argument {argv[-2]}: '{value}' is not a number of seconds (a finite number, 0 or more)")


def leaf_parsers(parser: argparse.ArgumentParser, prefix: str = ""):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix.strip(), parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from leaf_parsers(sub, f"{prefix} {name}")


def test_every_subcommand_help_says_what_its_exit_codes_mean():
    missing = []
    for name, parser in leaf_parsers(build_parser()):
        text = " ".join(parser.format_help().split()).lower()
        if not re.search(r"exit status: 0 .*, 2 ", text):
            missing.append(name)
    assert missing == []


# -- item 11: doctor agrees with run ------------------------------------------------------------


def test_every_address_option_reads_host_and_port_one_way():
    """collect's and doctor's --broker and the witness's --listen: one parser, the same forms and the same refusals."""
    from carledger.cli._args import host_port

    assert host_port("mq", 1883) == ("mq", 1883) and host_port("10.0.0.1:1884", 1883) == ("10.0.0.1", 1884)
    assert host_port("[::1]:8883", 1883) == ("::1", 8883) and host_port("::1", 1883) == ("::1", 1883)
    assert host_port("[fe80::1]", 1883) == ("fe80::1", 1883) and host_port("127.0.0.1:0", lowest=0) == ("127.0.0.1", 0)
    for bad in ("mq:port", "mq:0", "mq:65536", ":1883", "[::1", "[::1]x", "[::1]:", "m q:1", "", "mq:+1", "mq:１"):
        with pytest.raises(ValueError, match=r"is not HOST or HOST:PORT \(a port from 1 to 65535"):
            host_port(bad, 1883)
    for bad in ("mq", "::1", "127.0.0.1:70000", "h:-1"):  # a server's address needs its port; 0 picks one
        with pytest.raises(ValueError, match=r"is not HOST:PORT \(a port from 0 to 65535"):
            host_port(bad, lowest=0)


def test_doctor_writes_an_ipv6_broker_back_as_it_is_written(tmp_path, capsys):
    config = agent_config(tmp_path, tmp_path / "ledger", str(REPO / "docs" / "policy.example.toml"))
    try:
        with socket.socket(socket.AF_INET6) as unused:  # a port nothing listens on
            unused.bind(("::1", 0))
            port = unused.getsockname()[1]
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    _, out, _ = cli(capsys, "doctor", "-c", str(config), "--listen", "0", "--broker", f"[::1]:{port}")
    assert f"[WARN] broker: [::1]:{port} not reachable" in out


@pytest.mark.parametrize("argv, message", [
    (("doctor", "--broker", "mq:0"),
     "carledger doctor: error: argument --broker: 'mq:0' is not HOST or HOST:PORT (a port from 1 to 65535; "
     "[ADDR]:PORT for IPv6)"),
    (("collect", "run", "DIR", "--broker", "mq:99999"),
     "carledger collect: --broker 'mq:99999' is not HOST or HOST:PORT (a port from 1 to 65535; [ADDR]:PORT for IPv6)"),
    (("witness", "run", "DIR", "--log", "k", "--listen", "localhost"),
     "carledger witness run: error: argument --listen: 'localhost' is not HOST:PORT (a port from 0 to 65535; [ADDR]:PORT for IPv6)"),
])
def test_a_bad_address_is_one_line_and_exit_2(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exited:  # argparse's own refusal
        code = exited.code
    err = capsys.readouterr().err
    assert code == 2 and last_line(err) == message, err


@pytest.mark.parametrize("case", ["missing", "invalid", "none"])
def test_doctor_fails_without_a_valid_policy_as_run_refuses(case, tmp_path, capsys):
    policy = {"missing": str(tmp_path / "nosuch.toml"), "invalid": str(tmp_path / "bad.toml"), "none": None}[case]
    (tmp_path / "bad.toml").write_text('version = 1\n[[stream]]\nname = "s"\nlocal = true\nsignals = ["No.Such.Signal"]\n')
    config = agent_config(tmp_path, tmp_path / "ledger", policy)
    code, out, _ = cli(capsys, "doctor", "-c", str(config), "--listen", "0", "--broker", "127.0.0.1:1")
    line = next(line for line in out.splitlines() if line.startswith("[FAIL] policy:"))
    expected = {
        "missing": f"[FAIL] policy: {policy}: cannot read: No such file or directory",
        "invalid": f"[FAIL] policy: {policy} is not valid (1 problem): ",
        "none": "[FAIL] policy: no policy: nothing would be recorded but the agent's own health",
    }[case]
    assert line.startswith(expected)
    assert code == 1 and out.rstrip().endswith("verdict: not ready: fix the failures above")
    assert not (tmp_path / "ledger").exists(), "doctor created the store"
    if case != "none":  # run refuses the same configuration
        assert main(["run", "-c", str(config), "--for", "0.1"]) == 2


def test_doctor_fails_an_interface_python_can_lacks_as_run_refuses_it(tmp_path, capsys):
    """`carledger run` refuses a misspelt interface before it opens anything; doctor said ready when told not to
    listen (the traffic check was the only one that opened a bus that is not SocketCAN)."""
    config = agent_config(tmp_path, tmp_path / "ledger", str(REPO / "docs" / "policy.example.toml"))
    config.write_text(config.read_text().replace('interface = "virtual"', 'interface = "virtaul"'))
    for listen in ("0", "0.2"):
        code, out, _ = cli(capsys, "doctor", "-c", str(config), "--listen", listen, "--broker", "127.0.0.1:1")
        assert code == 1 and "[FAIL] bus car: python-can has no interface 'virtaul' (it knows " in out, out
        assert ("traffic on car: virtaul " in out) == (listen != "0")  # which tries to open it, and says so too
    assert main(["run", "-c", str(config), "--for", "0.1"]) == 2
    assert "python-can has no interface 'virtaul'" in capsys.readouterr().err


def test_doctor_passes_a_valid_policy(tmp_path, capsys):
    config = agent_config(tmp_path, tmp_path / "ledger", str(REPO / "docs" / "policy.example.toml"))
    code, out, _ = cli(capsys, "doctor", "-c", str(config), "--listen", "0", "--broker", "127.0.0.1:1")
    assert f"[ok  ] policy: {REPO / 'docs' / 'policy.example.toml'}: version 3, 4 streams (3 leave the car)" in out


# -- item 18: --version, -q, log lines, progress ------------------------------------------------


def run_cli(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "carledger"), *argv], capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.parametrize("prog", ["carledger", "carledger-sim"])
def test_version_prints_the_package_version(prog):
    from importlib.metadata import version

    done = subprocess.run([str(VENV_BIN / prog), "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, f"{prog} {version('carledger')}\n")
    both = subprocess.run([str(VENV_BIN / prog), "-q", "-v", "--help"], capture_output=True, text=True, timeout=60)
    assert both.returncode == 0  # --help wins; the contradiction is only an error when a command runs
    wrong = subprocess.run([str(VENV_BIN / prog), "-q", "-v", "scenarios" if prog == "carledger-sim" else "status"],
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and wrong.stderr.splitlines()[-1] == f"{prog}: error: -q and -v contradict each other: give one"


def test_info_lines_only_with_v_and_warnings_silenced_by_q(recorded, tmp_path):
    log = recorded.parent / "drive.log"
    base = ["run", "--replay", str(log), "--dbc", dbc_path("carledger_demo.dbc"), "--stream", "s=Vehicle.Speed", "--fast"]
    quiet = run_cli(*base, "--store", str(tmp_path / "a"))
    assert quiet.returncode == 0 and " INFO " not in quiet.stderr and quiet.stdout == ""
    verbose = run_cli("-v", *base, "--store", str(tmp_path / "b"))
    assert verbose.returncode == 0 and " INFO carledger" in verbose.stderr
    # another policy that does not raise the version: run keeps the one in force, with a WARNING (none with -q)
    first, other = tmp_path / "first.toml", tmp_path / "other.toml"
    first.write_text(local_streams_policy({"a": ["Vehicle.Speed"]}, 1))
    other.write_text(local_streams_policy({"b": ["Vehicle.Speed"]}, 1))
    replay = ["run", "--replay", str(log), "--dbc", dbc_path("carledger_demo.dbc"), "--fast", "--policy"]
    for name in ("c", "d"):
        assert run_cli(*replay, str(first), "--store", str(tmp_path / name)).returncode == 0
    warned = run_cli(*replay, str(other), "--store", str(tmp_path / "c"))
    silenced = run_cli("-q", *replay, str(other), "--store", str(tmp_path / "d"))
    assert warned.returncode == silenced.returncode == 0
    assert " WARNING " in warned.stderr and "is not higher than the version in force" in warned.stderr
    assert " WARNING " not in silenced.stderr


def test_the_service_keeps_the_agents_info_lines_in_the_journal():
    unit = (REPO / "systemd" / "carledger.service").read_text()
    assert re.search(r"^ExecStart=/opt/carledger/bin/carledger -v run -c /etc/carledger/agent.toml$", unit, re.M)


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as stderr does in an interactive shell."""

    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_and_nothing_otherwise():
    from carledger.cli._display import progress_bar

    shown, piped = Terminal(), io.StringIO()
    for stream in (shown, piped):
        bar = progress_bar("exporting", "blocks", 10, stream)
        if not bar.disable:  # as if the work had gone on past the bar's delay
            bar.start_t -= 1.0
            bar.last_print_t -= 1.0
        bar.update(4)
        bar.close()
    assert "exporting:  40%" in shown.getvalue() and "4/10" in shown.getvalue()
    assert piped.getvalue() == ""


def test_long_commands_print_no_progress_when_not_on_a_terminal(recorded, tmp_path):
    log = recorded.parent / "drive.log"
    done = run_cli("run", "--replay", str(log), "--dbc", dbc_path("carledger_demo.dbc"), "--store", str(tmp_path / "x"),
                   "--stream", "s=Vehicle.Speed", "--fast")
    assert done.returncode == 0 and "replaying" not in done.stderr and "\r" not in done.stderr
    exported = run_cli("log", "export", str(recorded), "--stream", "vault", "-o", str(tmp_path / "v.jsonl"))
    assert exported.returncode == 0 and exported.stderr == ""
    sim = subprocess.run([str(VENV_BIN / "carledger-sim"), "record", "--scenario", "city", "--duration", "5",
                          "-o", str(tmp_path / "d.log")], capture_output=True, text=True, timeout=120)
    assert sim.returncode == 0 and "\r" not in sim.stderr and sim.stderr.startswith("wrote ")


# -- item 18: the installed package carries its docs and the demo DBC where the unit and example say ----


@pytest.mark.slow
def test_a_non_editable_install_puts_docs_and_demo_dbc_where_the_unit_and_example_name_them(tmp_path):
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file() and not name.startswith("."):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp_path / "wheel"), str(src)], check=True, timeout=300,
                   capture_output=True)
    prefix = tmp_path / "opt-carledger"  # stands for /opt/carledger (docs/raspberry-pi.md)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True, timeout=120)
    wheel = next((tmp_path / "wheel").glob("carledger-*.whl"))
    subprocess.run([*pip, "--python", str(prefix / "bin" / "python"), "install", "--no-deps", str(wheel)], check=True,
                   timeout=300, capture_output=True)

    unit = (REPO / "systemd" / "carledger.service").read_text()
    documented = re.search(r"^Documentation=(.*)$", unit, re.M).group(1).split()
    example = tomllib.loads((REPO / "docs" / "agent.example.toml").read_text())
    named = [u.removeprefix("file://") for u in documented] + example["bus"][0]["dbc"]
    assert named and all(p.startswith("/opt/carledger/") for p in named)
    for path in named:
        assert (prefix / path.removeprefix("/opt/carledger/")).is_file(), f"{path} is not installed"
    metadata = next(prefix.glob("lib/python*/site-packages/carledger-*.dist-info/METADATA")).read_text()
    assert re.search(r"^Requires-Dist: tqdm>=4\.58$", metadata, re.M)


# -- item 18: one page lists every [mqtt] key ---------------------------------------------------------


def documented_keys(section: str) -> dict[str, list[str]]:
    text = (REPO / "docs" / "mqtt.md").read_text()
    body = text.split(f"## `{section}`\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in body.splitlines() if line.startswith("| `")]
    return {cells[0].strip().strip("`"): [c.strip() for c in cells[1:]] for cells in rows}


def test_the_mqtt_page_lists_every_key_the_configuration_reads():
    from carledger.sync.config import _FLOATS, _INTS, _TLS, _TOP, MqttConfig

    top, tls = documented_keys("[mqtt]"), documented_keys("[mqtt.tls]")
    assert set(top) == _TOP and set(tls) == _TLS
    defaults = MqttConfig()
    for key, (lo, hi) in _INTS.items():
        kind, default, allowed = top[key][:3]
        assert kind.startswith("integer") and allowed.startswith(f"{lo} to "), key
        if hi < 1 << 32:
            assert allowed == f"{lo} to {hi}", key
        if getattr(defaults, key) is not None:
            assert default.split()[0] == str(getattr(defaults, key)), key
    for key, lo in _FLOATS.items():
        kind, default, allowed = top[key][:3]
        assert kind.startswith("number") and allowed.startswith(f"at least {lo}"), key
        assert float(default.split()[0]) == getattr(defaults, key), key


# -- item 20: scripts/setup runs pip only when the packaging changed ----------------------------------


def test_setup_skips_pip_when_the_install_is_current_and_runs_it_after_a_change(tmp_path):
    """scripts/setup in a copy of the tree whose .venv python records what it is asked to run."""
    for name in ("scripts/setup", "scripts/floors", "setup.cfg", "pyproject.toml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    for venv in (".venv", ".venv-verifier", ".venv-min"):
        python = tmp_path / venv / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.write_text(f'#!/bin/sh\necho "$*" >> "{tmp_path}/calls"\n')
        python.chmod(0o755)
    # .venv-min is current too: it holds the floors setup.cfg declares (a change below adds no floor).
    floors = subprocess.run([sys.executable, str(REPO / "scripts" / "floors"), str(REPO / "setup.cfg")],
                            capture_output=True, text=True, check=True).stdout
    (tmp_path / ".venv-min" / "floors.txt").write_text(floors)
    calls = tmp_path / "calls"

    def setup() -> tuple[str, list[str]]:
        calls.unlink(missing_ok=True)
        done = subprocess.run(["bash", str(tmp_path / "scripts" / "setup")], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout, [c for c in calls.read_text().splitlines() if "pip install" in c] if calls.exists() else []

    out, pip = setup()
    assert "setup: installing carledger into .venv" in out and any("-e .[test,mf4,fleet]" in c for c in pip)
    out, pip = setup()
    assert out.splitlines()[0] == "setup: carledger in .venv is current (setup.cfg and pyproject.toml unchanged)"
    assert pip == []
    with open(tmp_path / "setup.cfg", "a") as cfg:
        cfg.write("\n# a changed dependency\n")
    out, pip = setup()
    assert "setup: installing carledger into .venv" in out and any("-e .[test,mf4,fleet]" in c for c in pip)
