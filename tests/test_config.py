"""Configuration: a valid file loads; every mistake names file, line and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from carledger.config import ConfigError, load_config, replay_config

GOOD = """\
[agent]
store = "ledger"
vehicle = "car-1"
policy = "policy.toml"

[seal]
max_age = 2.0

[sampling.signals]
"Vehicle.CurrentLocation.*" = 1.0

[[bus]]
name = "pt"
interface = "virtual"
channel = "x"
dbc = ["car.dbc"]
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "car.dbc").write_text('VERSION ""\n')
    path = tmp_path / "agent.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_valid_config_resolves_paths_relative_to_the_file(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.store == str(tmp_path / "ledger")
    assert config.buses[0].dbc == (str(tmp_path / "car.dbc"),)
    assert config.seal_max_age == 2.0
    assert config.sampling.overrides == (("Vehicle.CurrentLocation.*", 1.0),)
    assert config.policy == str(tmp_path / "policy.toml")
    assert config.timezone is None
    assert config.wakeup_interval == 0.05  # the default: see docs/edr.md for why


def test_a_taps_interval_is_its_streams_else_the_first_matching_override_else_the_default():
    from types import SimpleNamespace

    from carledger.config import SamplingConfig

    sampling = SamplingConfig(0.1, (("Vehicle.CurrentLocation.*", 1.0), ("GPS.*", 2.0), ("Vehicle.*", 5.0)))
    own, unset = SimpleNamespace(min_interval=0.0), SimpleNamespace(min_interval=None)
    assert sampling.interval(own, "Vehicle.CurrentLocation.Latitude", "GPS.LAT") == 0.0  # the stream's own, even 0
    assert sampling.interval(unset, "Vehicle.CurrentLocation.Latitude", "GPS.LAT") == 1.0  # first match wins
    assert sampling.interval(unset, "GPS.LAT", "GPS.LAT") == 2.0  # a DBC name matches too
    assert sampling.interval(unset, "Vehicle.Speed", "ABS.SPEED") == 5.0
    assert sampling.interval(unset, "ENGINE.RPM", "ENGINE.RPM") == 0.1


def test_example_config_in_docs_is_valid_apart_from_installed_paths(tmp_path):
    example = (Path(__file__).parents[1] / "docs" / "agent.example.toml").read_text()
    dbc = Path(__file__).parents[1] / "dbc" / "carledger_demo.dbc"
    text = example.replace("/opt/carledger/share/carledger/dbc/carledger_demo.dbc", str(dbc))
    path = tmp_path / "agent.toml"
    path.write_text(text)
    if not dbc.exists():
        pytest.skip("demo DBC not built yet")
    config = load_config(path)
    assert config.policy == "/etc/carledger/policy.toml"
    assert config.timezone == "Europe/Berlin"
    assert config.wakeup_interval == 0.05


@pytest.mark.parametrize(
    "old, new, line, key, words",
    [
        ('max_age = 2.0', 'max_age = "soon"', 7, "seal.max_age", "expected a number"),
        ('max_age = 2.0', 'max_age = -1', 7, "seal.max_age", "at least"),
        ('channel = "x"', 'channel = "x"\nbitrate = true', 16, "bus[0].bitrate", "got a boolean"),
        ('channel = "x"', 'chanel = "x"', 15, "bus[0].chanel", "unknown key"),
        ('dbc = ["car.dbc"]', 'dbc = ["missing.dbc"]', 16, "bus[0].dbc", "not found"),
        ('dbc = ["car.dbc"]', '', 12, "bus[0].dbc", "required"),
        ('interface = "virtual"', '', 12, "bus[0].interface", "interface"),
        ('vehicle = "car-1"', 'vehicle = "car 1"', 3, "agent.vehicle", "identifier"),
        ('policy = "policy.toml"', 'policy = 3', 4, "agent.policy", "expected a string"),
        ('policy = "policy.toml"', 'timezone = "Mars/Base"', 4, "agent.timezone", "unknown time zone"),
        ('"Vehicle.CurrentLocation.*" = 1.0', '"Vehicle.CurrentLocation.*" = "x"', 10, "sampling.signals", "minimum interval"),
        ('policy = "policy.toml"', 'wakeup_interval = 0', 4, "agent.wakeup_interval", "at least 0.001"),
        ('policy = "policy.toml"', 'wakeup_interval = 5', 4, "agent.wakeup_interval", "at most 1 seconds"),
        # TOML's nan passes every range check (each comparison is false), inf the ones without a ceiling
        ('max_age = 2.0', 'max_age = nan', 7, "seal.max_age", "not a finite number"),
        ('max_age = 2.0', 'max_age = inf', 7, "seal.max_age", "not a finite number"),
        ('policy = "policy.toml"', 'wakeup_interval = nan', 4, "agent.wakeup_interval", "not a finite number"),
        ('policy = "policy.toml"', 'health_interval = nan', 4, "agent.health_interval", "not a finite number"),
        ('policy = "policy.toml"', 'disk_quota_mb = inf', 4, "agent.disk_quota_mb", "not a finite number"),
        ('policy = "policy.toml"', 'disk_quota_mb = nan', 4, "agent.disk_quota_mb", "not a finite number"),
        ('"Vehicle.CurrentLocation.*" = 1.0', '"Vehicle.CurrentLocation.*" = nan', 10, "sampling.signals", "minimum interval"),
        ('[sampling.signals]', '[sampling]\nmin_interval = nan\n[sampling.signals]', 10, "sampling.min_interval", "not a finite number"),
        ('channel = "x"', 'channel = "x"\nspeed = nan', 16, "bus[0].speed", "not a finite number"),
    ],
)
def test_mistakes_name_line_and_key(tmp_path, old, new, line, key, words):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: {key}"), message
    assert words in message


def test_streams_in_the_agent_config_point_to_the_policy(tmp_path):
    path = write(tmp_path, GOOD + '\n[[stream]]\nname = "all"\nsignals = ["x"]\n')
    with pytest.raises(ConfigError, match=r":18: stream\[0\]: streams are the owner's to decide: they moved to the policy"):
        load_config(path)


def test_duplicate_bus_names_point_at_the_second(tmp_path):
    path = write(tmp_path, GOOD + '\n[[bus]]\nname = "pt"\ninterface = "virtual"\ndbc = ["car.dbc"]\n')
    with pytest.raises(ConfigError, match=r":19: bus\[1\]\.name: duplicate bus name"):
        load_config(path)


def test_toml_syntax_error_has_line(tmp_path):
    path = write(tmp_path, GOOD.replace("[seal]", "[seal"))
    with pytest.raises(ConfigError, match=rf"^{path}:6: TOML syntax"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")


def test_replay_config_streams_become_a_policy_of_local_streams(tmp_path):
    from carledger.config import local_streams_policy
    from carledger.policy import policy_from_text

    (tmp_path / "a.dbc").write_text('VERSION ""\n')
    (tmp_path / "a.log").write_text("(1.0) can0 123#00\n")
    config = replay_config(str(tmp_path / "a.log"), [str(tmp_path / "a.dbc")], str(tmp_path / "s"), fast=True)
    assert config.policy is None and config.policy_streams is None  # no streams: nothing is collected
    assert config.buses[0].speed == 0.0
    config = replay_config(str(tmp_path / "a.log"), [str(tmp_path / "a.dbc")], str(tmp_path / "s"),
                           {"all": ["*"], "gps": ["Vehicle.CurrentLocation.*"]})
    policy = policy_from_text("--stream", local_streams_policy(config.policy_streams))
    assert [(s.name, s.signals, s.local) for s in policy.streams] == [("all", ("*",), True), ("gps", ("Vehicle.CurrentLocation.*",), True)]
    with pytest.raises(ConfigError, match="not found"):
        replay_config(str(tmp_path / "none.log"), [str(tmp_path / "a.dbc")], str(tmp_path / "s"))


def test_lines_after_sub_tables_and_multi_line_arrays_are_right(tmp_path):
    text = GOOD + (
        '\n[[bus]]\nname = "b2"\ninterface = "virtual"\ndbc = ["car.dbc"]\n'
        '[bus.options]\nwhat = [\n  [1, 2],\n]\n'
        '[[bus]]\nname = "b3"\ninterface = "virtual"\ndbc = ["car.dbc"]\nbitrate = "slow"\n'
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=r":30: bus\[2\]\.bitrate: expected an integer"):
        load_config(path)
