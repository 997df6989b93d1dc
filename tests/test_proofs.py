"""Portable proofs (agent/ledger/proofs.py, `carledger prove` / `verify-proof`): 20 s of a 10-minute drive.

The bundle verifies offline with nothing but the policy's keys, holds no
record outside the window, and fails on every single flipped byte (the car
signs the window itself: the `window` statement).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import nacl.signing
import pytest

from carledger.ledger import Ledger, Store
from carledger.ledger.block import decode_record
from carledger.ledger.checkpoints import log_verifier
from carledger.ledger.keys import FileSigner
from carledger.ledger.proofs import ProofError, build_bundle, dumps, parse_policy, verify_bundle
from carledger.transparency.cosignature import CosignatureSigner
from carledger.transparency.witness import Witness, format_request
from test_transparency_interop import _go, go_interop  # noqa: F401 - a fixture, taken by name

T0 = 1_700_000_000  # the drive's start, POSIX seconds
VID = "VIN-PROOFS"


def _carledger(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carledger", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    """A store with 10 minutes of stream 'ubi' (2 signals at 2 Hz, a block every 10 s), cosigned by a witness."""
    tmp = tmp_path_factory.mktemp("proofs")
    store_dir = tmp / "car"
    with Ledger.open(store_dir, VID) as ledger:
        w = ledger.writer("ubi")
        for step in range(1200):
            t = T0 + step / 2
            w.add_sample(t, "Vehicle.Speed", float(step % 130))
            w.add_sample(t, "Vehicle.Powertrain.Rpm", 800 + step)
            if step % 20 == 19:
                ledger.seal([w])
        pub = bytes(ledger.verify_key)
    witness_dir = tmp / "w1"
    witness_dir.mkdir()
    signer = CosignatureSigner("witness.example/w1", os.urandom(32))
    witness = Witness(witness_dir, signer, [log_verifier(pub, "ubi")])
    with Store.open(store_dir) as store:
        cp = store.latest_checkpoint("ubi")
        answer = witness.add_checkpoint(format_request(0, [], cp.note))
        assert answer.status == 200
        store.add_cosignature(cp.row, signer.name, answer.body.decode())
    witness.close()
    policy = tmp / "policy.txt"
    policy.write_text(f"# the insurer's policy\nlog {log_verifier(pub, 'ubi').vkey()}\n"
                      f"witness {signer.verifier().vkey()}\nquorum 1\n")
    return store_dir, policy, tmp


def test_twenty_seconds_verify_offline_and_hold_nothing_else(drive):
    store_dir, policy, tmp = drive
    out = tmp / "crash.json"
    made = _carledger("prove", str(store_dir), "--stream", "ubi", "--from", str(T0 + 300),
                      "--to", "2023-11-14T22:18:40Z", "-o", str(out))  # T0 + 320
    assert made.returncode == 0, made.stderr
    checked = _carledger("verify-proof", str(out), "--policy", str(policy), "--json")
    assert checked.returncode == 0, checked.stderr
    result = json.loads(checked.stdout)
    assert result["witnesses"] == ["witness.example/w1"] and result["checkpoint_size"] == 60
    bundle = json.loads(out.read_text())
    import base64

    times = [decode_record(base64.b64decode(r["data"])).t for b in bundle["blocks"] for r in b.get("records", [])]
    assert len(times) == 41 * 2 and min(times) == (T0 + 300) * 10**6 and max(times) == (T0 + 320) * 10**6
    assert len(bundle["blocks"]) == 5  # blocks 29 (edge), 30, 31, 32 (one record pair at 320 s), 33 (edge)
    assert "records" not in bundle["blocks"][0] and "records" not in bundle["blocks"][-1]
    assert out.stat().st_size < 40_000


def test_any_flipped_byte_fails(drive):
    """Every byte, the window's own numbers included: the car signed the window (the `window` statement)."""
    store_dir, policy, _ = drive
    with Store.open_readonly(store_dir) as store:
        text = dumps(build_bundle(store, "ubi", (T0 + 300) * 10**6, (T0 + 320) * 10**6)).encode()
    rules = parse_policy(policy.read_text(), str(policy))
    verify_bundle(json.loads(text), rules)
    for i in range(len(text)):
        flipped = bytearray(text)
        flipped[i] ^= 0x01
        try:
            verify_bundle(json.loads(flipped.decode("utf-8", "strict")), rules)
        except (ProofError, ValueError):
            continue
        raise AssertionError(f"byte {i} ({chr(text[i])!r}) flipped still verifies")


def test_window_statement_binds_the_window(drive):
    """A bundle whose window was widened, or whose statement is missing or signed by another key, is refused."""
    store_dir, policy, _ = drive
    rules = parse_policy(policy.read_text(), str(policy))
    with Store.open_readonly(store_dir) as store:
        bundle = build_bundle(store, "ubi", (T0 + 300) * 10**6, (T0 + 320) * 10**6)
        with pytest.raises(ProofError, match="another key"):
            build_bundle(store, "ubi", T0 * 10**6, (T0 + 1) * 10**6, signer=FileSigner(nacl.signing.SigningKey.generate()))
    with pytest.raises(ProofError, match="window: the signed statement"):
        verify_bundle(dict(bundle, from_us=bundle["from_us"] - 1), rules)
    with pytest.raises(ProofError, match="window"):
        verify_bundle({k: v for k, v in bundle.items() if k != "window"}, rules)


def test_a_block_inside_the_window_must_carry_every_record(drive):
    """Block 31 lies wholly inside 300..320 s: a bundle that leaves out one of its records is refused."""
    store_dir, policy, _ = drive
    rules = parse_policy(policy.read_text(), str(policy))
    with Store.open_readonly(store_dir) as store:
        bundle = build_bundle(store, "ubi", (T0 + 300) * 10**6, (T0 + 320) * 10**6)
    inside = bundle["blocks"][2]  # blocks 29 (edge), 30, 31, ...
    assert len(inside["records"]) == 40
    for drop in (0, 17, 39):
        cut = json.loads(json.dumps(bundle))
        del cut["blocks"][2]["records"][drop]
        with pytest.raises(ProofError, match=r"blocks\[2\]\.records: block 31 lies inside the window"):
            verify_bundle(cut, rules)
    verify_bundle(bundle, rules)


def test_policy_and_quorum(drive, tmp_path):
    store_dir, policy, _ = drive
    with Store.open_readonly(store_dir) as store:
        bundle = build_bundle(store, "ubi", (T0 + 100) * 10**6, (T0 + 101) * 10**6)
    lines = policy.read_text().splitlines()
    two = parse_policy("\n".join(lines[:3] + [f"witness {CosignatureSigner('w2.example', os.urandom(32)).verifier().vkey()}",
                                               "quorum 2"]), "p")
    with pytest.raises(ProofError, match="quorum 2"):
        verify_bundle(bundle, two)
    other = parse_policy(f"log {log_verifier(_other_key(), 'ubi').vkey()}\nquorum 0",
                         "p")
    with pytest.raises(ProofError, match="checkpoint"):
        verify_bundle(bundle, other)
    witness_as_log = CosignatureSigner("w3.example", os.urandom(32)).verifier().vkey()
    with pytest.raises(ProofError, match=r"p:1: the log key must be an Ed25519 \(0x01\) note key"):
        parse_policy(f"log {witness_as_log}\nquorum 0", "p")
    with pytest.raises(ProofError, match=r"p:2: expected"):  # "²".isdigit() is true and int("²") a ValueError
        parse_policy(f"log {log_verifier(_other_key(), 'ubi').vkey()}\nquorum \u00b2", "p")
    bad = tmp_path / "bad.txt"
    bad.write_text("log nonsense\n")
    done = _carledger("verify-proof", str(tmp_path / "x.json"), "--policy", str(bad))
    assert done.returncode == 2 and "bad.txt:1" in done.stderr and "Traceback" not in done.stderr


def _other_key() -> bytes:
    import nacl.signing

    return bytes(nacl.signing.SigningKey.generate().verify_key)


def test_prove_refuses_a_window_without_blocks(drive):
    store_dir, _, _ = drive
    done = _carledger("prove", str(store_dir), "--stream", "ubi", "--from", str(T0 + 5000), "--to", str(T0 + 5001))
    assert done.returncode == 1 and "no block" in done.stderr and "Traceback" not in done.stderr


def test_go_checks_the_bundles_checkpoint_and_every_proof(drive, go_interop):
    """Go's sumdb/note opens the car's cosigned checkpoint; sumdb/tlog checks every block and record proof."""
    import base64

    from carledger.ledger import cose, merkle
    from carledger.ledger.block import Header

    store_dir, policy, _ = drive
    with Store.open_readonly(store_dir) as store:
        bundle = build_bundle(store, "ubi", (T0 + 300) * 10**6, (T0 + 320) * 10**6)
    keys = dict(line.split(" ", 1) for line in policy.read_text().splitlines() if not line.startswith("#"))
    cp_lines = bundle["checkpoint"].split("\n")
    size, root = int(cp_lines[1]), cp_lines[2]
    checks = []
    for block in bundle["blocks"]:
        sign1 = base64.b64decode(block["sign1"])
        header = Header.decode(cose.decode_sign1(sign1).payload)
        checks.append({"size": size, "root": root, "index": header.seq,
                       "leaf_hash": base64.b64encode(merkle.leaf_hash(sign1)).decode(), "proof": block["proof"]})
        for rec in block.get("records", []):
            checks.append({"size": header.count, "root": base64.b64encode(header.root).decode(), "index": rec["index"],
                           "leaf_hash": base64.b64encode(merkle.leaf_hash(base64.b64decode(rec["data"]))).decode(),
                           "proof": rec["proof"]})
    forged = dict(checks[1], index=checks[1]["index"] + 1)
    answer = _go(go_interop, {"vkeys": [keys["log"]], "cosig_vkeys": [keys["witness"]],
                              "notes": [bundle["checkpoint"]], "records": checks + [forged]})
    (opened,) = answer["notes"]
    assert opened.get("err") is None and len(opened["sigs"]) == 2  # the car's key and the witness
    assert answer["records"][:-1] == [""] * len(checks) and answer["records"][-1] != ""


def test_a_recipients_pseudonymous_stream_is_proven_under_its_own_key(tmp_path):
    """The streams that leave the car are signed with their recipient's key: prove signs the window with it too."""
    from carledger.ledger.keys import load_or_create_secret
    from carledger.policy import pseudonym

    store_dir = tmp_path / "car"
    with Ledger.open(store_dir, VID) as ledger:
        secret = load_or_create_secret(store_dir)
        w = ledger.writer("insurer")
        w.vid = pseudonym(secret, VID, "Acme Insurance")
        w.signer = ledger.certify(secret, "Acme Insurance", w.vid)
        for step in range(120):
            w.add_sample(T0 + step / 2, "Vehicle.Speed", float(step))
            if step % 20 == 19:
                ledger.seal([w])
        vehicle_key = bytes(ledger.verify_key)
    with Store.open_readonly(store_dir) as store:
        key = store.stream_key("insurer")
    assert key is not None and bytes(key) != vehicle_key  # the recipient's own key, not the vehicle's
    policy = tmp_path / "policy.txt"
    policy.write_text(f"log {log_verifier(bytes(key), 'insurer').vkey()}\nquorum 0\n")
    out = tmp_path / "insurer.proof"
    made = _carledger("prove", str(store_dir), "--stream", "insurer", "--from", str(T0 + 10), "--to", str(T0 + 30),
                      "-o", str(out))
    assert made.returncode == 0, made.stderr
    checked = _carledger("verify-proof", str(out), "--policy", str(policy))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    other = tmp_path / "vehicle-policy.txt"  # under the vehicle key, the recipient's log does not verify
    other.write_text(f"log {log_verifier(vehicle_key, 'insurer').vkey()}\nquorum 0\n")
    assert _carledger("verify-proof", str(out), "--policy", str(other)).returncode == 1


def test_a_vehicle_key_kept_outside_the_store_signs_the_window_from_the_config_or_key(tmp_path):
    """`[agent] key = "file:..."` keeps the vehicle key out of the store: prove takes it from -c, or from --key."""
    seed = nacl.signing.SigningKey.generate()
    keyfile = tmp_path / "car.key"
    keyfile.write_text(bytes(seed).hex() + "\n")
    keyfile.chmod(0o600)
    store_dir = tmp_path / "ledger"
    with Ledger.open(store_dir, VID, signer=FileSigner(seed)) as ledger:
        w = ledger.writer("ubi")
        for step in range(40):
            w.add_sample(T0 + step / 2, "Vehicle.Speed", float(step))
            if step % 10 == 9:
                ledger.seal([w])
    assert not (store_dir / "keys" / "vehicle.key").exists()
    (tmp_path / "a.dbc").write_text('VERSION ""\n')
    (tmp_path / "a.log").write_text("(1.0) can0 123#00\n")
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nstore = "ledger"\nvehicle = "{VID}"\nkey = "file:car.key"\n\n'
                      '[[bus]]\nname = "pt"\nreplay = "a.log"\nspeed = 0\ndbc = ["a.dbc"]\n')
    policy = tmp_path / "policy.txt"
    policy.write_text(f"log {log_verifier(bytes(seed.verify_key), 'ubi').vkey()}\nquorum 0\n")
    window = ("--stream", "ubi", "--from", str(T0 + 2), "--to", str(T0 + 8))

    missing = _carledger("prove", "--store", str(store_dir), *window)
    assert missing.returncode == 1 and "give --key, or -c" in missing.stderr and "Traceback" not in missing.stderr
    for how in (("-c", str(config)), ("--store", str(store_dir), "--key", str(keyfile))):
        out = tmp_path / f"proof{len(how)}-{how[0]}.json"
        made = _carledger("prove", *how, *window, "-o", str(out))
        assert made.returncode == 0, made.stderr
        checked = _carledger("verify-proof", str(out), "--policy", str(policy))
        assert checked.returncode == 0, checked.stdout + checked.stderr
    other = tmp_path / "other.key"
    other.write_text(bytes(nacl.signing.SigningKey.generate()).hex() + "\n")
    other.chmod(0o600)
    wrong = _carledger("prove", "--store", str(store_dir), "--key", str(other), *window)
    assert wrong.returncode == 1 and "neither the vehicle key" in wrong.stderr
    unreadable = _carledger("prove", "--store", str(store_dir), "--key", str(tmp_path / "nope.key"), *window)
    assert unreadable.returncode == 2 and "--key" in unreadable.stderr and "Traceback" not in unreadable.stderr


@pytest.mark.parametrize("part, value, words", [
    ("proof", 5, "proof: not a list of base64 hashes"),
    ("proof", {"a": 1}, "proof: not a list of base64 hashes"),
    ("record proof", True, ".records[0].proof: not a list of base64 hashes"),
    ("proof", [5], "proof: not a base64 string"),
])
def test_a_bundle_with_a_value_of_the_wrong_type_is_refused_naming_it(drive, tmp_path, part, value, words):
    """A bundle is a third party's file: a proof that is not a list was a TypeError (a traceback in verify-proof)."""
    store_dir, policy, _ = drive
    with Store.open_readonly(store_dir) as store:
        bundle = json.loads(dumps(build_bundle(store, "ubi", (T0 + 100) * 10**6, (T0 + 101) * 10**6)))
    n, entry = next((n, e) for n, e in enumerate(bundle["blocks"]) if e.get("records"))  # a block in the window
    if part == "record proof":
        entry["records"][0]["proof"] = value
    else:
        entry["proof"] = value
    words = f"blocks[{n}]{'' if part == 'record proof' else '.'}{words}"
    with pytest.raises(ProofError, match=re.escape(words)):
        verify_bundle(bundle, parse_policy(policy.read_text(), str(policy)))
    (tmp_path / "b.json").write_text(json.dumps(bundle))
    done = _carledger("verify-proof", str(tmp_path / "b.json"), "--policy", str(policy))
    assert done.returncode == 1 and "Traceback" not in done.stderr and words in done.stderr
