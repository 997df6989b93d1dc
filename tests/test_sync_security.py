"""Through a real mosquitto: TLS and the ACL, hostile publishers, encrypted streams, owner-signed policy updates."""

from __future__ import annotations

import json
import os


from broker import (
    Drive,
    all_acked,
    assert_same_ledgers,
    broker,  # noqa: F401 - fixture
    chains,
    enroll,
    mqtt_for,
    start_collector,
    tls_broker,  # noqa: F401 - fixture
    tls_for,
)
from carledger.cli import main
from carledger.collect import collector_state
from carledger.ledger import Store, seal_block
from carledger.ledger.encrypt import PrivateKey, RecordSealer
from carledger.ledger.keys import FileSigner, SigningKey, load_signing_key
from carledger.sync import OutboundStream, Syncer, topics
from carledger.sync.wire import BlockPacker, unpack_block
from conftest import wait_until

OUT = {"speed": OutboundStream("insurer"), "gps": OutboundStream("fleet")}


class Client:
    """A bare MQTT 5 client (a second vehicle, an eavesdropper, an attacker) that records what it gets back."""

    def __init__(self, cfg, client_id: str):
        from carledger.sync.mqtt import connect, make_client

        self.messages: list[tuple[str, bytes]] = []
        self.pubacks: dict[int, str] = {}
        self.granted: list[str] = []
        self.client = make_client(cfg, client_id)
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, str(rc))
        self.client.on_subscribe = lambda _c, _u, _mid, rcs, _p: self.granted.extend(str(r) for r in rcs)
        connect(self.client, cfg)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> int:
        return self.client.publish(topic, payload, qos=1).mid

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_tls_client_certificates_and_the_acl_confine_each_vehicle(tls_broker, tmp_path):
    drive = Drive(tmp_path / "car-1")
    for _ in range(10):
        drive.tick()
    enroll(tmp_path / "collected", "car-1", tmp_path / "car-1")
    collector = start_collector(tmp_path / "collected", tls_for(tls_broker, "collector", client_id="col-1"))
    car2 = Client(tls_for(tls_broker, "car-2"), "car-2")
    car2.client.subscribe([(topics.ack("car-1", "+"), 1), (topics.status("car-1"), 1), (topics.block("car-1", "+"), 1),
                           (topics.policy("car-1"), 1)])
    wait_until(lambda: len(car2.granted) == 4)
    sync = Syncer(tmp_path / "car-1", "car-1", tls_for(tls_broker, "car-1"), lambda: OUT)
    sync.start()
    try:
        wait_until(lambda: all_acked(tmp_path / "car-1"), timeout=30)
        # car-2 replays car-1's real block and publishes its own block under car-1's prefix
        own = make_block("car-2")
        real = chains(tmp_path / "car-1")
        mids = [car2.publish(topics.block("car-1", "speed"), own), car2.publish(topics.ack("car-1", "speed"), b"{}"),
                car2.publish(topics.status("car-1"), b'{"state":"online"}'),
                car2.publish(topics.policy("car-1"), b"x")]
        wait_until(lambda: all(m in car2.pubacks for m in mids), timeout=10)
        drive.tick()  # one more real block, to be sure the collector is still reading
        wait_until(lambda: all_acked(tmp_path / "car-1"), timeout=30)
    finally:
        sync.stop()
        collector.stop()
        car2.close()
        drive.close()
    assert [car2.pubacks[m] for m in mids] == ["Not authorized"] * 4
    assert car2.messages == []  # it read none of car-1's acks, status, blocks or policies
    assert collector.collector.stats.rejected == 0  # nothing car-2 sent got through the broker
    assert len(chains(tmp_path / "collected" / "vehicles" / "car-1")["speed"]) == len(real["speed"]) + 1
    assert_same_ledgers(tmp_path / "car-1", tmp_path / "collected", "car-1")


def make_block(vid: str, seq: int = 0) -> bytes:
    key = SigningKey.generate()
    return seal_block(vid=vid, stream="speed", seq=seq, prev=bytes(32), t0=1, t1=2, policy=bytes(32),
                      records=[], signing_key=key).message()


def test_hostile_publishers_are_rejected_and_reported_while_the_collector_keeps_running(broker, tmp_path):
    drive = Drive(tmp_path / "car")
    enroll(tmp_path / "collected", "car-1", tmp_path / "car")
    collector = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-1"))
    sync = Syncer(tmp_path / "car", "car-1", mqtt_for(broker), lambda: OUT)
    attacker = Client(mqtt_for(broker), "attacker")
    other = Drive(tmp_path / "car-2", vehicle="car-2")
    other.tick()
    enroll(tmp_path / "collected", "car-2", tmp_path / "car-2")
    try:
        drive.start(0.02)
        sync.start()
        wait_until(lambda: sync.stats.acked_blocks >= 20, timeout=30)
        real = tmp_path / "car"
        with Store.open_readonly(real) as s:
            row = next(s.iter_blocks("speed"))
            message = s.message(row)
        with Store.open_readonly(tmp_path / "car-2") as s:
            replayed = s.message(next(s.iter_blocks("speed")))
        pack = BlockPacker(9).pack
        hostile = {
            "forged": pack(make_block("car-1", seq=5)),
            "replay-other-vehicle": pack(replayed),
            "truncated": message[: len(message) // 3],
            "random": os.urandom(500),
            "empty": b"",
            "zstd-junk": b"\x28\xb5\x2f\xfd" + os.urandom(64),
        }
        for payload in hostile.values():
            attacker.publish(topics.block("car-1", "speed"), payload)
        attacker.publish(topics.block("car-9", "speed"), pack(message))  # a vehicle nobody enrolled
        attacker.publish(topics.block("car-1", "speed"), pack(message))  # replay of an acked block: a duplicate
        wait_until(lambda: collector.collector.stats.rejected >= len(hostile) + 1, timeout=20)
        acked = sync.stats.acked_blocks
        wait_until(lambda: sync.stats.acked_blocks > acked + 10, timeout=30)  # still collecting
        drive.stop()
        wait_until(lambda: all_acked(real), timeout=30)
    finally:
        sync.stop()
        collector.stop()
        attacker.close()
        drive.close()
        other.close()
    state = collector_state(tmp_path / "collected")
    found = {p["kind"] for p in state["problems"]}
    assert {"bad-signature", "replay", "malformed", "unknown-vehicle"} <= found, state["problems"]
    assert state["vehicles"]["car-1"]["streams"]["speed"]["duplicates"] >= 1
    assert_same_ledgers(tmp_path / "car", tmp_path / "collected", "car-1")


def test_an_encrypted_stream_is_unreadable_on_the_broker_and_to_the_collector(broker, tmp_path, capsys):
    recipient = PrivateKey.generate()
    (tmp_path / "insurer.key").write_text(bytes(recipient).hex())
    (tmp_path / "insurer.key").chmod(0o600)
    drive = Drive(tmp_path / "car")
    drive.ledger.writer("speed").sealer = RecordSealer([recipient.public_key])
    for _ in range(8):
        drive.tick()
    drive.close()
    eavesdropper = Client(mqtt_for(broker), "eavesdropper")
    eavesdropper.client.subscribe("carledger/v1/#", qos=1)
    enroll(tmp_path / "collected", "car-1", tmp_path / "car")
    collector = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-1"))
    sync = Syncer(tmp_path / "car", "car-1", mqtt_for(broker), lambda: OUT)
    sync.start()
    try:
        wait_until(lambda: all_acked(tmp_path / "car"), timeout=30)
    finally:
        sync.stop()
        collector.stop()
        eavesdropper.close()
    seen = [unpack_block(p) for t, p in eavesdropper.messages if t == topics.block("car-1", "speed")]
    assert len(seen) >= 8
    assert not any(b"Vehicle.speed" in m or b"ECU.SIG" in m for m in seen)  # the broker saw ciphertext only
    assert any(b"Vehicle.gps" in unpack_block(p) for t, p in eavesdropper.messages if t.endswith("/gps/block"))
    assert_same_ledgers(tmp_path / "car", tmp_path / "collected", "car-1")  # verified without the key
    copy = tmp_path / "collected" / "vehicles" / "car-1"
    capsys.readouterr()
    assert main(["read", str(copy), "--stream", "speed"]) == 1  # the collector cannot read it
    assert main(["read", str(copy), "--stream", "speed", "--key", str(tmp_path / "insurer.key")]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) == 8 * 20 and rows[0]["name"] == "Vehicle.speed" and rows[0]["value"] == 0.0


def test_owner_signed_policy_updates_arrive_and_the_outcome_is_on_the_status(broker, tmp_path, capsys):
    owner, other = SigningKey.generate(), SigningKey.generate()
    drive = Drive(tmp_path / "car")
    drive.tick()
    drive.close()
    (tmp_path / "owner.key").write_text(bytes(owner).hex())
    os.chmod(tmp_path / "owner.key", 0o600)
    (tmp_path / "other.key").write_text(bytes(other).hex())
    os.chmod(tmp_path / "other.key", 0o600)
    assert main(["remote", "enroll-owner", bytes(owner.verify_key).hex(), "--store", str(tmp_path / "car")]) == 0
    policy = tmp_path / "policy.toml"
    policy.write_bytes(b'version = 7\n# the owner\'s new rules\n')
    received: list[bytes] = []

    def apply(document: bytes) -> dict:
        received.append(document)
        return {"ok": True, "version": 7}

    vehicle = FileSigner(load_signing_key(tmp_path / "car" / "keys" / "vehicle.key"))
    sync = Syncer(tmp_path / "car", "car-1", mqtt_for(broker), lambda: OUT, on_policy=apply, signer=vehicle)
    sync.start()
    try:
        wait_until(lambda: sync.stats.connected, timeout=10)
        broker_args = ["--host", broker.host, "--port", str(broker.port),
                       "--vehicle-key", str(tmp_path / "car" / "keys" / "vehicle.pub")]
        for key, name in (("owner.key", "good"), ("other.key", "forged")):
            assert main(["remote", "sign-policy", str(policy), "--key", str(tmp_path / key), "-o", str(tmp_path / name)]) == 0
        capsys.readouterr()
        assert main(["remote", "send-policy", str(tmp_path / "good"), "--vehicle", "car-1", "--wait", "20", *broker_args]) == 0
        outcome = json.loads(capsys.readouterr().out)
        assert outcome["ok"] and outcome["version"] == 7
        assert received == [policy.read_bytes()]
        assert main(["remote", "send-policy", str(tmp_path / "forged"), "--vehicle", "car-1", "--wait", "20", *broker_args]) == 1
        outcome = json.loads(capsys.readouterr().out)
        assert outcome["ok"] is False and "another key" in outcome["error"]
        assert received == [policy.read_bytes()]  # the forged one never reached the policy code
    finally:
        sync.stop()


def test_a_policy_outcome_counts_only_signed_by_the_vehicle_for_this_vehicle_and_update(broker, tmp_path, capsys):
    """Anyone the broker lets publish on the status topic can say "applied": `send-policy --wait` believes the car's key."""
    import hashlib

    from carledger.sync.policy_update import sign_outcome

    update = tmp_path / "update.cose"
    update.write_bytes(b"\xd2\x84@\xa0@@")  # no car receives it here: the answers below are all on the status topic
    digest = hashlib.sha256(update.read_bytes()).hexdigest()
    car, stranger = FileSigner(SigningKey.generate()), FileSigner(SigningKey.generate())
    claim = {"t": 1.0, "digest": digest, "ok": True, "version": 9}
    args = ["remote", "send-policy", str(update), "--vehicle", "car-1", "--wait", "1", "--vehicle-key", car.public_key.hex(),
            "--host", broker.host, "--port", str(broker.port)]

    def answer(policy: dict) -> tuple[int, str, str]:
        forger = Client(mqtt_for(broker), "forger")
        try:
            forger.client.publish(topics.status("car-1"), json.dumps({"policy": policy}), qos=1, retain=True).wait_for_publish(10)
        finally:
            forger.close()
        capsys.readouterr()
        code = main(args)
        out, err = capsys.readouterr()
        return code, out, err

    forged = [
        (claim, "no signed outcome"),
        ({**claim, "signed": sign_outcome("car-1", claim, stranger)}, "not signed by the vehicle key"),
        ({**claim, "signed": sign_outcome("car-2", claim, car)}, "signed for another vehicle or another update"),
        ({**claim, "signed": sign_outcome("car-1", {**claim, "digest": "00" * 32}, car)}, "signed for another vehicle or another update"),
        ({**claim, "signed": "not base64!"}, "not a signed outcome"),
    ]
    for policy, why in forged:
        code, out, err = answer(policy)
        assert code == 1 and out == "" and f"ignored an outcome: {why}" in err, (why, err)
        assert "Traceback" not in err
    code, out, err = answer({**claim, "signed": sign_outcome("car-1", claim, car)})
    assert code == 0 and json.loads(out) == claim, err
    # without the vehicle's key there is nothing to believe: refused before anything is sent
    assert main(args[:7] + args[9:]) == 2
    assert "--wait needs --vehicle-key" in capsys.readouterr().err


def test_the_documented_broker_configuration_runs_as_written(tmp_path):
    """deploy/mosquitto/carledger.conf with only its paths and port replaced: TLS, client certificates, the ACL."""
    from broker import ACL, Broker, TestCA, require_mosquitto

    require_mosquitto()
    ca = TestCA(tmp_path / "ca")
    crt, key = ca.server
    broker = Broker(tmp_path / "broker")
    text = (ACL.parent / "carledger.conf").read_text()
    for old, new in (("listener 8883", f"listener {broker.port} 127.0.0.1"), ("/etc/mosquitto/ca/ca.crt", str(ca.cert)),
                     ("/etc/mosquitto/certs/broker.crt", str(crt)), ("/etc/mosquitto/certs/broker.key", str(key)),
                     ("/etc/mosquitto/carledger.acl", str(ACL)), ("/var/lib/mosquitto/", f"{broker.path}/")):
        assert old in text, old
        text = text.replace(old, new)
    own_user = next(line for line in broker.conf.read_text().splitlines() if line.startswith("user "))
    broker.conf.write_text(text + f"\n{own_user}\nlog_dest file {broker.log}\n")
    broker.ca = ca
    with broker:
        from broker import tls_for

        car = Client(tls_for(broker, "car-1"), "car-1")
        try:
            mids = [car.publish(topics.block("car-1", "speed"), b"x"), car.publish(topics.block("car-2", "speed"), b"x"),
                    car.publish(topics.status("car-1"), b"{}")]
            wait_until(lambda: all(m in car.pubacks for m in mids), timeout=10)
        finally:
            car.close()
        assert [car.pubacks[m] for m in mids] == ["No matching subscribers", "Not authorized", "No matching subscribers"]
