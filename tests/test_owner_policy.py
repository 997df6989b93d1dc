"""The owner's policy at work: simulated drives through the whole agent, checked on exported data.

Every assertion here reads what a recipient (or the owner) would get: the
records `carledger log export` prints, the signed block headers, `carledger
verify` and `carledger audit`; never the agent's internal state.
"""

from __future__ import annotations

import json
import sqlite3
import textwrap
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import can
import pytest

from carledger.cli import main
from carledger.config import load_config
from carledger.dbc import path as dbc_path
from carledger.ledger import Header, cose
from carledger.ledger.keys import load_or_create_secret
from carledger.owner.client import submit
from carledger.owner.wipe import check_statement
from carledger.pipeline import Pipeline
from carledger.policy import pseudonym
from carledger.policy.classes import LOCATION, PERSONAL, default_class
from carledger.policy.location import haversine_m
from carledger_sim.car import SimulatedCar
from carledger_sim.route import HOME
from conftest import wait_until

VIN = "WVWZZZ1JZXW000001"
NOW = time.time()
START = float(int(NOW) + 3600)  # drives happen in the next hour: consents are checked against now when applied
ZONE_M = 200.0
MARGIN_M = 50.0  # carledger.policy.engine.EngineSettings.zone_margin_m


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def consent(expires: float | None = None) -> str:
    return f"consent = {{ granted = {iso(NOW - 86400)}, expires = {iso(expires or NOW + 300 * 86400)} }}"


HOME_ZONE = f"""
[[zone]]
name = "home"
lat = {HOME[0]}
lon = {HOME[1]}
radius_m = {ZONE_M}
"""


def record(path: Path, scenario: str, duration: float, start: float = START, seed: int = 1) -> Path:
    with can.Logger(str(path)) as logger:
        for msg in SimulatedCar(scenario, seed=seed, duration=duration, start_time=start).frames():
            logger.on_message_received(msg)
    return path


def write_agent(folder: Path, bus: str, policy: str | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    line = ""
    if policy is not None:
        (folder / "policy.toml").write_text(textwrap.dedent(policy))
        line = 'policy = "policy.toml"'
    config = folder / "agent.toml"
    config.write_text(textwrap.dedent(f"""
        [agent]
        store = "ledger"
        vehicle = "{VIN}"
        timezone = "Europe/Berlin"
        {line}
    """) + textwrap.dedent(bus))
    return config


def replay_bus(log: Path) -> str:
    return f"""
        [[bus]]
        name = "car"
        replay = "{log}"
        speed = 0
        dbc = ["{dbc_path('carledger_demo.dbc')}"]
    """


def drive(folder: Path, log: Path, policy: str | None) -> Path:
    """Replay a recorded drive through the agent under `policy`; returns the store."""
    config = write_agent(folder, replay_bus(log), policy)
    Pipeline(load_config(config)).run()
    return folder / "ledger"


def export(store: Path, stream: str) -> list[dict]:
    out = store.parent / f"export-{stream}.jsonl"
    assert main(["log", "export", str(store), "--stream", stream, "--events", "-o", str(out)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def samples(records: list[dict]) -> list[dict]:
    return [r for r in records if "name" in r]


def events(records: list[dict]) -> list[dict]:
    return [r for r in records if "event" in r]


def verify(store: Path, capsys) -> dict:
    capsys.readouterr()
    code = main(["verify", str(store), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report["problems"]
    return report


def positions(records: list[dict]) -> list[tuple[float, float, float]]:
    """(t, lat, lon) a recipient reconstructs from a stream: the newest latitude with the newest longitude."""
    lat = lon = None
    out = []
    for r in samples(records):
        if r["name"] == "Vehicle.CurrentLocation.Latitude":
            lat = r["value"]
        elif r["name"] == "Vehicle.CurrentLocation.Longitude":
            lon = r["value"]
        else:
            continue
        if lat is not None and lon is not None:
            out.append((r["t"], lat, lon))
    return out


def vids(store: Path) -> dict[str, set[str]]:
    db = sqlite3.connect(f"file:{store / 'ledger.sqlite'}?mode=ro", uri=True)
    out: dict[str, set[str]] = {}
    for stream, sign1 in db.execute("SELECT stream, sign1 FROM blocks"):
        out.setdefault(stream, set()).add(Header.decode(cose.decode_sign1(sign1).payload).vid)
    db.close()
    return out


# -- privacy zones ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def errand(tmp_path_factory):
    """From home into town and back, parked at home long enough for the trip to end there."""
    folder = tmp_path_factory.mktemp("errand")
    car = SimulatedCar("errand", seed=1, duration=660.0, start_time=START)
    return record(folder / "errand.log", "errand", 660.0), car


def test_a_drive_from_home_and_back_never_shows_home(errand, tmp_path, capsys):
    log, car = errand
    truth = [car.state_at(t) for t in range(0, 661, 5)]
    away = [haversine_m(*HOME, s.lat, s.lon) for s in truth]
    assert away[0] < 5 and max(away) > 400 and away[-1] < 5, "the drive must leave the zone and come back"
    office = (HOME[0] + 0.2, HOME[1] + 0.2)  # a zone nowhere near the drive: trips there are not hidden
    store = drive(tmp_path, log, "version = 1\n" + HOME_ZONE + f"""
        [[zone]]
        name = "office"
        lat = {office[0]}
        lon = {office[1]}
        radius_m = 300

        [[stream]]
        name = "fleet"
        recipient = "Fleet Ops"
        purpose = "tracking"
        signals = ["Vehicle.Speed", "Vehicle.CurrentLocation.*"]
        allow = ["location"]
        location = {{ decimals = 3 }}
        min_interval = 1
        {consent()}

        [[stream]]
        name = "maps"
        recipient = "Maps Inc"
        purpose = "traffic"
        signals = ["Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"]
        allow = ["location"]
        location = {{ geohash = 7 }}
        {consent()}

        [[stream]]
        name = "vault"
        local = true
        purpose = "my own log"
        signals = ["Vehicle.*"]
        allow = ["location", "personal"]

        [[stream]]
        name = "control"
        local = true
        purpose = "shows trips are recorded where no zone applies"
        signals = ["Vehicle.CurrentLocation.*"]
        allow = ["location"]
        zones = ["office"]
        location = {{ decimals = 3 }}
    """)
    verify(store, capsys)
    for stream in ("fleet", "maps", "vault"):
        records = export(store, stream)
        fixes = positions(records)
        assert len(fixes) >= 10, f"{stream}: the drive outside the zone must be recorded"
        nearest = min(haversine_m(*HOME, lat, lon) for _, lat, lon in fixes)
        assert nearest > ZONE_M + MARGIN_M, f"{stream}: a recorded position {nearest:.0f} m from home"
        names = {r["name"] for r in samples(records)}
        assert not any(n.startswith("trip.") for n in names), f"{stream}: trip start/end at home recorded"
        assert [e["event"] for e in events(records)] == ["stream-started"], "no marker may show where a zone is"
        for r in samples(records):  # heading, altitude, GPS speed: only where the car was outside the zone
            if default_class(r["name"]) == LOCATION and not r["name"].endswith(("Latitude", "Longitude")):
                state = car.state_at(r["t"] - START)
                assert haversine_m(*HOME, state.lat, state.lon) > ZONE_M, f"{stream}: {r['name']} recorded in the zone"
    decimals = {round(r["value"], 3) == r["value"] for r in samples(export(store, "fleet")) if "Location.L" in r["name"]}
    assert decimals == {True}
    control = {r["name"] for r in samples(export(store, "control"))}
    assert {"trip.start.latitude", "trip.start.longitude", "trip.end.latitude", "trip.end.longitude"} <= control
    assert min(haversine_m(*HOME, lat, lon) for _, lat, lon in positions(export(store, "control"))) < 150


# -- on-board metrics ---------------------------------------------------------------------------


def test_an_insurer_allowed_only_metrics_gets_exactly_those(tmp_path, capsys):
    log = record(tmp_path / "brake.log", "harsh_brake", 45.0)
    car = SimulatedCar("harsh_brake", seed=1, duration=45.0, start_time=START)
    store = drive(tmp_path / "a", log, f"""
        version = 1
        [[stream]]
        name = "insurer"
        recipient = "Acme Insurance"
        purpose = "pay-how-you-drive premium"
        raw = false
        {consent()}
        [stream.metrics]
        distance = true
        harsh_braking = true
        harsh_acceleration = {{ threshold = 3.0 }}
        night_driving = true
        over_speed = {{ limit = 70.0 }}
    """)
    verify(store, capsys)
    records = samples(export(store, "insurer"))
    names = {r["name"] for r in records}
    assert names == {
        "metric.distance_km", "metric.harsh_braking_count", "metric.harsh_acceleration_count",
        "metric.night_share", "metric.over_speed_share", "metric.driving_time_s",
    }
    assert not any(r.get("message") not in (None, "metric") for r in records), "no DBC signal reaches the insurer"
    values = {r["name"]: r["value"] for r in records}
    truth_km = car.state_at(45.0).distance_m / 1000
    assert values["metric.distance_km"] == pytest.approx(truth_km, rel=0.02)
    assert values["metric.harsh_braking_count"] == 1
    assert 0.3 < values["metric.over_speed_share"] < 1.0
    raw = json.dumps(export(store, "insurer"))
    assert "Vehicle." not in raw and "Latitude" not in raw


# -- consent --------------------------------------------------------------------------------------

FLEET = """
[[stream]]
name = "fleet"
recipient = "Fleet Ops"
purpose = "maintenance"
signals = ["Vehicle.Speed", "Vehicle.Powertrain.CombustionEngine.Speed"]
precision = {{ "Vehicle.Speed" = 5 }}
{consent}

[[stream]]
name = "vault"
local = true
purpose = "my own log"
signals = ["Vehicle.Speed"]
"""


def test_consent_that_expires_during_a_drive_ends_the_stream_there(tmp_path, capsys):
    log = record(tmp_path / "city.log", "city", 120.0)
    expiry = START + 60
    store = drive(tmp_path / "a", log, "version = 1\n" + FLEET.format(consent=consent(expiry)))
    report = verify(store, capsys)
    fleet = export(store, "fleet")
    assert max(r["t"] for r in samples(fleet)) < expiry
    last = fleet[-1]
    assert last["event"] == "consent-expired" and last["t"] == pytest.approx(expiry)
    assert last["detail"]["consent"]["expires"] == iso(expiry)
    assert report["streams"]["fleet"]["last_seq"] == report["streams"]["fleet"]["blocks"] - 1
    assert max(r["t"] for r in samples(export(store, "vault"))) > expiry + 50  # a local stream needs no consent
    assert {r["value"] % 5 for r in samples(fleet) if r["name"] == "Vehicle.Speed"} == {0}  # the quantum


def test_consent_that_expired_while_the_agent_was_stopped_is_declared_on_the_next_start(tmp_path, capsys):
    expiry = START + 90
    policy = "version = 1\n" + FLEET.format(consent=consent(expiry))
    drive(tmp_path / "a", record(tmp_path / "one.log", "city", 60.0), policy)
    store = drive(tmp_path / "a", record(tmp_path / "two.log", "city", 60.0, start=START + 120), policy)
    verify(store, capsys)
    fleet = export(store, "fleet")
    assert fleet[-1]["event"] == "consent-expired" and fleet[-1]["t"] == pytest.approx(expiry)
    assert max(r["t"] for r in samples(fleet)) < START + 60


def test_revocation_pause_and_a_new_policy_while_the_agent_runs(tmp_path, capsys):
    config = write_agent(tmp_path, f"""
        [seal]
        max_age = 0.2
        [[bus]]
        name = "car"
        interface = "carledger-sim"
        channel = "city"
        options = {{ seed = 5, speed = 1, start_time = {time.time()} }}
        dbc = ["{dbc_path('carledger_demo.dbc')}"]
    """, "version = 1\n" + FLEET.format(consent=consent()))
    store = tmp_path / "ledger"
    pipeline = Pipeline(load_config(config))
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()
    try:
        def sealed(stream: str) -> int:
            db = sqlite3.connect(f"file:{store / 'ledger.sqlite'}?mode=ro", uri=True)
            try:
                return db.execute("SELECT count(*) FROM blocks WHERE stream = ?", (stream,)).fetchone()[0]
            finally:
                db.close()

        wait_until(lambda: sealed("fleet") >= 3)
        assert main(["consent", "revoke", "fleet", "--store", str(store)]) == 0
        revoked_out = capsys.readouterr().out
        assert "by the running agent" in revoked_out
        vault_then = sealed("vault")
        wait_until(lambda: sealed("vault") >= vault_then + 3)  # the agent keeps collecting the rest

        newer = tmp_path / "v2.toml"
        newer.write_text("version = 2\n" + FLEET.format(consent=consent()) + textwrap.dedent("""
            [[stream]]
            name = "engine"
            local = true
            signals = ["Vehicle.Powertrain.CombustionEngine.*"]
        """))
        assert main(["policy", "apply", str(newer), "--store", str(store)]) == 0
        wait_until(lambda: sealed("engine") >= 2)
        assert main(["policy", "apply", str(tmp_path / "policy.toml"), "--store", str(store)]) == 1  # version 1 < 2
        assert main(["pause", "--store", str(store)]) == 0
        paused_vault = sealed("vault")
        assert main(["resume", "--store", str(store)]) == 0
        wait_until(lambda: sealed("vault") >= paused_vault + 2)
    finally:
        pipeline.stop()
        thread.join(15)
    verify(store, capsys)
    fleet = export(store, "fleet")
    revoked = [e for e in events(fleet) if e["event"] == "consent-revoked"]
    assert len(revoked) == 1
    assert all(r["t"] <= revoked[0]["t"] for r in samples(fleet)), "a sample after the revocation"
    assert [e["event"] for e in events(fleet)][-1] in ("consent-revoked", "pause", "resume", "policy")
    assert not any(r["t"] > revoked[0]["t"] for r in samples(fleet))
    vault = [e["event"] for e in events(export(store, "vault"))]
    assert vault[:1] == ["stream-started"] and "policy" in vault and "pause" in vault and "resume" in vault
    assert vault.index("pause") < vault.index("resume")
    engine = export(store, "engine")
    assert engine[0]["event"] == "stream-started" and engine[0]["detail"]["policy"]["version"] == 2
    capsys.readouterr()
    assert main(["audit", str(store), "--json"]) == 0
    audit = json.loads(capsys.readouterr().out)
    kinds = [d["kind"] for d in audit["decisions"]]
    assert kinds[:1] == ["policy-applied"] and "consent-revoked" in kinds and "pause" in kinds and "resume" in kinds
    assert [d["detail"]["version"] for d in audit["decisions"] if d["kind"] == "policy-applied"] == [1, 2]
    disclosed = [d for d in audit["disclosures"] if d["stream"] == "fleet"]
    assert disclosed and disclosed[0]["recipient"] == "Fleet Ops" and disclosed[0]["purpose"] == "maintenance"
    assert disclosed[0]["policy_version"] == 1  # a revoked consent shows its revocation, not its old expiry:
    revoked_at = next(d["detail"]["revoked"] for d in audit["decisions"] if d["kind"] == "consent-revoked")
    assert disclosed[0]["consent"] == {"granted": iso(NOW - 86400), "revoked": revoked_at}


def test_consent_commands_while_the_agent_is_stopped(tmp_path, capsys):
    store = drive(tmp_path / "a", record(tmp_path / "c.log", "city", 20.0), "version = 1\n" + FLEET.format(consent=consent()))
    capsys.readouterr()
    assert main(["consent", "list", "--store", str(store), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(s["stream"], s["state"]) for s in listed["streams"]] == [("fleet", "active")]
    assert main(["consent", "revoke", "fleet", "--store", str(store)]) == 0
    assert main(["consent", "revoke", "vault", "--store", str(store)]) == 1  # local: no consent to revoke
    assert main(["consent", "grant", "fleet", "--until", "3y", "--store", str(store)]) == 1  # over 2 years
    capsys.readouterr()
    assert main(["consent", "list", "--store", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["streams"][0]["state"] == "consent-revoked"
    assert main(["consent", "grant", "fleet", "--until", "30d", "--store", str(store)]) == 0
    verify(store, capsys)
    kinds = [e["event"] for e in events(export(store, "fleet"))]
    assert kinds == ["stream-started", "consent-revoked", "consent-granted"]


# -- identities, defaults, classes ----------------------------------------------------------------


def test_each_recipient_gets_its_own_stable_pseudonym(tmp_path, capsys):
    policy = f"""
        version = 1
        [[stream]]
        name = "fleet"
        recipient = "Fleet Ops"
        purpose = "maintenance"
        signals = ["Vehicle.Speed"]
        {consent()}
        [[stream]]
        name = "insurer"
        recipient = "Acme Insurance"
        purpose = "premium"
        signals = ["Vehicle.Speed"]
        {consent()}
        [[stream]]
        name = "vault"
        local = true
        signals = ["Vehicle.Speed"]
    """
    drive(tmp_path / "a", record(tmp_path / "1.log", "city", 20.0), policy)
    first = vids(tmp_path / "a" / "ledger")
    store = drive(tmp_path / "a", record(tmp_path / "2.log", "city", 20.0, start=START + 60), policy)
    verify(store, capsys)
    both = vids(store)
    assert both == first, "a recipient's identifier must not change between drives"
    (fleet,), (insurer,), (vault,) = both["fleet"], both["insurer"], both["vault"]
    assert fleet != insurer and VIN not in (fleet, insurer) and vault == VIN
    secret = load_or_create_secret(store)
    assert fleet == pseudonym(secret, VIN, "Fleet Ops") and insurer == pseudonym(secret, VIN, "Acme Insurance")


@pytest.mark.parametrize("policy", [None, "", "version = 1\n"])
def test_without_a_policy_nothing_but_health_is_recorded(tmp_path, capsys, policy):
    store = drive(tmp_path, record(tmp_path / "c.log", "city", 10.0), policy)
    assert set(verify(store, capsys)["streams"]) <= {"health", "audit"}


def test_location_and_personal_signals_need_an_explicit_allow(tmp_path, capsys):
    store = drive(tmp_path, record(tmp_path / "c.log", "city", 20.0), f"""
        version = 1
        [[stream]]
        name = "everything"
        recipient = "Data Broker"
        purpose = "whatever the patterns match"
        signals = ["Vehicle.*"]
        {consent()}
    """)
    names = {r["name"] for r in samples(export(store, "everything"))}
    assert "Vehicle.Speed" in names
    assert not {n for n in names if default_class(n) in (LOCATION, PERSONAL)}


# -- retention and wipe ---------------------------------------------------------------------------


def test_retention_deletes_as_a_declared_event_and_the_chain_still_verifies(tmp_path, capsys):
    store = drive(tmp_path, record(tmp_path / "c.log", "city", 120.0), """
        version = 1
        [[stream]]
        name = "vault"
        local = true
        signals = ["Vehicle.Speed"]
        retention = "1m"
    """)
    result = submit(store, {"action": "retention", "at": START + 150})
    assert result["changed"] and result["streams"]["vault"]["blocks"] > 10
    report = verify(store, capsys)
    assert report["streams"]["vault"]["blocks"] > result["streams"]["vault"]["blocks"]
    kept = samples(export(store, "vault"))
    assert kept and min(r["t"] for r in kept) >= START + 90 - 1
    capsys.readouterr()
    assert main(["audit", str(store), "--json"]) == 0
    decisions = json.loads(capsys.readouterr().out)["decisions"]
    assert [d["kind"] for d in decisions][-1] == "retention"


def test_wipe_deletes_everything_and_hands_over_to_a_new_key(tmp_path, capsys):
    policy = "version = 1\n" + FLEET.format(consent=consent())
    store = drive(tmp_path, record(tmp_path / "c.log", "city", 20.0), policy)
    old_pub = (store / "keys" / "vehicle.pub").read_text().strip()
    old_fleet = vids(store)["fleet"]
    assert main(["wipe", "--store", str(store)]) == 1  # no terminal, no --yes: nothing happens
    assert (store / "owner" / "policy.toml").exists()
    assert main(["wipe", "--store", str(store), "--yes"]) == 0
    report = verify(store, capsys)
    assert set(report["streams"]) == {"audit"}
    (wiped,) = events(export(store, "audit"))
    assert wiped["event"] == "wipe" and check_statement(wiped["detail"])
    statement = wiped["detail"]["statement"]
    assert statement["previous_key"] == old_pub != statement["new_key"]
    assert statement["heads"]["fleet"][0] >= 0 and statement["blocks_deleted"] > 0
    assert not (store / "owner" / "policy.toml").exists()
    # The new owner's recipients get identifiers unrelated to the old ones.
    drive(tmp_path, record(tmp_path / "d.log", "city", 20.0, start=START + 60), policy)
    assert vids(store)["fleet"] != old_fleet


def test_a_disk_quota_evicts_the_oldest_records_as_declared_events(tmp_path, capsys):
    from carledger.ledger import Ledger
    from carledger.owner import OwnerActions, OwnerState

    store = drive(tmp_path, record(tmp_path / "c.log", "city", 120.0), """
        version = 1
        [[stream]]
        name = "vault"
        local = true
        signals = ["Vehicle.*"]
    """)
    with Ledger.open(store) as ledger:
        before = ledger.store.stored_bytes()
        outcome = OwnerActions(ledger, OwnerState.load(store)).evict(before // 2)
        assert outcome.changed and ledger.store.stored_bytes() <= before // 2
    report = verify(store, capsys)  # every dropped block is declared
    assert report["streams"]["audit"]["records"] >= 2  # the policy and the eviction, never evicted themselves
    kept = samples(export(store, "vault"))
    assert kept and min(r["t"] for r in kept) > START + 30  # the oldest went first
