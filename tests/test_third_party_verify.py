"""A third party verifies the agent's blocks with pycose and nothing of ours.

Runs docs/third_party_verify.py in .venv-verifier (pycose + cbor2 only, made by
scripts/setup), a separate Python environment without carledger, on what
`carledger log export --format cose` writes (a CBOR sequence of COSE_Sign1).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from carledger.cli import main
from carledger.config import replay_config
from carledger.dbc import path as dbc_path
from carledger.ledger import Store
from carledger.pipeline import Pipeline
from carledger_sim.car import SimulatedCar

import can

REPO = Path(__file__).resolve().parents[1]
VERIFIER = Path(os.environ.get("CARLEDGER_VERIFIER_PYTHON", REPO / ".venv-verifier" / "bin" / "python"))
SCRIPT = REPO / "docs" / "third_party_verify.py"


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    if not VERIFIER.exists():
        pytest.skip(f"no third-party verifier environment at {VERIFIER} (scripts/setup makes it)")
    tmp = tmp_path_factory.mktemp("third-party")
    drive = tmp / "drive.log"
    with can.Logger(str(drive)) as logger:
        for msg in SimulatedCar("city", seed=4, duration=20.0, start_time=1_700_000_000.0).frames():
            logger.on_message_received(msg)
    store = tmp / "ledger"
    Pipeline(replay_config(str(drive), [dbc_path("carledger_demo.dbc")], str(store),
                           {"driving": ["Vehicle.Speed", "Vehicle.Chassis.*"]}, fast=True)).run()
    with Store.open_readonly(store) as s:
        key = bytes(s.meta()["public_key"]).hex()
        messages = [s.message(row) for row in s.iter_blocks("driving")]
    export = tmp / "driving.cose"
    assert main(["log", "export", str(store), "--stream", "driving", "--format", "cose", "-o", str(export)]) == 0
    assert export.read_bytes() == b"".join(messages)  # a CBOR sequence of exactly the messages the collector gets
    return tmp, key, messages


def third_party(tmp: Path, key: str, messages: list[bytes]) -> tuple[int, dict]:
    blocks = tmp / "blocks.cose"
    blocks.write_bytes(b"".join(messages))
    out = subprocess.run([str(VERIFIER), "-I", str(SCRIPT), key, str(blocks)], capture_output=True, text=True)
    assert out.stdout, out.stderr
    return out.returncode, json.loads(out.stdout)


def test_every_block_verifies_with_pycose_alone(published):
    tmp, key, messages = published
    code, result = third_party(tmp, key, messages)
    assert code == 0 and result["ok"], result
    assert result["blocks"] == len(messages) > 5
    assert result["records"] > 100


def test_pycose_alone_catches_tampering(published):
    tmp, key, messages = published
    raw = bytearray(messages[3])
    raw[-70] ^= 0x01  # inside the signature or the records, both must fail
    tampered = messages[:3] + [bytes(raw)] + messages[4:]
    code, result = third_party(tmp, key, tampered)
    assert code == 1 and {p["kind"] for p in result["problems"]} & {"bad-signature", "bad-merkle-root", "malformed"}
    code, result = third_party(tmp, key, messages[:2] + messages[3:])
    assert code == 1 and {p["kind"] for p in result["problems"]} == {"gap", "broken-link"}
