"""Only what the policy in force sends leaves the car, on every path (issue 12, items 1, 12 and 18's `sync --json`)."""

from __future__ import annotations

import json
import os
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from broker import (
    Drive,
    all_acked,
    broker,  # noqa: F401 - fixture
    chains,
    enroll,
    free_port,
    grant,
    mqtt_for,
    start_collector,
)
from carledger.cli import main
from carledger.ledger import SigningKey, Store
from carledger.owner.state import iso
from carledger.sync import OutboundStream, Syncer, enroll_owner, sign_policy, topics
from conftest import wait_until


class Spy:
    """Everything published under carledger/v1/ while it listens; `settle()` waits until the broker passed on all
    that was published before it (a marker of its own, through the same broker, comes after)."""

    def __init__(self, broker):
        self.topics: list[str] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"spy-{time.time_ns()}")
        self.client.on_message = lambda _c, _u, m: self.topics.append(m.topic)
        self.client.connect(broker.host, broker.port)
        self.client.subscribe("carledger/v1/#", qos=1)
        self.client.loop_start()
        wait_until(lambda: self.client.is_connected(), timeout=10)

    def blocks(self) -> list[str]:
        return [t for t in self.topics if t.endswith("/block")]

    def settle(self) -> None:
        marker = f"carledger/v1/spy/{time.time_ns()}"
        self.client.publish(marker, b"", qos=1)
        wait_until(lambda: marker in self.topics, timeout=10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def car_with_local_streams(tmp_path) -> tuple:
    """speed and gps for recipients, `mine` local, and the car's own `audit` and `health`: 5 blocks each."""
    store = tmp_path / "car"
    grant(store, local=("mine",))
    drive = Drive(store, streams=("speed", "gps", "mine", "audit", "health"))
    for _ in range(5):
        drive.tick()
    drive.close()
    enroll(tmp_path / "collected", "car-1", store)
    return store


def sync_cli(store, broker, *args: str) -> int:
    return main(["sync", str(store), "--vehicle", "car-1", "--host", broker.host, "--port", str(broker.port), *args])


def test_carledger_sync_refuses_a_stream_the_policy_keeps_and_nothing_leaves(broker, tmp_path, capsys):
    store = car_with_local_streams(tmp_path)
    collector = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-1"))
    spy = Spy(broker)
    try:
        capsys.readouterr()
        expected = {
            "mine": "stream 'mine' does not leave the car: the policy marks it local = true: it never leaves the car",
            "audit": "stream 'audit' does not leave the car: it is the car's own record: it never leaves the car",
            "health": "stream 'health' does not leave the car: it is the car's own record: it never leaves the car",
        }
        for name, why in expected.items():
            assert sync_cli(store, broker, "--stream", name, "--drain", "5") == 2
            assert capsys.readouterr().err == f"carledger sync: {why}\n"
        # one refused stream among allowed ones refuses the whole command: nothing is sent
        assert sync_cli(store, broker, "--stream", "speed", "--stream", "mine", "--drain", "5") == 2
        assert "'mine' does not leave the car" in capsys.readouterr().err
        # a recipient other than the policy's
        assert sync_cli(store, broker, "--stream", "speed=someone-else", "--drain", "5") == 2
        assert capsys.readouterr().err == ("carledger sync: stream 'speed': the policy sends it to 'insurer', "
                                           "not to 'someone-else'\n")
        spy.settle()
        assert spy.blocks() == [] and collector.collector.stats.received == 0
        # without --stream: what the policy sends, and nothing else
        assert sync_cli(store, broker, "--drain", "60") == 0
    finally:
        spy.close()
        collector.stop()
    assert set(chains(tmp_path / "collected" / "vehicles" / "car-1")) == {"speed", "gps"}
    assert {t.split("/")[3] for t in spy.blocks()} == {"speed", "gps"}


def test_the_syncer_itself_refuses_whoever_asks(broker, tmp_path):
    """The agent's daemon, a library caller or anything added later: the Syncer checks the policy in the store."""
    store = car_with_local_streams(tmp_path)
    collector = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-1"))
    asked = {name: OutboundStream("insurer") for name in ("speed", "mine", "audit", "health")}
    sync = Syncer(store, "car-1", mqtt_for(broker), lambda: asked)
    sync.start()
    try:
        wait_until(lambda: unacked(store, "speed") == 0, timeout=30)
    finally:
        sync.stop()
    assert sync.stats.refused == {
        "mine": "the policy marks it local = true: it never leaves the car",
        "audit": "it is the car's own record: it never leaves the car",
        "health": "it is the car's own record: it never leaves the car",
    }
    # the default (the daemon's way): every stream the policy sends
    sync = Syncer(store, "car-1", mqtt_for(broker))
    sync.start()
    try:
        wait_until(lambda: all_acked_outbound(store), timeout=30)
    finally:
        sync.stop()
        collector.stop()
    assert sync.stats.refused == {}
    assert set(chains(tmp_path / "collected" / "vehicles" / "car-1")) == {"speed", "gps"}
    with Store.open_readonly(store) as s:
        assert not any(r.synced for name in ("mine", "audit", "health") for r in s.iter_blocks(name))


def unacked(store, stream: str) -> int:
    with Store.open_readonly(store) as s:
        return s.backlog().get(stream, (0, 0))[0]


def all_acked_outbound(store) -> bool:
    with Store.open_readonly(store) as s:
        return not set(s.backlog()) & {"speed", "gps"}


def test_a_remote_policy_that_drops_a_stream_stops_it_leaving(broker, tmp_path):
    """A request from outside (an owner-signed policy over MQTT) changes what leaves at once, through the same gate."""
    store = tmp_path / "car"
    drive = Drive(store)
    for _ in range(5):
        drive.tick()
    drive.close()
    enroll(tmp_path / "collected", "car-1", store)
    owner = SigningKey.generate()
    enroll_owner(store, owner.verify_key)
    collector = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-1"))
    sync = Syncer(store, "car-1", mqtt_for(broker))
    sync.start()
    try:
        wait_until(lambda: all_acked(store), timeout=30)
        now = time.time()
        policy = (f'version = 2\n[[stream]]\nname = "gps"\nrecipient = "fleet"\npurpose = "test"\n'
                  f'identity = "vin"\nallow = ["personal"]\nsignals = ["Vehicle.*"]\nconsent = {{ granted = {iso(now - 86400)}, expires = {iso(now + 86400)} }}\n')
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="owner")
        client.connect(broker.host, broker.port)
        client.loop_start()
        client.publish(topics.policy("car-1"), sign_policy(policy.encode(), owner), qos=1).wait_for_publish(10)
        client.loop_stop()
        client.disconnect()
        wait_until(lambda: (sync.status().get("policy") or {}).get("ok") is not None, timeout=30)
        assert sync.status()["policy"]["ok"], sync.status()["policy"]
        drive = Drive(store)
        drive.blocks = 5
        for _ in range(5):
            drive.tick()
        drive.close()
        wait_until(lambda: unacked(store, "gps") == 0, timeout=30)  # speed's new blocks are older: they would be out
    finally:
        sync.stop()
        collector.stop()
    copy, car = chains(tmp_path / "collected" / "vehicles" / "car-1"), chains(store)
    assert copy["gps"] == car["gps"] and len(car["gps"]) >= 10
    assert copy["speed"] == car["speed"][:5] and len(car["speed"]) >= 10  # those sealed after the update stayed
    assert "speed" not in sync.status()["backlog"]["streams"]  # no longer outbound
    with Store.open_readonly(store) as s:
        assert [r.seq for r in s.iter_blocks("speed") if r.synced] == [0, 1, 2, 3, 4]


# -- the command's own errors (issue 12 item 12) and --json ------------------------------------------


def test_an_unknown_stream_is_a_usage_error(broker, tmp_path, capsys):
    store = car_with_local_streams(tmp_path)
    capsys.readouterr()
    assert sync_cli(store, broker, "--stream", "spede", "--drain", "5") == 2
    assert capsys.readouterr().err == ("carledger sync: unknown stream 'spede': neither the store nor its policy has it "
                                       "(streams: audit, gps, health, mine, speed)\n")


def test_no_collector_key_enrolled_is_refused_before_anything_is_sent(broker, tmp_path, capsys):
    store = tmp_path / "car"
    Drive(store).close()
    capsys.readouterr()
    assert sync_cli(store, broker, "--stream", "speed", "--drain", "5") == 2
    assert capsys.readouterr().err == (
        f"carledger sync: stream 'speed': no collector key is enrolled for 'insurer', so no ack could be checked "
        f"(carledger sync {store} --enroll-collector 'insurer' KEYFILE)\n")


def test_drain_gives_up_on_a_broker_it_cannot_reach(tmp_path, capsys):
    store = car_with_local_streams(tmp_path)
    port = free_port()  # nothing listens there
    capsys.readouterr()
    code = main(["sync", str(store), "--vehicle", "car-1", "--host", "127.0.0.1", "--port", str(port),
                 "--drain", "2", "--json"])
    out, err = capsys.readouterr()
    assert code == 1
    summary = json.loads(out)
    assert summary["drained"] is False and summary["unacked"] == {"gps": 5, "speed": 5}
    assert summary["error"].startswith(f"not drained after 2 s: cannot reach the broker: 127.0.0.1:{port}: ")
    assert err.splitlines()[-1] == f"carledger sync: {summary['error']}"


def test_a_misspelled_host_is_one_line_and_exit_2_not_a_retry_loop(tmp_path, capfd):
    store = car_with_local_streams(tmp_path)
    capfd.readouterr()
    code = main(["sync", str(store), "--vehicle", "car-1", "--host", "brokr.invalid"])  # no --drain: it would run on
    err = capfd.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if "brokr.invalid" in line]
    assert lines[-1].startswith("carledger sync: cannot reach the broker: brokr.invalid:1883: unknown host")
    assert len(lines) <= 2  # the log's one warning, then the command's line


def test_sync_json_prints_one_object(broker, tmp_path, capsys):
    store = car_with_local_streams(tmp_path)
    collector = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="col-1"))
    try:
        capsys.readouterr()
        assert sync_cli(store, broker, "--drain", "60", "--json") == 0
    finally:
        collector.stop()
    out = capsys.readouterr().out
    summary = json.loads(out)
    assert out.count("\n") == 1
    assert summary["drained"] is True and summary["acked"] == 10 and summary["unacked"] == {}
    assert summary["published"] >= 10 and summary["error"] is None and summary["acks_ignored"] == {}
    assert set(summary) == {"published", "resent", "wire_bytes", "acked", "timeouts", "acks_ignored", "unacked",
                            "drained", "error"}


def test_enroll_collector_and_collect_key_from_the_command_line(tmp_path, capsys):
    store = tmp_path / "car"
    Drive(store).close()
    assert main(["collect", "key", str(tmp_path / "nothing")]) == 2
    assert "not a collector directory" in capsys.readouterr().err
    enroll(tmp_path / "collected", "car-1", store)  # makes the collector directory
    capsys.readouterr()
    assert main(["collect", "key", str(tmp_path / "collected")]) == 0
    public = capsys.readouterr().out.strip()
    assert len(public) == 64
    assert os.stat(tmp_path / "collected" / "keys" / "collector.key").st_mode & 0o077 == 0
    (tmp_path / "collector.pub").write_text(public + "\n")
    assert main(["sync", str(store), "--enroll-collector", "Fleet Ops", str(tmp_path / "collector.pub")]) == 0
    assert "'Fleet Ops'" in capsys.readouterr().out
    keys = json.loads((store / "keys" / "collectors.json").read_text())
    assert os.stat(store / "keys" / "collectors.json").st_mode & 0o077 == 0
    assert keys["Fleet Ops"] == public
    assert main(["sync", str(tmp_path / "notastore"), "--enroll-collector", "x", public]) == 2


def test_the_agents_sync_logs_an_unknown_host_once_then_retries_quietly(tmp_path, caplog):
    import logging

    from carledger.sync import MqttConfig

    store = car_with_local_streams(tmp_path)
    caplog.set_level(logging.DEBUG, logger="carledger")
    sync = Syncer(store, "car-1", MqttConfig(host="brokr.invalid", backoff_initial=0.01, backoff_max=0.02))
    sync.start()
    try:
        wait_until(lambda: sync.stats.connect_failures >= 5, timeout=30)
    finally:
        sync.stop()
    about = [r for r in caplog.records if "brokr.invalid" in r.getMessage()]
    assert [r.levelname for r in about if r.levelno > logging.DEBUG] == ["WARNING"]
    assert sync.stats.unknown_host and "unknown host" in sync.stats.connect_error


def test_an_unreadable_policy_in_force_sends_nothing_with_one_line(tmp_path, capsys):
    store = car_with_local_streams(tmp_path)
    (store / "owner" / "policy.toml").write_text("version = \n")
    capsys.readouterr()
    assert main(["sync", str(store), "--vehicle", "car-1", "--host", "127.0.0.1", "--drain", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("carledger sync: the policy in force cannot be read: ") and err.count("\n") == 1, err
