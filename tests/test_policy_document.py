"""The owner's policy: parsing, every kind of mistake with its line, classes, pseudonyms, digest."""

from __future__ import annotations

import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest

from carledger.dbc import path as shipped
from carledger.policy import (
    LOCATION,
    PERSONAL,
    TECHNICAL,
    Policy,
    PolicyError,
    PolicyUnreadable,
    check_policy,
    default_class,
    load_policy,
    new_secret,
    parse_duration,
    pseudonym,
    vehicle_signals,
)
from carledger.policy.duration import DurationError, format_duration

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "policy.example.toml"
NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def demo() -> list[tuple[str, str]]:
    return vehicle_signals([shipped("carledger_demo.dbc")])


CONSENT = "consent = { granted = 2026-11-01T00:00:00Z, expires = 2027-05-01T00:00:00Z }"

GOOD = f"""\
version = 2

[[zone]]
name = "home"
lat = 52.37
lon = 4.89
radius_m = 300

[[stream]]
name = "insurer"
recipient = "Acme"
purpose = "premium"
signals = ["Vehicle.Speed", "Vehicle.CurrentLocation.*"]
allow = ["location"]
precision = {{ "Vehicle.Speed" = 5 }}
location = {{ geohash = 6 }}
{CONSENT}

[[stream]]
name = "vault"
local = true
signals = ["Vehicle.*"]
"""


def write(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path: Path, text: str, known=None) -> list[tuple[int | None, str, str]]:
    path = write(tmp_path, text)
    return [(p.line, p.field, p.message) for p in check_policy(path, known, now=NOW)]


def marked_line(text: str) -> int:
    """The line carrying the `#!` marker: where the problem must be reported."""
    for number, line in enumerate(textwrap.dedent(text).splitlines(), start=1):
        if "#!" in line:
            return number
    raise AssertionError("no #! marker")


# Each case: (policy text with `#!` on the line of the problem, field, part of the message).
MISTAKES = {
    "unknown field": (
        f"""version = 1
        [[stream]]
        name = "a"
        recipient = "R"
        purpose = "p"
        signals = ["Vehicle.Speed"]
        retension = "30d"  #!
        {CONSENT}
        """, "stream[0].retension", "did you mean 'retention'"),
    "aggregate of location": (
        f"""version = 1
        [[stream]]
        name = "a"
        recipient = "R"
        purpose = "p"
        signals = ["Vehicle.Speed"]
        allow = ["location"]
        {CONSENT}
        [[stream.aggregate]]
        signals = ["Vehicle.CurrentLocation.Latitude"]  #!
        window = 60
        functions = ["mean"]
        """, "stream[0].aggregate[0].signals[0]", "location signals cannot be aggregated"),
    "unknown top-level field": ('version = 1\ncolour = "red"  #!\n', "colour", "unknown top-level field"),
    "bad type": (
        """version = 1
        [[zone]]
        name = "home"
        lat = 52.0
        lon = 4.0
        radius_m = "300"  #!
        """, "zone[0].radius_m", "expected a number, got a string"),
    "missing expiry": (
        """version = 1
        [[stream]]
        name = "a"
        recipient = "R"
        purpose = "p"
        signals = ["Vehicle.Speed"]
        consent = { granted = 2026-11-01T00:00:00Z }  #!
        """, "stream[0].consent.expires", "consent must expire"),
    "missing consent": (
        """version = 1
        [[stream]]  #!
        name = "a"
        recipient = "R"
        purpose = "p"
        signals = ["Vehicle.Speed"]
        """, "stream[0].consent", "required"),
    "zone without radius": (
        """version = 1
        [[zone]]  #!
        name = "home"
        lat = 52.0
        lon = 4.0
        """, "zone[0].radius_m", "needs radius_m"),
    "unknown signal pattern": (
        f"""version = 1
        [[stream]]
        name = "a"
        recipient = "R"
        purpose = "p"
        signals = ["Vehicle.Speed", "Vehicle.Sped"]  #!
        {CONSENT}
        """, "stream[0].signals[1]", "unknown signal pattern 'Vehicle.Sped'"),
    "expiry before grant": (
        """version = 1
        [[stream]]
        name = "a"
        recipient = "R"
        purpose = "p"
        signals = ["Vehicle.Speed"]
        consent = { granted = 2026-11-01T00:00:00Z, expires = 2026-10-01T00:00:00Z }  #!
        """, "stream[0].consent.expires", "before it was granted"),
    "expired consent": (
        """version = 1
        [[stream]]
        name = "a"
        recipient = "R"
        purpose = "p"
        signals = ["Vehicle.Speed"]
        consent = { granted = 2026-01-01T00:00:00Z, expires = 2026-11-01T00:00:00Z }  #!
        """, "stream[0].consent.expires", "consent expired on 2026-11-01"),
    "consent longer than 2 years": (
        """version = 1
        [[stream]]
        name = "a"
        recipient = "R"
        purpose = "p"
        signals = ["Vehicle.Speed"]
        [stream.consent]
        granted = 2026-11-01T00:00:00Z
        expires = 2029-11-01T00:00:00Z  #!
        """, "stream[0].consent.expires", "longer than 2 years"),
    "consent without time zone": (
        """version = 1
        [[stream]]
        name = "a"
        recipient = "R"
        purpose = "p"
        signals = ["Vehicle.Speed"]
        consent = { granted = 2026-11-01T00:00:00, expires = 2027-01-01 }  #!
        """, "stream[0].consent.granted", "give a time zone"),
    "class not allowed": (
        f"""version = 1
        [[stream]]
        name = "a"
        recipient = "R"
        purpose = "p"
        signals = ["Vehicle.Speed", "Vehicle.CurrentLocation.Latitude"]  #!
        {CONSENT}
        """, "stream[0].signals[1]", 'class not allowed'),
    "class not allowed by DBC name": (
        f"""version = 1
        [[stream]]
        name = "a"
        recipient = "R"
        purpose = "p"
        signals = "ACU_STATUS.DriverBeltLatched"  #!
        {CONSENT}
        """, "stream[0].signals", 'add allow = ["personal"]'),
    "duplicate stream name": (
        """version = 1
        [[stream]]
        name = "a"
        local = true
        signals = ["Vehicle.Speed"]
        [[stream]]
        name = "a"  #!
        local = true
        signals = ["Vehicle.Speed"]
        """, "stream[1].name", "duplicate stream name 'a'"),
    "version zero": ("version = 0  #!\n", "version", "at least 1"),
    "version not an integer": ("version = 1.5  #!\n", "version", "expected an integer"),
    "version missing": ('paused = false  #!\n', "version", "required"),
    "bad duration": (
        """version = 1
        [[stream]]
        name = "a"
        local = true
        signals = ["Vehicle.Speed"]
        min_interval = "30x"  #!
        """, "stream[0].min_interval", "'30x' is not a duration"),
    "negative interval": (
        """version = 1
        [[stream]]
        name = "a"
        local = true
        signals = ["Vehicle.Speed"]
        min_interval = -1  #!
        """, "stream[0].min_interval", "at least 0"),
    "coarsening both ways": (
        f"""version = 1
        [[stream]]
        name = "a"
        recipient = "R"
        purpose = "p"
        signals = ["Vehicle.CurrentLocation.*"]
        allow = ["location"]
        location = {{ decimals = 3, geohash = 6 }}  #!
        {CONSENT}
        """, "stream[0].location", "either decimals or geohash"),
    "coarsening without allow": (
        f"""version = 1
        [[stream]]
        name = "a"
        recipient = "R"
        purpose = "p"
        signals = ["Vehicle.Speed"]
        location = {{ decimals = 3 }}  #!
        {CONSENT}
        """, "stream[0].location", 'add "location" to allow'),
    "polygon with 2 points": (
        """version = 1
        [[zone]]
        name = "work"
        polygon = [[52.0, 4.0], [52.1, 4.1]]  #!
        """, "zone[0].polygon", "at least 3 points"),
    "latitude out of range": (
        """version = 1
        [[zone]]
        name = "home"
        lat = 95.0  #!
        lon = 4.0
        radius_m = 100
        """, "zone[0].lat", "between -90 and 90"),
    "polygon point out of range": (
        """version = 1
        [[zone]]
        name = "work"
        polygon = [  #!
          [52.0, 4.0],
          [52.1, 194.1],
          [52.2, 4.2]
        ]
        """, "zone[0].polygon[1]", "longitude must be between"),
    "unknown metric": (
        f"""version = 1
        [[stream]]
        name = "a"
        recipient = "R"
        purpose = "p"
        raw = false
        {CONSENT}
        [stream.metrics]
        distance = true
        fuel_score = true  #!
        """, "stream[0].metrics.fuel_score", "unknown metric"),
    "negative threshold": (
        f"""version = 1
        [[stream]]
        name = "a"
        recipient = "R"
        purpose = "p"
        raw = false
        {CONSENT}
        [stream.metrics]
        harsh_braking = {{ threshold = -4.0 }}  #!
        """, "stream[0].metrics.harsh_braking.threshold", "greater than 0"),
    "unknown aggregate function": (
        """version = 1
        [[stream]]
        name = "a"
        local = true
        [[stream.aggregate]]
        signals = ["Vehicle.Speed"]
        window = "1m"
        functions = ["mean", "median"]  #!
        """, "stream[0].aggregate[0].functions[1]", "unknown function 'median'"),
    "bad encryption key": (
        f"""version = 1
        [[stream]]
        name = "a"
        recipient = "R"
        purpose = "p"
        signals = ["Vehicle.Speed"]
        encrypt_to = "00ff"  #!
        {CONSENT}
        """, "stream[0].encrypt_to", "64 hex characters"),
    "local stream with consent": (
        f"""version = 1
        [[stream]]
        name = "a"
        local = true
        signals = ["Vehicle.Speed"]
        {CONSENT}  #!
        """, "stream[0].consent", "needs no consent"),
    "missing recipient": (
        f"""version = 1
        [[stream]]  #!
        name = "a"
        purpose = "p"
        signals = ["Vehicle.Speed"]
        {CONSENT}
        """, "stream[0].recipient", "required"),
    "unknown class": (
        """version = 1
        [classes]
        "Vehicle.Speed" = "secret"  #!
        """, 'classes."Vehicle.Speed"', "unknown class 'secret'"),
    "unknown zone": (
        """version = 1
        [[stream]]
        name = "a"
        local = true
        signals = ["Vehicle.Speed"]
        zones = ["garage"]  #!
        """, "stream[0].zones[0]", "unknown zone 'garage'"),
    "reserved stream name": (
        """version = 1
        [[stream]]
        name = "health"  #!
        local = true
        signals = ["Vehicle.Speed"]
        """, "stream[0].name", "the agent's own stream"),
    "stream sends nothing": (
        """version = 1
        [[stream]]  #!
        name = "a"
        local = true
        """, "stream[0].signals", "sends nothing"),
    "vin without personal": (
        f"""version = 1
        [[stream]]
        name = "a"
        recipient = "R"
        purpose = "p"
        signals = ["Vehicle.Speed"]
        identity = "vin"  #!
        {CONSENT}
        """, "stream[0].identity", 'add "personal"'),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_each_mistake_is_reported_with_line_and_field(tmp_path: Path, demo, case: str) -> None:
    text, field, message = MISTAKES[case]
    found = problems(tmp_path, text, demo)
    assert any(f == field and message in m for _, f, m in found), found
    line = next(line for line, f, m in found if f == field and message in m)
    assert line == marked_line(text), found


def test_every_problem_in_one_file_is_reported_in_file_order(tmp_path: Path, demo) -> None:
    text = """\
    version = 0
    [[zone]]
    name = "home"
    lat = 52.0
    lon = 4.0
    [[stream]]
    name = "a"
    recipient = "R"
    purpose = "p"
    signals = ["Vehicle.Speed"]
    min_interval = "30x"
    consent = { granted = 2026-11-01T00:00:00Z }
    [[stream]]
    name = "b"
    recipient = "S"
    purpose = "q"
    signals = ["Nope.*"]
    consent = { granted = 2026-11-01T00:00:00Z, expires = 2026-10-01T00:00:00Z }
    [stream.metrics]
    harsh_braking = { threshold = -1 }
    """
    found = problems(tmp_path, text, demo)
    assert [(line, field) for line, field, _ in found] == [
        (1, "version"),
        (2, "zone[0].radius_m"),
        (11, "stream[0].min_interval"),
        (12, "stream[0].consent.expires"),
        (17, "stream[1].signals[0]"),
        (18, "stream[1].consent.expires"),
        (20, "stream[1].metrics.harsh_braking.threshold"),
    ]
    path = tmp_path / "policy.toml"
    with pytest.raises(PolicyError) as info:
        load_policy(path, demo, now=NOW)
    assert len(info.value.problems) == 7
    assert str(info.value).splitlines()[0] == f"{path}:1: version: must be an integer of at least 1 (it only goes up), got 0"


def test_sub_tables_of_later_streams_get_their_own_lines(tmp_path: Path) -> None:
    text = f"""\
    version = 1
    [[stream]]
    name = "a"
    recipient = "R"
    purpose = "p"
    raw = false
    {CONSENT}
    [stream.metrics]
    over_speed = {{ limit = -1 }}
    [[stream]]
    name = "b"
    recipient = "R"
    purpose = "p"
    raw = false
    {CONSENT}
    [stream.metrics]
    distance = true
    over_speed = {{ limit = -2 }}
    [[stream.aggregate]]
    signals = "Vehicle.Speed"
    window = "1m"
    functions = []
    [[stream.aggregate]]
    signals = "Vehicle.Speed"
    window = "zz"
    functions = ["max"]
    """
    assert problems(tmp_path, text) == [
        (9, "stream[0].metrics.over_speed.limit", "must be greater than 0, got -1"),
        (18, "stream[1].metrics.over_speed.limit", "must be greater than 0, got -2"),
        (22, "stream[1].aggregate[0].functions", "give at least one of: min, max, mean, count"),
        (25, "stream[1].aggregate[1].window", "'zz' is not a duration; " + parse_duration.__globals__["HINT"]),
    ]


def test_a_multiline_array_end_is_not_a_table_header(tmp_path: Path) -> None:
    text = """\
    version = 1
    [[zone]]
    name = "work"
    polygon = [
      [52.0, 4.0],
      [52.1, 4.1],
      [52.2, 4.0]
    ]
    radius_m = 5
    """
    assert problems(tmp_path, text) == [(9, "zone[0].radius_m", "give either lat, lon and radius_m (a circle) or polygon, not both")]


def test_syntax_error_and_missing_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'version = 1\n[[stream]\n')
    (problem,) = check_policy(path)
    assert problem.line == 2 and "TOML syntax" in problem.message
    with pytest.raises(PolicyUnreadable):
        load_policy(tmp_path / "nope.toml")
    assert load_policy(tmp_path / "nope.toml", missing_ok=True) == Policy.empty()


@pytest.mark.parametrize("version, ok", [(2**53 - 1, True), (2**53, False), (2**70, False)])
def test_a_version_beyond_exact_json_numbers_is_refused(tmp_path: Path, version: int, ok: bool) -> None:
    """2**70 once passed: a version a JSON reader rounds could never be told from its neighbour."""
    path = write(tmp_path, f"version = {version}\n")
    problems = check_policy(path)
    if ok:
        assert problems == [] and load_policy(path).version == version
    else:
        (problem,) = problems
        assert problem.line == 1 and problem.field == "version" and problem.message == f"must be at most {2**53 - 1} (2**53 - 1), got {version}"


def test_example_policy_is_valid(demo) -> None:
    assert check_policy(EXAMPLE, demo, now=NOW) == []
    policy = load_policy(EXAMPLE, demo, now=NOW)
    assert {s.name for s in policy.streams} >= {"insurer", "fleet", "vault"}
    assert policy.edr is not None and [name for name, _ in policy.edr.keys] == ["owner", "escrow"]
    assert policy.edr.keep_non_deployment == 2 and policy.edr.post == 5.0 and policy.edr.event_timeout == 0.3
    metrics = policy.stream("insurer").metrics
    assert metrics is not None and set(metrics.enabled()) == {
        "distance", "harsh_braking", "harsh_acceleration", "night_driving", "over_speed"}
    assert policy.stream("vault").consent is None and policy.stream("vault").local


def test_empty_policy_collects_nothing(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "# nothing yet\n"))
    assert policy.streams == () and policy.version == 0
    assert policy.active_streams(NOW) == ()


def test_parsed_values_and_queries(tmp_path: Path, demo) -> None:
    policy = load_policy(write(tmp_path, GOOD), demo, now=NOW)
    insurer = policy.stream("insurer")
    assert insurer.recipient == "Acme" and insurer.allow == ("location",)
    assert insurer.consent is not None and insurer.consent.expires == datetime(2027, 5, 1, tzinfo=timezone.utc)
    assert insurer.zones == ("home",)
    assert insurer.quantum("Vehicle.Speed") == 5 and insurer.quantum("Vehicle.TraveledDistance") is None
    assert insurer.location is not None and insurer.location.geohash == 6
    assert policy.allowed("insurer", "Vehicle.Speed")
    assert policy.allowed("insurer", "Vehicle.CurrentLocation.Latitude", "GPS_POSITION.Latitude")
    assert not policy.allowed("insurer", "Vehicle.TraveledDistance")
    vault = policy.stream("vault")
    assert policy.allowed(vault, "Vehicle.Speed")
    assert not policy.allowed(vault, "Vehicle.CurrentLocation.Latitude")  # named, but location not allowed
    assert not policy.allowed(vault, "Vehicle.Cabin.Seat.Row1.DriverSide.IsBelted")
    assert [s.name for s in policy.active_streams(NOW)] == ["insurer", "vault"]
    assert [s.name for s in policy.active_streams(datetime(2027, 6, 1, tzinfo=timezone.utc))] == ["vault"]
    with pytest.raises(KeyError):
        policy.stream("nope")
    home = policy.zone("home")
    assert home.contains(52.371, 4.891) and not home.contains(52.38, 4.89)


def test_class_overrides_and_dbc_names(tmp_path: Path) -> None:
    text = GOOD + '\n[classes]\n"GPS_POSITION.*" = "location"\n"Vehicle.Cabin.Seat.*.Airbag.*" = "technical"\n'
    policy = load_policy(write(tmp_path, text), now=NOW)
    assert policy.effective_class("GPS_POSITION.Latitude") == LOCATION
    assert policy.effective_class("ECM_ENGINE.EngineSpeed") == TECHNICAL
    assert policy.effective_class("Vehicle.Cabin.Seat.Row1.DriverSide.Airbag.IsDeployed") == TECHNICAL
    assert policy.effective_class("Vehicle.Cabin.Seat.Row1.DriverSide.IsBelted") == PERSONAL
    assert policy.allowed("vault", "Vehicle.Cabin.Seat.Row1.DriverSide.Airbag.IsDeployed")


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("Vehicle.Speed", TECHNICAL),
        ("Vehicle.Powertrain.CombustionEngine.ECT", TECHNICAL),
        ("Vehicle.CurrentLocation.Latitude", LOCATION),
        ("Vehicle.CurrentLocation.Heading", LOCATION),
        ("Vehicle.Cabin.Infotainment.Navigation.DestinationSet.Latitude", LOCATION),
        ("Vehicle.Cabin.Door.Row1.DriverSide.IsOpen", PERSONAL),
        ("Vehicle.Cabin.Seat.Row1.PassengerSide.IsOccupied", PERSONAL),
        ("Vehicle.Driver.HeartRate", PERSONAL),
        ("Vehicle.Occupant.Row1.DriverSide.Identifier.Subject", PERSONAL),
        ("Vehicle.Body.Seat.IsBelted", PERSONAL),
        ("GPS_POSITION.Latitude", TECHNICAL),  # a DBC name: the policy must classify it
        ("Vehicle.Cabin.*", PERSONAL),
        ("*", TECHNICAL),
    ],
)
def test_default_classes(name: str, cls: str) -> None:
    assert default_class(name) == cls


def test_digest_ignores_layout_and_follows_content(tmp_path: Path) -> None:
    a = load_policy(write(tmp_path, GOOD, "a.toml"), now=NOW)
    b = load_policy(write(tmp_path, "# reformatted\n" + GOOD.replace(" = ", "=").replace("radius_m=300", "radius_m = 300  # m"), "b.toml"), now=NOW)
    c = load_policy(write(tmp_path, GOOD.replace("geohash = 6", "geohash = 5"), "c.toml"), now=NOW)
    assert len(a.digest()) == 32
    assert a.digest() == b.digest()
    assert a.digest() != c.digest()


def test_pseudonyms_are_stable_per_recipient_and_unlinkable() -> None:
    secret = bytes(range(32))
    vin = "WVWZZZ1JZXW000001"
    a = pseudonym(secret, vin, "Acme Insurance")
    assert a == pseudonym(secret, vin, "Acme Insurance") == pseudonym(secret, " wvwzzz1jzxw000001 ", "Acme Insurance")
    assert len(a) == 32 and int(a, 16) >= 0
    assert a != pseudonym(secret, vin, "Fleet Ops")
    assert a != pseudonym(secret, "WVWZZZ1JZXW000002", "Acme Insurance")
    assert a != pseudonym(new_secret(), vin, "Acme Insurance")
    assert len(new_secret()) == 32 and new_secret() != new_secret()
    with pytest.raises(ValueError):
        pseudonym(b"short", vin, "Acme")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("1h30m", 5400), ("500ms", 0.5), ("1y", 365 * 86400), (2.5, 2.5), (0, 0)],
)
def test_durations(text, seconds) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30x", "", "d", "-5s", "1.d", True, [1]])
def test_bad_durations(text) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (30 * 86400, 3600, 90, 0.5, 365 * 86400)] == [
        "30 days", "1 hour", "90 s", "500 ms", "1 year"]
