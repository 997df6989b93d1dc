"""The car's checkpoints go to real `carledger witness run` processes on loopback; cosignatures are kept.

agent/sync/witnesses.py: old size + consistency proof, the witness's
cosignature verified with its configured key before it is kept, a 409
retried from the witness's size, and a copy of the store shown up by the
checkpoint the witness holds.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from broker import broker  # noqa: F401 - fixture

from carledger.ledger import Ledger, Store
from carledger.ledger.checkpoints import ForkedStore, log_verifier
from carledger.ledger.store import DB_FILE
from carledger.sync.witnesses import WitnessConfig, submit, witnesses_from_table
from carledger.transparency.checkpoint import open_checkpoint

VID = "VIN-WITNESSED"
STREAMS = ("ubi", "fleet")


def _carledger(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carledger", *args], capture_output=True, text=True, timeout=60)


def _drive(store_dir, blocks: int, start: float) -> None:
    with Ledger.open(store_dir, VID) as ledger:
        ledger.checkpoint_every = 4
        for i in range(blocks):
            for name in STREAMS:
                ledger.writer(name).add_sample(start + i, "Vehicle.Speed", float(i))
            ledger.seal()


@pytest.fixture
def two_witnesses(tmp_path):
    """(store dir, [WitnessConfig, WitnessConfig]): two witness processes that know the store's logs."""
    store_dir = tmp_path / "car"
    _drive(store_dir, 6, 0)
    logs = _carledger("witness", "logs", str(store_dir))
    assert logs.returncode == 0, logs.stderr
    (tmp_path / "logs.txt").write_text(logs.stdout)
    assert len(logs.stdout.splitlines()) == len(STREAMS)
    with witness_processes(tmp_path, tmp_path / "logs.txt") as configs:
        yield store_dir, configs


@contextlib.contextmanager
def witness_processes(tmp_path, logs_file) -> Iterator[list[WitnessConfig]]:
    """Two `carledger witness run` processes on loopback (w1, w2 under tmp_path) for the logs in `logs_file`."""
    procs, configs = [], []
    try:
        for name in ("w1", "w2"):
            made = _carledger("witness", "keygen", str(tmp_path / name), "--name", f"witness.example/{name}")
            assert made.returncode == 0, made.stderr
            proc = subprocess.Popen(
                [sys.executable, "-m", "carledger", "witness", "run", str(tmp_path / name),
                 "--logs", str(logs_file), "--listen", "127.0.0.1:0"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(proc)
            line = proc.stdout.readline()
            assert "listening on http://" in line, line
            url = line.split("listening on ")[1].split()[0].removesuffix("/add-checkpoint")
            configs.append(WitnessConfig(url, made.stdout.strip()))
        yield configs
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(timeout=30) == 0
            proc.stdout.close()
            proc.stderr.close()


def _cosignatures(store_dir) -> list[tuple[bytes, str, str]]:
    conn = sqlite3.connect(store_dir / DB_FILE)
    try:
        return [(bytes(n), w, line) for n, w, line in conn.execute(
            "SELECT c.note, s.witness, s.line FROM cosignatures s JOIN checkpoints c ON c.id = s.checkpoint")]
    finally:
        conn.close()


def test_checkpoints_are_cosigned_with_proofs_and_kept_verified(two_witnesses):
    store_dir, witnesses = two_witnesses
    args = [a for w in witnesses for a in ("--to", w.url, w.key)]
    done = _carledger("witness", "submit", str(store_dir), *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": cosigned") == 4
    _drive(store_dir, 7, 100)  # 13 blocks a stream: the witnesses need a consistency proof from 6
    with Store.open_marks(store_dir) as store:
        results = submit(store, witnesses)
    assert [(r.size, r.status, r.cosigned) for r in results] == [(13, 200, True)] * 4
    kept = _cosignatures(store_dir)
    assert len(kept) == 8
    with Store.open_readonly(store_dir) as store:
        keys = {name: store.stream_key(name) for name in STREAMS}
    witness_keys = [w.verifier for w in witnesses]
    for signed, witness, line in kept:
        origin = signed.decode().split("\n")[0]
        stream = origin.rsplit("/", 1)[1]
        _, opened = open_checkpoint(signed + line.encode(), [log_verifier(keys[stream], stream), *witness_keys])
        assert {s.name for s in opened.sigs} == {origin, witness}


def test_a_409_is_retried_from_the_witness_size(two_witnesses):
    store_dir, witnesses = two_witnesses
    with Store.open_marks(store_dir) as store:
        assert all(r.cosigned for r in submit(store, witnesses[:1]))
    sqlite3.connect(store_dir / DB_FILE).execute("DELETE FROM cosignatures").connection.commit()  # forget the size
    _drive(store_dir, 5, 100)
    with Store.open_marks(store_dir) as store:
        results = submit(store, witnesses[:1], ["ubi"])
    assert [(r.size, r.status, r.cosigned) for r in results] == [(11, 200, True)]


def test_a_wrong_witness_key_keeps_nothing(two_witnesses):
    store_dir, (w1, w2) = two_witnesses
    with Store.open_marks(store_dir) as store:
        results = submit(store, [WitnessConfig(w1.url, w2.key)], ["ubi"])
    assert results[0].status == 200 and not results[0].cosigned
    assert "not a cosignature" in results[0].detail
    assert _cosignatures(store_dir) == []


def test_a_copied_store_is_shown_up_by_the_witness(two_witnesses, tmp_path):
    store_dir, witnesses = two_witnesses
    copy = tmp_path / "copy"
    shutil.copytree(store_dir, copy)
    _drive(store_dir, 4, 100)  # the car goes on, and its witnesses cosign 10 blocks
    with Store.open_marks(store_dir) as store:
        assert all(r.cosigned for r in submit(store, witnesses))
    _drive(copy, 2, 200)  # the copy signs its own 8
    args = [a for w in witnesses for a in ("--to", w.url, w.key)]
    done = _carledger("witness", "submit", str(copy), *args)
    assert done.returncode == 1
    assert "the car signed a checkpoint of 10 blocks, the store holds 8" in done.stderr
    assert "Recovery" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(ForkedStore):
        _drive(copy, 1, 300)
    run = _carledger("witness", "evidence", str(tmp_path / "w1"))
    assert run.returncode == 0  # the copy's checkpoint was never cosigned: the witness answered 409 with its own


def test_witness_tables_are_checked():
    def error(field, why):
        return ValueError(f"{field}: {why}")

    with pytest.raises(ValueError, match=r"witness\[0\].url"):
        witnesses_from_table([{"url": "ftp://x", "key": "k"}], error)
    with pytest.raises(ValueError, match=r"witness\[0\].key"):
        witnesses_from_table([{"url": "http://127.0.0.1:1", "key": "not a key"}], error)
    with pytest.raises(ValueError, match=r"witness\[0\].colour"):
        witnesses_from_table([{"url": "http://127.0.0.1:1", "key": "k", "colour": 1}], error)


def test_the_agents_thread_submits_while_it_runs(two_witnesses):
    from carledger.sync.witnesses import WitnessThread

    from conftest import wait_until

    store_dir, witnesses = two_witnesses
    thread = WitnessThread(str(store_dir), witnesses, interval=0.05)
    thread.start()
    try:
        wait_until(lambda: len(_cosignatures(store_dir)) == 4, timeout=30)
    finally:
        thread.stop()


def test_the_agent_configuration_names_the_witnesses(two_witnesses, tmp_path):
    store_dir, (w1, w2) = two_witnesses
    (tmp_path / "car.dbc").write_text('VERSION ""\n')
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nstore = "{store_dir}"\nvehicle = "{VID}"\n\n[seal]\ncheckpoint_every = 4\n\n'
        '[[bus]]\nname = "pt"\ninterface = "virtual"\nchannel = "x"\ndbc = ["car.dbc"]\n\n'
        f'[[witness]]\nurl = "{w1.url}"\nkey = "{w1.key}"\nstreams = ["ubi"]\n\n'
        f'[[witness]]\nurl = "{w2.url}"\nkey = "{w2.key}"\n')
    from carledger.config import load_config

    assert load_config(config).checkpoint_every == 4
    done = _carledger("witness", "submit", "-c", str(config), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted((w.count(w1.url), w.count(w2.url)) for w in done.stdout.splitlines()) == [(0, 1)] * 2 + [(1, 0)]
    config.write_text(config.read_text().replace('key = "' + w1.key, 'key = "nonsense'))
    bad = _carledger("witness", "submit", "-c", str(config))
    assert bad.returncode == 2 and "witness[0].key" in bad.stderr and "Traceback" not in bad.stderr


def test_the_agent_syncs_to_a_collector_with_receipts_and_to_two_witnesses(broker, tmp_path):  # noqa: F811
    """`carledger run` on the simulated car, [mqtt] to a real mosquitto and collector, two [[witness]] processes:
    afterwards both witnesses hold cosigned checkpoints of the car's outbound streams, the store keeps both
    cosignatures of each, and it holds the collector's receipts."""
    from broker import enroll, mqtt_for, recipient_identity, start_collector
    from carledger.dbc import path as dbc_path
    from conftest import wait_until
    from test_owner_e2e import NOW, iso

    streams = {"ubi": "insurer", "fleet": "fleet"}
    consent = f"consent = {{ granted = {iso(NOW - 86400)}, expires = {iso(NOW + 86400)} }}"
    (tmp_path / "policy.toml").write_text("version = 1\n" + "".join(
        f'[[stream]]\nname = "{name}"\nrecipient = "{who}"\npurpose = "insurance"\n'
        f'signals = ["Vehicle.Speed"]\n{consent}\n' for name, who in streams.items()))
    store = tmp_path / "ledger"
    Ledger.open(store, vehicle_id="car-w").close()
    enroll(tmp_path / "collected", "car-w", store, tuple(streams.values()))  # and the secret behind their keys
    logs = [log_verifier(recipient_identity(store, who)[1], name).vkey() for name, who in streams.items()]
    (tmp_path / "logs.txt").write_text("\n".join(logs) + "\n")
    collector = start_collector(tmp_path / "collected", mqtt_for(broker, client_id="collector-w"))
    try:
        with witness_processes(tmp_path, tmp_path / "logs.txt") as (w1, w2):
            config = tmp_path / "agent.toml"
            config.write_text(textwrap.dedent(f"""
                [agent]
                store = "ledger"
                vehicle = "car-w"
                policy = "policy.toml"
                [seal]
                checkpoint_every = 2
                [mqtt]
                host = "127.0.0.1"
                port = {broker.port}
                [[bus]]
                name = "car"
                interface = "carledger-sim"
                channel = "city"
                options = {{ seed = 4, speed = 0, duration = 60.0, start_time = {float(int(NOW) - 600)} }}
                dbc = ["{dbc_path('carledger_demo.dbc')}"]
            """) + "".join(f'[[witness]]\nurl = "{w.url}"\nkey = "{w.key}"\n' for w in (w1, w2)))
            proc = subprocess.Popen([sys.executable, "-m", "carledger", "run", "-c", str(config)],
                                    stderr=subprocess.PIPE, text=True)
            try:
                def receipted() -> bool:
                    assert proc.poll() is None, proc.stderr.read()
                    with Store.open_readonly(store) as s:
                        return {r[1] for r in s.receipts()} == set(streams) and not set(s.backlog()) & set(streams)

                wait_until(receipted, timeout=240, interval=0.2)
            finally:
                proc.send_signal(signal.SIGTERM)  # the agent submits to its witnesses once more as it stops
                _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            held = {w.url: _witness_logs(tmp_path / name) for w, name in ((w1, "w1"), (w2, "w2"))}
    finally:
        collector.stop()
    with Store.open_readonly(store) as s:
        for name, who in streams.items():
            signed = s.latest_checkpoint(name)
            assert signed is not None and signed.checkpoint.size >= 2
            kept = {line.split(" ")[1] for line in s.cosignatures_of(signed.row)}
            assert kept == {"witness.example/w1", "witness.example/w2"}, (name, kept)
            for url, logs_held in held.items():
                assert logs_held[signed.checkpoint.origin] == signed.checkpoint.size, (url, name)
        receipts = s.receipts()
    assert {(r[1], r[2]) for r in receipts} == set(streams.items())
    witness_keys = [w.verifier for w in (w1, w2)]
    for signed, witness, line in _cosignatures(store):
        stream = signed.decode().split("\n")[0].rsplit("/", 1)[1]
        key = recipient_identity(store, streams[stream])[1]
        _, opened = open_checkpoint(signed + line.encode(), [log_verifier(key, stream), *witness_keys])
        assert witness in {s.name for s in opened.sigs}


def _witness_logs(witness_dir) -> dict[str, int]:
    """origin -> the size of the newest checkpoint the witness cosigned (its own database)."""
    conn = sqlite3.connect(witness_dir / "witness.sqlite")
    try:
        return dict(conn.execute("SELECT origin, size FROM logs"))
    finally:
        conn.close()


@pytest.mark.parametrize("size", [b"-5", b"1e3", b"\xff"])
def test_a_witness_answering_409_with_no_size_is_reported_and_the_round_goes_on(two_witnesses, size):
    """A 409's size came straight from the witness into int(): -5 asked the store for a proof from -5, and the
    ValueError ended the whole round, so one bad witness listed first kept the others from cosigning."""
    import http.server
    import threading

    from carledger.sync.witnesses import SIZE_CONTENT_TYPE

    class Hostile(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(409)
            self.send_header("Content-Type", SIZE_CONTENT_TYPE)
            self.send_header("Content-Length", str(len(size)))
            self.end_headers()
            self.wfile.write(size)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    store_dir, (good, _) = two_witnesses
    hostile = WitnessConfig(f"http://127.0.0.1:{server.server_address[1]}", good.key)
    try:
        with Store.open_marks(store_dir) as store:
            results = submit(store, [hostile, good], ["ubi"])
    finally:
        server.shutdown()
        server.server_close()
    assert [(r.witness, r.status, r.cosigned) for r in results] == [(hostile.url, 409, False), (good.url, 200, True)]
    assert results[0].detail.startswith("409 without a size")
