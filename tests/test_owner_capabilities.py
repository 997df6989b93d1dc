"""Issue 13, the owner's side: each capability shown as the owner uses it, asserted on the ledger and the audit.

- an expired consent is the owner's record in the `audit` stream (item 3);
- pause, with `--for`, seen in `carledger status` and on the MQTT status (item 7);
- every disclosure names the signals, the policy version and the consent id (item 8);
- policy updates: a lower version refused end to end, a local apply needs the owner's signature (item 12).
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
from pathlib import Path

import can
import pytest

from broker import broker, enroll, mqtt_for, replica, start_collector  # noqa: F401 - fixture
from carledger.cli import main
from carledger.config import load_config
from carledger.dbc import path as dbc_path
from carledger.ledger import Store
from carledger.owner.disclosure import consent_id
from carledger.owner.state import iso
from carledger.pipeline import Pipeline
from carledger_sim.car import SimulatedCar
from conftest import wait_until

VIN = "WVWZZZ1JZXW000013"
NOW = float(int(time.time()))
GRANTED, EXPIRES = iso(NOW - 86400), iso(NOW + 86400)
DEMO_DBC = dbc_path("carledger_demo.dbc")


def record(path: Path, duration: float, start: float, scenario: str = "city") -> Path:
    with can.Logger(str(path)) as logger:
        for msg in SimulatedCar(scenario, seed=7, duration=duration, start_time=start).frames():
            logger.on_message_received(msg)
    return path


def agent(folder: Path, policy: str, bus: str, mqtt: str = "") -> Path:
    """The agent's configuration as an installer writes it; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policy.toml").write_text(textwrap.dedent(policy))
    config = folder / "agent.toml"
    config.write_text(textwrap.dedent(f"""
        [agent]
        store = "ledger"
        vehicle = "{VIN}"
        policy = "policy.toml"
        [seal]
        max_age = 0.5
    """) + textwrap.dedent(mqtt) + textwrap.dedent(bus))
    return config


def replay(log: Path) -> str:
    return f"""
        [[bus]]
        name = "car"
        replay = "{log}"
        speed = 0
        dbc = ["{DEMO_DBC}"]
    """


def live_sim_bus() -> str:
    """A simulated car driving the city at real speed, from now: the agent's bus for tests of a running agent."""
    return f"""
        [[bus]]
        name = "car"
        interface = "carledger-sim"
        channel = "city"
        options = {{ seed = 13, speed = 1, start_time = {time.time()} }}
        dbc = ["{DEMO_DBC}"]
    """


def audit(store: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["audit", str(store), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def audit_text(store: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["audit", str(store)]) == 0
    return capsys.readouterr().out


def exported(store: Path, stream: str, capsys) -> list[dict]:
    capsys.readouterr()
    assert main(["log", "export", str(store), "--stream", stream, "--events"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def verified(store: Path, capsys) -> dict:
    capsys.readouterr()
    code = main(["verify", str(store), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report["problems"]
    return report


# -- item 3: an expired consent is in the owner's audit -----------------------------------------


def insurer_policy(expires: str, version: int = 1) -> str:
    return f"""
        version = {version}
        [[stream]]
        name = "insurer"
        recipient = "Acme Insurance"
        purpose = "pay as you drive"
        signals = ["Vehicle.Speed"]
        consent = {{ granted = {GRANTED}, expires = {expires} }}
    """


def test_an_expired_consent_is_an_audit_entry_naming_where_the_stream_stopped(tmp_path, capsys):
    start = NOW + 3600
    expiry = start + 40
    log = record(tmp_path / "drive.log", 90.0, start)
    config = agent(tmp_path, insurer_policy(iso(expiry)), replay(log))
    assert main(["-q", "run", "-c", str(config)]) == 0
    store = tmp_path / "ledger"
    report = verified(store, capsys)
    last_seq = report["streams"]["insurer"]["last_seq"]
    chain = exported(store, "insurer", capsys)
    assert chain[-1]["event"] == "consent-expired"  # the recipient's own chain says it ...
    assert max(r["t"] for r in chain if "name" in r) < expiry
    # ... and the owner's audit stream has it too, as a signed event, naming the end of that chain.
    (entry,) = [d for d in audit(store, capsys)["decisions"] if d["kind"] == "consent-expired"]
    assert entry["by"] == "car" and entry["t"] == pytest.approx(expiry, abs=1e-3)
    assert entry["detail"]["stream"] == "insurer" and entry["detail"]["recipient"] == "Acme Insurance"
    assert entry["detail"]["expired"] == iso(expiry) and entry["detail"]["last_seq"] == last_seq
    assert entry["detail"]["consent_id"] == consent_id("insurer", "Acme Insurance", "pay as you drive", GRANTED, iso(expiry))
    assert (f"Acme Insurance: consent to stream insurer (pay as you drive) expired {iso(expiry)}, "
            f"stream stopped at seq {last_seq}") in audit_text(store, capsys)


def test_a_consent_that_expired_while_the_agent_was_stopped_is_in_the_audit_once(tmp_path, capsys):
    start = NOW + 3600
    expiry = start + 90
    config = agent(tmp_path, insurer_policy(iso(expiry)), replay(record(tmp_path / "one.log", 60.0, start)))
    assert main(["-q", "run", "-c", str(config)]) == 0
    config.write_text(config.read_text().replace("one.log", "two.log"))
    record(tmp_path / "two.log", 60.0, start + 120)
    assert main(["-q", "run", "-c", str(config)]) == 0
    assert main(["-q", "run", "-c", str(config)]) == 0  # a third start declares nothing again
    store = tmp_path / "ledger"
    report = verified(store, capsys)
    expired = [d for d in audit(store, capsys)["decisions"] if d["kind"] == "consent-expired"]
    assert len(expired) == 1 and expired[0]["t"] == pytest.approx(expiry, abs=1e-3)
    assert expired[0]["detail"]["last_seq"] == report["streams"]["insurer"]["last_seq"]


# -- item 8: each disclosure names what was disclosed -----------------------------------------


def test_each_disclosure_names_the_signals_the_policy_version_and_the_consent(broker, tmp_path, capsys):
    """Through a real broker and collector: the audit alone says what the insurer got, policy file deleted."""
    log = record(tmp_path / "drive.log", 20.0, NOW - 120)
    policy = f"""
        version = 3
        [[stream]]
        name = "insurer"
        recipient = "Acme Insurance"
        purpose = "pay as you drive"
        signals = ["Vehicle.Speed", "Vehicle.Powertrain.CombustionEngine.*"]
        consent = {{ granted = {GRANTED}, expires = {EXPIRES} }}
        [[stream]]
        name = "vault"
        local = true
        signals = ["Vehicle.*"]
    """
    mqtt = f"""
        [mqtt]
        host = "127.0.0.1"
        port = {broker.port}
    """
    config = agent(tmp_path, policy, replay(log), mqtt)
    store = tmp_path / "ledger"
    drive = Pipeline(load_config(config))  # what `carledger run -c agent.toml` runs; the store exists now
    enroll(tmp_path / "collected", VIN, store)
    collector = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-13"))
    try:
        drive.run()  # the drive; then parked, live: what is left drains
        config.write_text(config.read_text().replace(f'replay = "{log}"\nspeed = 0',
                                                     f'interface = "virtual"\nchannel = "parked-{time.time_ns()}"'))
        pipeline = Pipeline(load_config(config))
        runner = threading.Thread(target=pipeline.run, daemon=True)
        runner.start()

        def acked() -> bool:
            with Store.open_readonly(store) as s:
                return "insurer" in s.streams() and not s.backlog().get("insurer")

        wait_until(acked, timeout=60)
        pipeline.stop()
        runner.join(20)
    finally:
        collector.stop()
    (tmp_path / "policy.toml").unlink()  # the answer must not need it
    copy_dir = replica(tmp_path / "collected", store, "insurer")  # under the insurer's pseudonym of the car
    with Store.open_readonly(copy_dir) as copy:
        assert set(copy.streams()) == {"insurer"}
    report = audit(store, capsys)
    disclosures = [d["detail"] for d in report["decisions"] if d["kind"] == "disclosure"]
    assert disclosures
    last = verified(store, capsys)["streams"]["insurer"]["last_seq"]
    acked_seqs = sorted(seq for d in disclosures for first, end in d["seqs"] for seq in range(first, end + 1))
    assert acked_seqs == list(range(last + 1))  # every block named once
    cid = consent_id("insurer", "Acme Insurance", "pay as you drive", GRANTED, EXPIRES)
    engine = "Vehicle.Powertrain.CombustionEngine."
    for d in disclosures:
        assert d["recipient"] == "Acme Insurance" and d["purpose"] == "pay as you drive"
        assert d["policy"]["version"] == 3 and len(d["policy"]["digest"]) == 64
        assert d["consent"] == {"granted": GRANTED, "expires": EXPIRES} and d["consent_id"] == cid
        assert "Vehicle.Speed" in d["signals"] and all(s == "Vehicle.Speed" or s.startswith(engine) for s in d["signals"])
        assert len(d["signals"]) > 2  # the pattern resolved to the DBC's engine signals
    # Everything the collector holds is among the signals the disclosures named.
    capsys.readouterr()
    assert main(["read", str(copy_dir), "--stream", "insurer"]) == 0
    names = {json.loads(line).get("name") for line in capsys.readouterr().out.splitlines()} - {None}
    assert names and names <= set(disclosures[0]["signals"])
    (run,) = report["sent"]
    assert run["policy"]["version"] == 3 and run["consent_id"] == cid and run["signals"] == disclosures[0]["signals"]
    text = audit_text(store, capsys)
    assert f"policy v3, consent {cid[:12]}" in text
    got = text.split("What each recipient got", 1)[1].split("What happened", 1)[0]
    assert f"insurer  Acme Insurance  v3      {cid[:12]}" in got and "signals Vehicle.Powertrain" in got


# -- item 7: pause, as the owner sees it --------------------------------------------------------


def watch_status(broker, vehicle: str) -> tuple[object, list[dict]]:
    """A client collecting the vehicle's status messages from the real broker (the retained one first)."""
    import paho.mqtt.client as paho

    from carledger.sync import topics

    statuses: list[dict] = []
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"watch-{time.time_ns()}")
    client.on_message = lambda _c, _u, m: statuses.append(json.loads(m.payload))
    client.connect(broker.host, broker.port)
    client.subscribe(topics.status(vehicle), qos=1)
    client.loop_start()
    return client, statuses


def status(store: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["status", str(store), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def samples_in(store: Path) -> dict[str, list[float]]:
    """The sample times of every data stream in the ledger (the owner's and the agent's own streams left out)."""
    from carledger.ledger import Sample, decode_record, decode_records

    out: dict[str, list[float]] = {}
    with Store.open_readonly(store) as s:
        for name in s.streams():
            if name in ("health", "audit"):
                continue
            for row in s.iter_blocks(name):
                for data in decode_records(row.records or b""):
                    rec = decode_record(data)
                    if isinstance(rec, Sample):
                        out.setdefault(name, []).append(rec.t / 1e6)
    return out


def test_pause_for_a_while_records_nothing_then_resumes_by_itself_and_says_so(broker, tmp_path, capsys):
    policy = """
        version = 1
        [[stream]]
        name = "vault"
        local = true
        signals = ["Vehicle.Speed", "Vehicle.Powertrain.*"]
    """
    bus = live_sim_bus()
    mqtt = f"""
        [mqtt]
        host = "127.0.0.1"
        port = {broker.port}
        status_interval = 30
    """
    config = agent(tmp_path, policy, bus, mqtt)
    store = tmp_path / "ledger"
    watcher, statuses = watch_status(broker, VIN)
    pipeline = Pipeline(load_config(config))
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()

    def collection() -> dict | None:
        return next((s.get("collection") for s in reversed(statuses) if s.get("state") == "online"), None)

    try:
        wait_until(lambda: len(samples_in(store).get("vault", [])) > 20, timeout=30)
        assert status(store, capsys)["collection"]["state"] == "collecting"
        wait_until(lambda: (collection() or {}).get("state") == "collecting", timeout=20)
        capsys.readouterr()
        assert main(["pause", "--for", "3s", "--store", str(store)]) == 0
        assert "by the running agent" in capsys.readouterr().out
        paused = status(store, capsys)["collection"]
        assert paused["state"] == "paused" and paused["until"] is not None
        assert main(["status", str(store)]) == 0
        assert f"collection: paused until {paused['until']}" in capsys.readouterr().out
        wait_until(lambda: collection() == paused, timeout=10)  # the agent's MQTT status says it too
        # It ends by itself: the status, the MQTT status, and the ledger all show collection again.
        wait_until(lambda: status(store, capsys)["collection"]["state"] == "collecting", timeout=20)
        wait_until(lambda: (collection() or {}).get("state") == "collecting", timeout=20)
        until = datetime_seconds(paused["until"])
        wait_until(lambda: any(t > until + 1 for t in samples_in(store).get("vault", [])), timeout=20)
    finally:
        pipeline.stop()
        runner.join(30)
        watcher.loop_stop()
        watcher.disconnect()
    verified(store, capsys)
    chain = exported(store, "vault", capsys)
    (pause,) = [r for r in chain if r.get("event") == "pause"]
    (resume,) = [r for r in chain if r.get("event") == "resume"]
    assert pause["detail"]["until"] == paused["until"] and until <= resume["t"] < until + 1
    times = samples_in(store)["vault"]
    assert any(t < pause["t"] for t in times) and any(t >= resume["t"] for t in times)
    assert not [t for t in times if pause["t"] <= t < resume["t"]], "a sample recorded while paused"
    decisions = audit(store, capsys)["decisions"]
    assert [(d["kind"], d["detail"].get("until")) for d in decisions if d["kind"] == "pause"] == [("pause", paused["until"])]


def datetime_seconds(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- item 12: policy updates ----------------------------------------------------------------------


def vault_policy(version: int, signals: str = '"Vehicle.Speed"') -> str:
    return f'version = {version}\n[[stream]]\nname = "vault"\nlocal = true\nsignals = [{signals}]\n'


def sign(tmp_path: Path, version: int, key: str = "owner.key", signals: str = '"Vehicle.Speed"') -> Path:
    """A policy version signed with the owner's key by `carledger remote sign-policy` (no --store: not checked against the car)."""
    source = tmp_path / f"v{version}.toml"
    source.write_text(vault_policy(version, signals))
    signed = tmp_path / f"v{version}-{Path(key).stem}.cose"
    assert main(["remote", "sign-policy", str(source), "--key", str(tmp_path / key), "-o", str(signed), "--no-dbc"]) == 0
    return signed


def applied_versions(store: Path, capsys) -> list[tuple[int, str | None]]:
    return [(d["detail"]["version"], d["detail"].get("signed_by"))
            for d in audit(store, capsys)["decisions"] if d["kind"] == "policy-applied"]


def test_a_signed_update_with_a_lower_version_is_refused_end_to_end(broker, tmp_path, capsys):
    """Through the broker and a running agent: an old signed update sent again (a replay) changes nothing."""
    import hashlib

    from carledger.ledger import kid, load_signing_key
    from test_remote_policy import running_agent

    assert main(["keygen", "owner", "-o", str(tmp_path / "owner.key")]) == 0
    owner_kid = kid(load_signing_key(tmp_path / "owner.key").verify_key).hex()
    older, newer = sign(tmp_path, 2), sign(tmp_path, 3, signals='"Vehicle.Speed", "Vehicle.Chassis.*"')
    pipeline, runner = running_agent(tmp_path, broker, vehicle="car-13")
    store = tmp_path / "ledger"
    broker_args = ["--host", broker.host, "--port", str(broker.port), "--vehicle", "car-13", "--wait", "30",
                   "--vehicle-key", str(store / "keys" / "vehicle.pub")]
    try:
        assert main(["remote", "enroll-owner", str(tmp_path / "owner.pub"), "--store", str(store)]) == 0
        capsys.readouterr()
        assert main(["remote", "send-policy", str(newer), *broker_args]) == 0
        assert json.loads(capsys.readouterr().out)["version"] == 3
        assert main(["remote", "send-policy", str(older), *broker_args]) == 1
        outcome = json.loads(capsys.readouterr().out)
        assert outcome["ok"] is False and outcome["digest"] == hashlib.sha256(older.read_bytes()).hexdigest()
        assert "version 2 is not higher than the version in force (3)" in outcome["error"]
    finally:
        pipeline.stop()
        runner.join(30)
    assert (store / "owner" / "policy.toml").read_text() == vault_policy(3, '"Vehicle.Speed", "Vehicle.Chassis.*"')
    assert applied_versions(store, capsys) == [(1, None), (3, owner_kid)]  # v2 never applied
    (v3,) = [d for d in audit(store, capsys)["decisions"] if d["detail"].get("version") == 3]
    assert v3["detail"]["origin"] == "mqtt" and bytes.fromhex(v3["detail"]["update"]) == newer.read_bytes()
    verified(store, capsys)


def test_with_an_owner_key_enrolled_a_local_apply_needs_the_owners_signature(tmp_path, capsys):
    """Running agent or not, CLI or a request written straight into the spool: unsigned changes are refused."""
    from carledger.ledger import kid, load_signing_key
    from carledger.owner import OwnerError
    from carledger.owner.client import submit

    config = agent(tmp_path, vault_policy(1), replay(record(tmp_path / "drive.log", 5.0, NOW - 60)))
    assert main(["-q", "run", "-c", str(config)]) == 0
    store = tmp_path / "ledger"
    assert main(["keygen", "owner", "-o", str(tmp_path / "owner.key")]) == 0
    assert main(["keygen", "owner", "-o", str(tmp_path / "thief.key")]) == 0
    owner_kid = kid(load_signing_key(tmp_path / "owner.key").verify_key).hex()
    (tmp_path / "v2.toml").write_text(vault_policy(2))
    # Before an owner key is enrolled, a plain file is applied as always.
    assert main(["policy", "apply", str(tmp_path / "v2.toml"), "--store", str(store)]) == 0
    assert main(["remote", "enroll-owner", str(tmp_path / "owner.pub"), "--store", str(store)]) == 0
    (tmp_path / "v3.toml").write_text(vault_policy(3, '"Vehicle.*"'))
    capsys.readouterr()
    assert main(["policy", "apply", str(tmp_path / "v3.toml"), "--store", str(store)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "an owner key is enrolled" in err[0] and "--key owner.key" in err[0]
    assert main(["policy", "apply", str(tmp_path / "v3.toml"), "--store", str(store), "--key", str(tmp_path / "thief.key")]) == 1
    assert "signed by another key than the enrolled owner's" in capsys.readouterr().err
    with pytest.raises(OwnerError, match="needs the owner's signature"):  # what a shell could queue by hand
        submit(store, {"action": "apply-policy", "text": vault_policy(3, '"Vehicle.*"'), "origin": "mqtt"})
    assert main(["policy", "apply", str(tmp_path / "v3.toml"), "--store", str(store), "--key", str(tmp_path / "owner.key")]) == 0
    assert main(["policy", "apply", str(sign(tmp_path, 4)), "--store", str(store)]) == 0  # signed elsewhere
    # The agent's configuration naming a newer unsigned file: the agent starts, and keeps the signed policy.
    (tmp_path / "policy.toml").write_text(vault_policy(9, '"Vehicle.*"'))
    assert main(["-q", "run", "-c", str(config)]) == 0
    assert "version = 4" in (store / "owner" / "policy.toml").read_text()
    assert applied_versions(store, capsys) == [(1, None), (2, None), (3, owner_kid), (4, owner_kid)]
    text = audit_text(store, capsys)
    assert f"applied policy v3 ({tmp_path / 'v3.toml'}, from the command line, signed by the owner key {owner_kid[:16]})" in text
    verified(store, capsys)


@pytest.mark.parametrize("request_", [
    {"action": "pause", "until": 1e300},
    {"action": "pause", "until": float("nan")},
    {"action": "grant", "stream": "vault", "until": float("inf")},
])
def test_a_request_whose_time_no_date_can_show_is_refused_and_the_agent_records_on(tmp_path, capsys, request_):
    """A request's times come from the CLI, the console's forms or a file in the spool: 1e300 passed every
    comparison meant to refuse it and then raised OverflowError inside the running agent, which stopped it."""
    from carledger.owner import OwnerError
    from carledger.owner.client import submit

    policy = """
        version = 1
        [[stream]]
        name = "vault"
        local = true
        signals = ["Vehicle.Speed"]
    """
    bus = live_sim_bus()
    store = tmp_path / "ledger"
    pipeline = Pipeline(load_config(agent(tmp_path, policy, bus)))
    failed: list[BaseException] = []

    def run() -> None:
        try:
            pipeline.run()
        except BaseException as exc:  # what the agent would have died of
            failed.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    try:
        wait_until(lambda: len(samples_in(store).get("vault", [])) > 5, timeout=30)
        with pytest.raises(OwnerError, match="is not a time from 1970 to the year 9999"):
            submit(store, request_)
        before = len(samples_in(store)["vault"])
        wait_until(lambda: len(samples_in(store)["vault"]) > before + 5, timeout=30)
        assert runner.is_alive() and not failed
        assert status(store, capsys)["collection"]["state"] == "collecting"
    finally:
        pipeline.stop()
        runner.join(30)
    assert not failed
    verified(store, capsys)


# -- a live bus's clock that jumps ahead deletes nothing by age ----------------------------------


def test_a_live_clock_a_year_ahead_has_retention_delete_nothing(tmp_path, capsys):
    """Retention deletes by the data's clock, and a live bus's is the kernel's wall clock, which no signature
    covers. Set a year ahead, it had every block of a 1-day retention deleted at the next check, for good (the
    step back brings none back). Now deleting waits until the clock has kept pace for an hour, and says so."""
    policy = """
        version = 1
        [[stream]]
        name = "vault"
        local = true
        signals = ["ABS_SPEED.VehicleSpeed"]
        retention = "1d"
    """
    channel = f"jump-{time.time_ns()}"
    bus = f"""
        [[bus]]
        name = "car"
        interface = "virtual"
        channel = "{channel}"
        dbc = ["{DEMO_DBC}"]
    """
    store = tmp_path / "ledger"
    pipeline = Pipeline(load_config(agent(tmp_path, policy, bus)))
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    year = 365 * 86400.0
    try:
        wait_until(lambda: all(s.opened.is_set() for s in pipeline.sources), timeout=20)
        with can.Bus(interface="virtual", channel=channel, preserve_timestamps=True) as car:  # the times we give
            def send(t: float, i: int) -> None:
                car.send(can.Message(timestamp=t, arbitration_id=0x0B4, is_extended_id=False,
                                     data=i.to_bytes(2, "little") + bytes(6)))

            t0 = time.time()
            for i in range(200):
                send(t0 + i / 100, i)
            wait_until(lambda: len(samples_in(store).get("vault", [])) >= 150, timeout=30)  # sealed: 0.5 s of data
            for i in range(200, 400):  # the clock a year ahead
                send(t0 + year + i / 100, i)
            # sealed at the time ahead: its checks (retention's among them) ran at that time
            wait_until(lambda: any(t > t0 + year for t in samples_in(store)["vault"]), timeout=30)
    finally:
        pipeline.stop()
        runner.join(30)
    kept = samples_in(store)["vault"]
    assert sum(1 for t in kept if t < t0 + 10) == 200  # every record before the jump is there
    events = [row["event"] for row in exported(store, "audit", capsys) if "event" in row]
    assert "retention" not in events
    held = [row for row in exported(store, "health", capsys) if row.get("event") == "retention-held"]
    assert len(held) == 1 and held[0]["detail"]["jump_s"] > year - 60
    verified(store, capsys)
