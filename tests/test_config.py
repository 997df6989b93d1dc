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

[seal]
max_age = 2.0

[sampling.signals]
"Vehicle.CurrentLocation.*" = 1.0

[[bus]]
name = "pt"
interface = "virtual"
channel = "x"
dbc = ["car.dbc"]

[[stream]]
name = "all"
signals = ["*"]
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
    assert config.streams[0].signals == ("*",)


def test_example_config_in_docs_is_valid_apart_from_installed_paths(tmp_path):
    example = (Path(__file__).parents[1] / "docs" / "agent.example.toml").read_text()
    dbc = Path(__file__).parents[1] / "dbc" / "carledger_demo.dbc"
    text = example.replace("/usr/share/carledger/dbc/carledger_demo.dbc", str(dbc))
    path = tmp_path / "agent.toml"
    path.write_text(text)
    if not dbc.exists():
        pytest.skip("demo DBC not built yet")
    config = load_config(path)
    assert [s.name for s in config.streams] == ["driving", "trips"]


@pytest.mark.parametrize(
    "old, new, line, key, words",
    [
        ('max_age = 2.0', 'max_age = "soon"', 6, "seal.max_age", "expected a number"),
        ('max_age = 2.0', 'max_age = -1', 6, "seal.max_age", "at least"),
        ('channel = "x"', 'channel = "x"\nbitrate = true', 15, "bus[0].bitrate", "got a boolean"),
        ('channel = "x"', 'chanel = "x"', 14, "bus[0].chanel", "unknown key"),
        ('dbc = ["car.dbc"]', 'dbc = ["missing.dbc"]', 15, "bus[0].dbc", "not found"),
        ('dbc = ["car.dbc"]', '', 11, "bus[0].dbc", "required"),
        ('signals = ["*"]', 'signals = [1]', 19, "stream[0].signals", "non-empty string"),
        ('name = "all"', 'name = "a b"', 18, "stream[0].name", "not a valid name"),
        ('interface = "virtual"', '', 11, "bus[0].interface", "interface"),
        ('vehicle = "car-1"', 'vehicle = "car 1"', 3, "agent.vehicle", "identifier"),
        ('"Vehicle.CurrentLocation.*" = 1.0', '"Vehicle.CurrentLocation.*" = "x"', 9, "sampling.signals", "minimum interval"),
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


def test_duplicate_stream_names_point_at_the_second(tmp_path):
    path = write(tmp_path, GOOD + '\n[[stream]]\nname = "all"\nsignals = ["x"]\n')
    with pytest.raises(ConfigError, match=r":22: stream\[1\]\.name: duplicate stream name"):
        load_config(path)


def test_toml_syntax_error_has_line(tmp_path):
    path = write(tmp_path, GOOD.replace("[seal]", "[seal"))
    with pytest.raises(ConfigError, match=rf"^{path}:5: TOML syntax"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")


def test_replay_config_defaults_to_one_stream_of_everything(tmp_path):
    (tmp_path / "a.dbc").write_text('VERSION ""\n')
    (tmp_path / "a.log").write_text("")
    config = replay_config(str(tmp_path / "a.log"), [str(tmp_path / "a.dbc")], str(tmp_path / "s"), fast=True)
    assert [(s.name, s.signals) for s in config.streams] == [("all", ("*",))]
    assert config.buses[0].speed == 0.0
    with pytest.raises(ConfigError, match="not found"):
        replay_config(str(tmp_path / "none.log"), [str(tmp_path / "a.dbc")], str(tmp_path / "s"))


def test_policy_digest_changes_with_streams(tmp_path):
    a = load_config(write(tmp_path, GOOD))
    b = load_config(write(tmp_path, GOOD.replace('signals = ["*"]', 'signals = ["Vehicle.*"]')))
    assert a.policy_digest() != b.policy_digest()
    assert a.policy_digest() == load_config(write(tmp_path, GOOD)).policy_digest()


def test_lines_after_sub_tables_and_multi_line_arrays_are_right(tmp_path):
    text = GOOD + (
        '\n[[bus]]\nname = "b2"\ninterface = "virtual"\ndbc = ["car.dbc"]\n'
        '[bus.options]\nwhat = [\n  [1, 2],\n]\n'
        '[[stream]]\nname = "s2"\nsignals = "x"\nmin_interval = "slow"\n'
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=r":32: stream\[1\]\.min_interval: expected a number"):
        load_config(path)
