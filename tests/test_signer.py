"""The ledger signs through keys.Signer: a backend that keeps the key elsewhere plugs in without touching the ledger."""

from __future__ import annotations

import textwrap

import nacl.signing
import pytest

from carledger.cli import main
from carledger.config import ConfigError, load_config
from carledger.ledger import Ledger, LedgerError, Store, StoreError, kid, open_block
from carledger.ledger.keys import FileSigner, KeyBackendUnavailable, Signer, signer_from_spec
from carledger.verify import verify_store


class DeviceSigner:
    """Stands in for a secure element: the key lives in this object only, nothing is written, every use is counted."""

    def __init__(self, seed: bytes = b"\x07" * 32, *, corrupt: bool = False, key_id: bytes | None = None):
        self._key = nacl.signing.SigningKey(seed)
        self._public = bytes(self._key.verify_key)
        self._key_id = key_id if key_id is not None else kid(self._public)
        self.corrupt = corrupt
        self.signed: list[bytes] = []

    @property
    def public_key(self) -> bytes:
        return self._public

    @property
    def key_id(self) -> bytes:
        return self._key_id

    def sign(self, message: bytes) -> bytes:
        self.signed.append(message)
        sig = self._key.sign(message).signature
        return bytes([sig[0] ^ 1]) + sig[1:] if self.corrupt else sig


def _record(ledger: Ledger, stream: str, n: int) -> None:
    w = ledger.writer(stream)
    for i in range(n):
        w.add_sample(1000.0 + i, "Vehicle.Speed", float(i))


def test_ledger_seals_through_another_signer_and_blocks_verify(tmp_path):
    device = DeviceSigner()
    assert isinstance(device, Signer) and not isinstance(device, FileSigner)
    store = tmp_path / "store"
    with Ledger.open(store, "VIN-DEV", signer=device) as ledger:
        for k in range(3):
            _record(ledger, "driving", 4)
            ledger.seal()
        assert ledger.kid == device.key_id
    # one signature per block and one for the checkpoint of the stream's log at close, all of them by the device
    blocks = [m for m in device.signed if m.startswith(b"\x84jSignature1")]
    notes = [m for m in device.signed if m not in blocks]
    assert len(blocks) == 3 and len(notes) == 1 and notes[0].split(b"\n")[1] == b"3"  # a checkpoint of 3 blocks
    assert not (store / "keys" / "vehicle.key").exists()  # no key material was made or kept on disk
    report = verify_store(store, key=device.public_key)
    assert report.ok and report.streams["driving"].blocks == 3 and report.key_id == device.key_id.hex()
    reader = Store.open_readonly(store)
    try:
        for row in reader.iter_blocks("driving"):
            block = open_block(reader.message(row), nacl.signing.VerifyKey(device.public_key))
            assert block.header.vid == "VIN-DEV" and len(block.records) == 4
    finally:
        reader.close()


def test_chain_continues_only_with_its_own_key(tmp_path):
    store = tmp_path / "store"
    with Ledger.open(store, "VIN-DEV", signer=DeviceSigner()) as ledger:
        _record(ledger, "driving", 2)
        ledger.seal()
    with Ledger.open(store, signer=DeviceSigner()) as ledger:  # the same device again: the chain goes on
        _record(ledger, "driving", 2)
        ledger.seal()
    with pytest.raises(StoreError, match="does not match the public key recorded"):
        Ledger.open(store, signer=DeviceSigner(b"\x08" * 32))
    with pytest.raises(StoreError, match="keys/vehicle.key is missing and the store is signed by key kid"):
        Ledger.open(store)  # nor with a key file made up on the spot
    assert not (store / "keys" / "vehicle.key").exists()
    assert verify_store(store, key=DeviceSigner().public_key).ok


def test_a_backend_that_signs_wrongly_seals_nothing(tmp_path):
    store = tmp_path / "store"
    device = DeviceSigner(corrupt=True)
    ledger = Ledger.open(store, "VIN-DEV", signer=device)
    _record(ledger, "driving", 3)
    with pytest.raises(LedgerError, match="does not verify"):
        ledger.seal()
    assert ledger.writer("driving").pending == 3  # nothing lost: the records wait for a working key
    ledger.close(seal=False)
    reader = Store.open_readonly(store)
    try:
        assert list(reader.iter_blocks("driving")) == []
    finally:
        reader.close()
    ledger = Ledger.open(tmp_path / "other", "VIN-DEV", signer=DeviceSigner(key_id=b"\x00" * 8))
    _record(ledger, "driving", 1)
    with pytest.raises(LedgerError, match="key id"):
        ledger.seal()
    ledger.close(seal=False)


def _config(tmp_path, key_line: str):
    (tmp_path / "a.dbc").write_text('VERSION ""\n')
    (tmp_path / "a.log").write_text("(1.0) can0 123#00\n(2.0) can0 123#01\n")
    path = tmp_path / "agent.toml"
    path.write_text(textwrap.dedent(f"""\
        [agent]
        store = "ledger"
        vehicle = "car-1"
        {key_line}

        [[bus]]
        name = "pt"
        replay = "a.log"
        speed = 0
        dbc = ["a.dbc"]
        """))
    return path


@pytest.mark.parametrize("spec, words", [
    ("pkcs11:token=carledger;object=vehicle", "pkcs11: not available here"),
    ("tpm2:0x81010001", "tpm2: not available here"),
    ("hsm:x", "unknown key backend"),
    ("/etc/carledger/vehicle.key", "expected SCHEME:VALUE"),
])
def test_unavailable_backends_are_refused_at_their_line(tmp_path, spec, words):
    path = _config(tmp_path, f'key = "{spec}"')
    with pytest.raises(ConfigError, match=rf"^{path}:4: agent\.key: .*{words}"):
        load_config(path)
    with pytest.raises(KeyBackendUnavailable, match=words):
        signer_from_spec(spec, tmp_path / "ledger")


def test_agent_runs_with_a_key_file_named_in_the_config(tmp_path, capsys):
    seed = nacl.signing.SigningKey.generate()
    keyfile = tmp_path / "car.key"
    keyfile.write_text(bytes(seed).hex() + "\n")
    keyfile.chmod(0o600)
    path = _config(tmp_path, 'key = "file:car.key"')
    config = load_config(path)
    assert config.key == f"file:{keyfile}"
    assert main(["run", "-c", str(path)]) == 0
    store = tmp_path / "ledger"
    assert not (store / "keys" / "vehicle.key").exists()  # the configured key, not a new one
    assert verify_store(store, key=bytes(seed.verify_key)).ok
    assert Store.open_readonly(store).public_key == bytes(seed.verify_key)
    keyfile.chmod(0o644)  # the file backend keeps the file checks
    capsys.readouterr()
    assert main(["run", "-c", str(path)]) == 2
    assert "chmod 600" in capsys.readouterr().err
