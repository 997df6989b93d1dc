"""Issue 12 item 3: a change of owner end to end (docs/owner-state.md, "Change of owner").

`carledger wipe`, then the new owner's identity (`remote identity`), the
collector's re-enrolment with the handover the previous key signed, and sync
of the new owner's chain through a real mosquitto to a running collector.
"""

from __future__ import annotations

import json
import logging
import os
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import can
import pytest

from broker import assert_same_ledgers, broker, mqtt_for, start_collector  # noqa: F401 - fixture
from carledger.cli import main
from carledger.collect import collector_state
from carledger.config import load_config
from carledger.dbc import path as dbc_path
from carledger.ledger.keys import SigningKey
from carledger.pipeline import Pipeline
from carledger.sync import collector_key, sign_policy
from carledger.sync.policy_update import PolicyHandler
from carledger.verify import verify_store
from carledger_sim.car import SimulatedCar

VEHICLE = "WVWZZZ1JZXW000001"  # the VIN, configured by whoever installed the agent: it stays with the car


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def drive(folder: Path, seed: int) -> Path:
    """Replay a 20-s simulated drive through the agent (configured as the daemon is) under a policy with a recipient."""
    now = time.time()
    log = folder / f"drive-{seed}.log"
    with can.Logger(str(log)) as logger:
        for msg in SimulatedCar("city", seed=seed, duration=20.0, start_time=now - 60).frames():
            logger.on_message_received(msg)
    (folder / "policy.toml").write_text(textwrap.dedent(f"""
        version = 1
        [[stream]]
        name = "fleet"
        recipient = "Fleet Ops"
        purpose = "maintenance"
        identity = "vin"  # the collector knows the car by its VIN (a pseudonymous recipient sees a new car after a wipe)
        allow = ["personal"]
        signals = ["Vehicle.Speed"]
        consent = {{ granted = {iso(now - 86400)}, expires = {iso(now + 86400)} }}
        [[stream]]
        name = "vault"
        local = true
        signals = ["Vehicle.*"]
    """))
    (folder / "agent.toml").write_text(textwrap.dedent(f"""
        [agent]
        store = "ledger"
        vehicle = "{VEHICLE}"
        policy = "policy.toml"
        [[bus]]
        name = "car"
        replay = "{log}"
        speed = 0
        dbc = ["{dbc_path('carledger_demo.dbc')}"]
    """))
    Pipeline(load_config(folder / "agent.toml")).run()
    return folder / "ledger"


def sync(store: Path, broker) -> int:
    return main(["sync", str(store), "--vehicle", VEHICLE, "--stream", "fleet=Fleet Ops", "--host", broker.host,
                 "--port", str(broker.port), "--drain"])


def test_after_a_wipe_the_new_owner_enrols_with_the_handover_and_syncs(broker, tmp_path, capsys, caplog):
    collected = tmp_path / "collected"
    store = drive(tmp_path, seed=1)
    old_pub = (store / "keys" / "vehicle.pub").read_text().strip()
    assert main(["collect", "enroll", str(collected), VEHICLE, str(store / "keys" / "vehicle.pub")]) == 0
    collector = start_collector(collected, mqtt_for(broker, client_id="col-1"))
    try:
        # The previous owner: an owner key for remote updates, the collector keys it trusts, a synced stream.
        old_owner = SigningKey.generate()
        assert main(["remote", "enroll-owner", bytes(old_owner.verify_key).hex(), "--store", str(store)]) == 0
        collector_pub = tmp_path / "collector.pub"
        collector_pub.write_text(bytes(collector_key(collected).verify_key).hex() + "\n")  # carledger collect key
        assert main(["sync", str(store), "--enroll-collector", "Fleet Ops", str(collector_pub)]) == 0
        assert sync(store, broker) == 0
        old_blocks = verify_store(collected / "vehicles" / VEHICLE, key=old_pub).streams["fleet"].blocks
        assert old_blocks > 3

        assert main(["wipe", "--store", str(store), "--yes"]) == 0
        # Nothing of the previous owner's enrolments carries over: only the new vehicle key is in keys/.
        assert sorted(os.listdir(store / "keys")) == ["vehicle.key", "vehicle.pub"]
        refused = PolicyHandler(store, lambda doc: {"ok": True}).receive(sign_policy(b"version = 9\n", old_owner))
        assert refused["ok"] is False and "no owner key enrolled" in refused["error"]

        # What the new owner enrols: the same vehicle id, the new key, and the previous key's handover.
        capsys.readouterr()
        handover = tmp_path / "handover.json"
        assert main(["remote", "identity", "--store", str(store), "--json", "--handover", str(handover)]) == 0
        identity = json.loads(capsys.readouterr().out)
        new_pub = (store / "keys" / "vehicle.pub").read_text().strip()
        assert identity["vehicle"] == VEHICLE and identity["public_key"] == new_pub != old_pub
        assert identity["previous_key"] == old_pub

        # The collector never re-keys a vehicle on an unsigned request...
        assert main(["collect", "enroll", str(collected), VEHICLE, new_pub]) == 1
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and "--handover" in err[0] and "enrolled with another key" in err[0]
        forged = json.loads(handover.read_text())
        intruder = bytes(SigningKey.generate().verify_key).hex()  # a well-formed key the old owner never handed over to
        forged["statement"]["new_key"] = intruder
        (tmp_path / "forged.json").write_text(json.dumps(forged))
        assert main(["collect", "enroll", str(collected), VEHICLE, intruder, "--handover", str(tmp_path / "forged.json")]) == 1
        assert "does not verify" in capsys.readouterr().err
        # ...only on the handover its enrolled key signed, and it keeps the previous owner's chains apart.
        assert main(["collect", "enroll", str(collected), VEHICLE, new_pub, "--handover", str(handover)]) == 0
        retired = collected / "retired" / f"{VEHICLE}-{identity['previous_kid']}"
        report = verify_store(retired, key=old_pub)
        assert report.ok and report.streams["fleet"].blocks == old_blocks

        # The new owner's drive, under the configuration the car already had, syncs and is acked,
        # with no warning on either side (the running collector saw the re-key and opened a new chain).
        drive(tmp_path, seed=2)
        assert verify_store(store).streams["fleet"].blocks > 3
        # The previous owner's trust in collector keys went with the wipe: the new owner enrols its own.
        assert main(["sync", str(store), "--enroll-collector", "Fleet Ops", str(collector_pub)]) == 0
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert sync(store, broker) == 0
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    finally:
        collector.stop()
    assert_same_ledgers(store, collected, VEHICLE, {"fleet"})  # a new chain from seq 0, verified with the new key
    assert verify_store(retired, key=old_pub).streams["fleet"].blocks == old_blocks  # the old chain untouched
    state = collector_state(collected)
    assert state["problems"] == []  # no bad signature, no fork: nothing of the old chain is mixed in
    assert state["vehicles"][VEHICLE]["kid"] == identity["kid"]


def test_the_identity_and_the_handover_a_collector_checks(tmp_path, capsys):
    """Without a broker: what `wipe` and `remote identity` print, and every handover a collector refuses."""
    from carledger.collect import Registry
    from carledger.collect.rekey import rekey
    from carledger.ledger import Ledger

    store = tmp_path / "car"
    Ledger.open(store, vehicle_id=VEHICLE).close()
    old_pub = (store / "keys" / "vehicle.pub").read_text().strip()
    assert main(["remote", "identity", "--store", str(store), "--handover", str(tmp_path / "h.json")]) == 2
    assert capsys.readouterr().err == f"carledger remote: {store}: never wiped: there is no handover (a first enrolment needs none)\n"
    assert main(["remote", "identity", "--store", str(tmp_path / "typo")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"carledger remote identity: error: {tmp_path / 'typo'}: no such directory (not a carledger store)")

    assert main(["wipe", "--store", str(store), "--yes"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == (f"To sync, enrol the new key with your collectors: carledger remote identity --store {store} "
                       "(--handover FILE for a collector that knew the previous key).")
    new_pub = (store / "keys" / "vehicle.pub").read_text().strip()
    assert new_pub != old_pub  # the wipe made a new vehicle key
    assert main(["remote", "identity", "--store", str(store), "--handover", str(tmp_path / "h.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"vehicle     {VEHICLE}"
    assert lines[2] == f"enrol it:   carledger collect enroll COLLECTOR {VEHICLE} {new_pub}"
    assert lines[3].endswith(f"carledger collect enroll COLLECTOR {VEHICLE} {new_pub} --handover {tmp_path / 'h.json'}")
    handover = json.loads((tmp_path / "h.json").read_text())

    registry = Registry(tmp_path / "collected")
    try:
        with pytest.raises(ValueError, match="is not enrolled: enrol it without --handover"):
            rekey(registry, "not-enrolled", new_pub, handover)
        other_key, known_key = (bytes(SigningKey.generate().verify_key).hex() for _ in range(2))
        registry.enroll("other-car", other_key)
        with pytest.raises(ValueError, match="the handover is for vehicle"):
            rekey(registry, "other-car", new_pub, handover)
        registry.enroll(VEHICLE, known_key)  # this collector knew another key than the one that signed
        with pytest.raises(ValueError, match="signed by another key than the one enrolled"):
            rekey(registry, VEHICLE, new_pub, handover)
        assert bytes(registry.key(VEHICLE)).hex() == known_key
        assert (tmp_path / "collected" / "vehicles" / VEHICLE).is_dir() and not (tmp_path / "collected" / "retired").exists()
    finally:
        registry.close()
