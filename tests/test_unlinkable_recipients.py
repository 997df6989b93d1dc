"""Issue 13 item 6: two recipients cannot link their data, and the owner can still prove it is one car.

Each recipient's stream is signed with a key of its own, derived from the
pseudonym secret and certified by a key statement the vehicle key signs
(carledger.ledger.identity, docs/owner-state.md "Identities"). The agent runs
a simulated drive under a policy with two recipients; each recipient has its
own broker and collector, which enrols what `carledger remote identity
--recipient` prints. Then: the two collectors' directories share no
identifier, the car still verifies everything, the owner's proof checks
(and one flipped byte is refused), and an edited store cannot smuggle in a
key the vehicle key never certified.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import can
import pytest

from broker import Broker, Drive, grant, mqtt_for, require_mosquitto, start_collector
from carledger.cli import main
from carledger.collect import REPLAY, Collector
from carledger.config import replay_config
from carledger.dbc import path as dbc_path
from carledger.ledger import Ledger, Store, StoreError, cbor, cose, kid, load_or_create_secret
from carledger.ledger.identity import derive_signing_key, make_statement
from carledger.ledger.keys import FileSigner, SigningKey
from carledger.pipeline import Pipeline
from carledger.sync import OutboundStream, Syncer, collector_key, enroll_collector, topics
from carledger.sync.wire import BlockPacker
from carledger_sim.car import SimulatedCar
from conftest import wait_until

VIN = "WVWZZZ1JZXW000001"
INSURER, FLEET = "Acme Insurance", "Fleet Ops"
STREAMS = {"ubi": INSURER, "fleet": FLEET}


def policy_text(now: float) -> str:
    from carledger.owner.state import iso

    lines = ["version = 1"]
    for name, recipient in STREAMS.items():
        lines += ["[[stream]]", f'name = "{name}"', f'recipient = "{recipient}"', 'purpose = "test"',
                  'signals = ["Vehicle.Speed", "Vehicle.Powertrain.*"]',
                  f"consent = {{ granted = {iso(now - 86400)}, expires = {iso(now + 86400)} }}"]
    return "\n".join(lines) + "\n"


def cli_json(args: list[str], capsys) -> dict:
    capsys.readouterr()
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def identifiers(doc: dict) -> set[bytes]:
    """Every form an identity of `remote identity --json` could take in a file: text, hex, raw bytes."""
    pub = bytes.fromhex(doc["public_key"])
    return {doc["vehicle"].encode(), doc["public_key"].encode(), doc["kid"].encode(), pub, kid(pub)}


def everything_under(folder: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()) + \
        b"\n".join(str(p.relative_to(folder)).encode() for p in folder.rglob("*"))


def test_two_recipients_collectors_share_no_identifier_and_the_car_verifies_it_all(tmp_path, capsys):
    require_mosquitto()
    now = time.time()
    log = tmp_path / "drive.log"
    with can.Logger(str(log)) as logger:
        for msg in SimulatedCar("city", seed=3, duration=6.0, start_time=now - 60).frames():
            logger.on_message_received(msg)
    (tmp_path / "policy.toml").write_text(policy_text(now))
    store = tmp_path / "ledger"
    pipeline = Pipeline(replay_config(str(log), [dbc_path("carledger_demo.dbc")], str(store),
                                      policy=str(tmp_path / "policy.toml"), vehicle=VIN))
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    wait_until(lambda: (store / "keys" / "pseudonym.key").exists(), timeout=20)
    # Each recipient runs its own broker and collector, and enrols what the owner gives it.
    brokers = {r: Broker(tmp_path / f"broker-{i}").start() for i, r in enumerate(STREAMS.values())}
    collected = {r: tmp_path / f"collected-{i}" for i, r in enumerate(STREAMS.values())}
    docs, services, syncers = {}, {}, []
    try:
        for name, recipient in STREAMS.items():
            doc = docs[recipient] = cli_json(["remote", "identity", "--store", str(store), "--recipient", recipient,
                                              "--json"], capsys)
            assert main(["collect", "enroll", str(collected[recipient]), doc["vehicle"], doc["public_key"]]) == 0
            enroll_collector(store, recipient, collector_key(collected[recipient]).verify_key)
            services[recipient] = start_collector(collected[recipient], mqtt_for(brokers[recipient], client_id="col"),
                                                  group=None)
            sync = Syncer(store, VIN, mqtt_for(brokers[recipient], client_id=f"car-{name}"),
                          lambda name=name, recipient=recipient: {name: OutboundStream(recipient)})
            sync.start()
            syncers.append(sync)
        runner.join(60)
        assert not runner.is_alive()

        def drained() -> bool:
            with Store.open_readonly(store) as s:
                return {"ubi", "fleet"} <= set(s.streams()) and not set(s.backlog()) & set(STREAMS)

        wait_until(drained, timeout=60)
    finally:
        for sync in syncers:
            sync.stop()
        for service in services.values():
            service.stop()
            service.collector.close()
        for b in brokers.values():
            b.stop()

    car_pub = (store / "keys" / "vehicle.pub").read_text().strip()
    car_ids = {VIN.encode(), car_pub.encode(), bytes.fromhex(car_pub), kid(bytes.fromhex(car_pub)),
               kid(bytes.fromhex(car_pub)).hex().encode()}
    a, b = (docs[INSURER], docs[FLEET])
    assert a["vehicle"] != b["vehicle"] and a["public_key"] != b["public_key"]
    for doc in docs.values():  # what a recipient enrols names nothing of the car
        assert not car_ids & identifiers({**doc, "vehicle": doc["vehicle"]}) and VIN not in json.dumps(doc)
    for mine, other in ((INSURER, FLEET), (FLEET, INSURER)):
        files = everything_under(collected[mine])
        own = bytes.fromhex(docs[mine]["public_key"])
        assert all(x in files for x in (docs[mine]["vehicle"].encode(), own, kid(own)))  # the scan does find ids
        leaked = [x for x in identifiers(docs[other]) | car_ids if x in files]
        assert not leaked, f"{mine}'s collector holds {leaked}"
        copy = collected[mine] / "vehicles" / docs[mine]["vehicle"]
        assert {p.name for p in (collected[mine] / "vehicles").iterdir()} == {docs[mine]["vehicle"]}
        with Store.open_readonly(copy) as s:
            assert s.streams() == [n for n, r in STREAMS.items() if r == mine] and s.block_count() > 3
        capsys.readouterr()
        assert main(["verify", str(copy), "--key", docs[mine]["public_key"]]) == 0
    # The car's own ledger verifies every stream: each recipient's under the key the vehicle key certified.
    capsys.readouterr()
    assert main(["verify", str(store), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and {"ubi", "fleet"} <= set(report["streams"])
    with Store.open_readonly(store) as s:
        ring = s.keyring()
        kids = {}
        for row in s.iter_blocks():
            kids.setdefault(row.stream, set()).add(cose.decode_sign1(row.sign1).protected[cose.HDR_KID].hex())
    assert kids["ubi"] == {a["kid"]} and kids["fleet"] == {b["kid"]}
    assert all(kids[n] == {kid(bytes.fromhex(car_pub)).hex()} for n in kids if n not in STREAMS)  # local: the vehicle key
    assert {c.pseudonym for c in ring.by_kid.values()} == {a["vehicle"], b["vehicle"]}


@pytest.fixture
def car(tmp_path) -> Path:
    """A store with two pseudonymous recipient streams and a few blocks each (no broker needed)."""
    store = tmp_path / "car"
    Ledger.open(store, VIN).close()
    grant(store, STREAMS, identity="pseudonym")
    drive = Drive(store, vehicle=VIN, streams=tuple(STREAMS), per_block=5)
    for _ in range(3):
        drive.tick()
    drive.close()
    return store


def test_the_owner_proves_the_keys_are_the_cars_and_one_flipped_byte_is_refused(car, tmp_path, capsys):
    proof = tmp_path / "proof.json"
    ids = {r: cli_json(["remote", "identity", "--store", str(car), "--recipient", r, "--json"], capsys)
           for r in (INSURER, FLEET)}
    capsys.readouterr()
    assert main(["remote", "identity", "--store", str(car), "--prove", INSURER, FLEET, "-o", str(proof)]) == 0
    pub = car / "keys" / "vehicle.pub"
    capsys.readouterr()
    assert main(["remote", "check-proof", str(proof), "--vehicle-key", str(pub)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"proof OK: vehicle {VIN}") and "\n" not in line
    assert ids[INSURER]["vehicle"] in line and ids[FLEET]["vehicle"] in line
    checked = cli_json(["remote", "check-proof", str(proof), "--json"], capsys)
    assert {(k["recipient"], k["pseudonym"], k["public_key"]) for k in checked["keys"]} == {
        (r, d["vehicle"], d["public_key"]) for r, d in ids.items()}
    assert checked["pinned"] is False and checked["vehicle_key"] == pub.read_text().strip()
    # Another car's key pinned: refused.
    other = tmp_path / "other.pub"
    other.write_text(bytes(SigningKey.generate().verify_key).hex())
    assert main(["remote", "check-proof", str(proof), "--vehicle-key", str(other)]) == 1
    assert "refused" in capsys.readouterr().err
    # One flipped byte anywhere in the file: refused, each time.
    original = proof.read_bytes()
    for i in range(len(original)):
        flipped = bytearray(original)
        flipped[i] ^= 0x01
        proof.write_bytes(bytes(flipped))
        capsys.readouterr()
        rc = main(["remote", "check-proof", str(proof), "--vehicle-key", str(pub)])
        err = capsys.readouterr().err
        assert rc in (1, 2) and err.count("\n") == 1 and "refused" in err, (i, rc, err)
    proof.write_bytes(original)
    # A recipient without a statement yet, and a missing -o: one line, exit 2.
    assert main(["remote", "identity", "--store", str(car), "--prove", "Nobody", "-o", str(tmp_path / "p2")]) == 2
    assert main(["remote", "identity", "--store", str(car), "--prove", INSURER]) == 2


def test_a_key_the_vehicle_key_never_certified_is_refused_even_when_the_store_is_edited(car, tmp_path, capsys):
    """The attacker has a shell and sqlite3: re-signs a recipient's block with a key of their own, and files a
    statement for it (signed by that key, and one with the key swapped into a genuine statement)."""
    with Store.open_readonly(car) as s:
        ring = s.keyring()
        row = [r for r in s.iter_blocks("ubi")][-1]
        stored = dict(sqlite3.connect(car / "ledger.sqlite").execute("SELECT pseudonym, statement FROM key_statements"))
    pseudonym = cbor.decode(cose.decode_sign1(row.sign1).payload)["vid"]
    genuine = ring.for_pseudonym(pseudonym)
    assert genuine is not None and set(stored) == {c.pseudonym for c in ring.by_kid.values()}
    mallory = SigningKey.generate()
    msg = cose.decode_sign1(row.sign1)
    resigned = cose.sign1(msg.payload, mallory, {cose.HDR_ALG: cose.ALG_EDDSA, cose.HDR_KID: kid(mallory.verify_key)})
    forged = make_statement(FileSigner(mallory), VIN, INSURER, pseudonym, bytes(mallory.verify_key))
    db = sqlite3.connect(car / "ledger.sqlite")
    with db:
        db.execute("UPDATE blocks SET sign1 = ? WHERE id = ?", (resigned, row.id))
        db.execute("INSERT INTO key_statements VALUES (?, ?)", ("ffff" + pseudonym[4:], forged))
    db.close()

    def verify() -> dict:
        capsys.readouterr()
        rc = main(["verify", str(car), "--json"])
        report = json.loads(capsys.readouterr().out)
        assert rc == 1 and not report["ok"]
        return report

    report = verify()
    kinds = {(p["stream"], p["seq"], p["kind"]) for p in report["problems"]}
    assert ("ubi", row.seq, "bad-signature") in kinds
    assert any(p["stream"] is None and "not signed by the vehicle key" in p["detail"] for p in report["problems"])
    with pytest.raises(StoreError, match="not a block the vehicle key signed"):
        Store.open(car).close()  # and the writer will not continue the chain from it

    # The genuine statement with Mallory's key put into it (the signature kept): it certifies nothing now.
    body = cbor.decode(cose.decode_sign1(genuine.statement).payload)
    body["public_key"] = bytes(mallory.verify_key)
    g = cose.decode_sign1(genuine.statement)
    swapped = cose.encode_sign1(g.protected_bytes, {}, cbor.encode(body), g.signature)
    db = sqlite3.connect(car / "ledger.sqlite")
    with db:
        db.execute("DELETE FROM key_statements WHERE pseudonym = ?", ("ffff" + pseudonym[4:],))
        db.execute("UPDATE key_statements SET statement = ? WHERE pseudonym = ?", (swapped, pseudonym))
    db.close()
    report = verify()
    bad = {p["seq"] for p in report["problems"] if p["stream"] == "ubi" and p["kind"] == "bad-signature"}
    assert bad == set(range(row.seq + 1))  # every block of the stream: its own key is no longer certified either

    # The other recipient's genuine key, used for this recipient's stream: it is certified for its pseudonym only.
    fleet_key = derive_signing_key(load_or_create_secret(car), VIN, FLEET)
    resigned = cose.sign1(msg.payload, fleet_key, {cose.HDR_ALG: cose.ALG_EDDSA, cose.HDR_KID: kid(fleet_key.verify_key)})
    db = sqlite3.connect(car / "ledger.sqlite")
    with db:
        db.execute("UPDATE key_statements SET statement = ? WHERE pseudonym = ?", (genuine.statement, pseudonym))
        db.execute("UPDATE blocks SET sign1 = ? WHERE id = ?", (resigned, row.id))
    db.close()
    report = verify()
    assert {(p["stream"], p["seq"], p["kind"]) for p in report["problems"]} == {("ubi", row.seq, "bad-signature")}


def test_the_collector_files_a_block_only_under_the_vehicle_id_it_is_signed_as(car, tmp_path):
    """A block the enrolled key signed for one id, published under another id that key is enrolled for, is a replay."""
    with Store.open_readonly(car) as s:
        vids = s.stream_vids()
        rows = list(s.iter_blocks("ubi"))
        messages = [s.message(r, include_records=True) for r in rows]
    collector = Collector(tmp_path / "collected")
    try:
        with Store.open_readonly(car) as s:
            ubi_key = s.keyring().for_pseudonym(vids["ubi"]).public_key
        collector.registry.enroll(vids["ubi"], ubi_key)
        collector.registry.enroll("decoy", ubi_key)  # the same key enrolled under another id
        packer = BlockPacker(0)
        for m in messages:
            collector.receive(topics.block("decoy", "ubi"), packer.pack(m))
        collector.flush()
        problems = list(collector.registry.problems())
        assert problems and all(p["kind"] == REPLAY and p["vehicle"] == "decoy" for p in problems)
        with Store.open_readonly(tmp_path / "collected" / "vehicles" / "decoy") as s:
            assert s.block_count() == 0
        for m in messages:
            collector.receive(topics.block(vids["ubi"], "ubi"), packer.pack(m))
        collector.flush()
        with Store.open_readonly(tmp_path / "collected" / "vehicles" / vids["ubi"]) as s:
            assert s.block_count() == len(messages)
    finally:
        collector.close()


def test_a_wipe_makes_new_pseudonyms_and_new_keys(car, capsys):
    from carledger.owner.wipe import wipe

    before = cli_json(["remote", "identity", "--store", str(car), "--recipient", INSURER, "--json"], capsys)
    wipe(car)
    Ledger.open(car, VIN).close()
    load_or_create_secret(car)
    after = cli_json(["remote", "identity", "--store", str(car), "--recipient", INSURER, "--json"], capsys)
    assert after["vehicle"] != before["vehicle"] and after["public_key"] != before["public_key"]
    with Store.open_readonly(car) as s:
        assert not s.keyring().by_kid  # the previous owner's statements went with the ledger
