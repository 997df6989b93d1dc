"""The C2SP tlog-witness: every answer of add-checkpoint, its state, its evidence, and real servers on loopback."""

from __future__ import annotations

import base64
import http.client
import os
import signal
import subprocess
import sys
import threading

import pytest

from carledger.transparency import checkpoint, cosignature, note, tlog
from carledger.transparency.checkpoint import Checkpoint
from carledger.transparency.witness import Witness, format_request, parse_request, RequestError

ORIGIN = "carledger.example/v/abc/insurer"
LOG = note.Ed25519Signer(ORIGIN, b"\x31" * 32)
OTHER = note.Ed25519Signer(ORIGIN, b"\x32" * 32)  # same name, a key the witness does not know
WITNESS = cosignature.CosignatureSigner("witness.example/w1", b"\x33" * 32, clock=lambda: 1765000000)


def _log(n: int, tag: bytes = b"") -> tlog.MemoryLog:
    log = tlog.MemoryLog()
    for i in range(n):
        log.append(b"block %d%s" % (i, tag))
    return log


def _signed(log: tlog.MemoryLog, size: int, signer: note.Ed25519Signer = LOG) -> bytes:
    return checkpoint.sign_checkpoint(Checkpoint(ORIGIN, size, log.root(size)), [signer])


def _request(log: tlog.MemoryLog, old: int, size: int, signer: note.Ed25519Signer = LOG) -> bytes:
    proof = log.prove_tree(old, size=size) if 0 < old < size else []
    return format_request(old, proof, _signed(log, size, signer))


@pytest.fixture
def witness(tmp_path):
    w = Witness(tmp_path, WITNESS, [LOG.verifier()])
    yield w
    w.close()


def _cosigned(answer, log, size):
    assert answer.status == 200, answer.body
    assert answer.body.startswith("— witness.example/w1 ".encode()) and answer.body.endswith(b"\n")
    cp, opened = checkpoint.open_checkpoint(_signed(log, size) + answer.body, [LOG.verifier(), WITNESS.verifier()])
    assert cosignature.cosignature_times(opened, [WITNESS.verifier()]) == {WITNESS.name: 1765000000}
    return cp


def test_grows_with_consistency_proofs(witness):
    log = _log(40)
    old = 0
    for size in (1, 2, 5, 8, 8, 21, 40):
        _cosigned(witness.add_checkpoint(_request(log, old, size)), log, size)
        assert witness.state(ORIGIN) == (size, log.root(size))
        old = size
    assert witness.evidence() == []


def test_state_survives_a_restart(tmp_path):
    log = _log(9)
    w = Witness(tmp_path, WITNESS, [LOG.verifier()])
    assert w.add_checkpoint(_request(log, 0, 4)).status == 200
    w.close()
    w = Witness(tmp_path, WITNESS, [LOG.verifier()])
    try:
        assert w.state(ORIGIN) == (4, log.root(4))
        assert w.add_checkpoint(_request(log, 0, 9)).status == 409
        assert w.add_checkpoint(_request(log, 4, 9)).status == 200
    finally:
        w.close()


def test_unknown_log_404_and_bad_signature_403(witness):
    log = _log(3)
    stranger = note.Ed25519Signer("carledger.example/v/other", b"\x34" * 32)
    unknown = format_request(0, [], checkpoint.sign_checkpoint(Checkpoint(stranger.name, 3, log.root(3)), [stranger]))
    assert witness.add_checkpoint(unknown).status == 404
    assert witness.add_checkpoint(_request(log, 0, 3, signer=OTHER)).status == 403
    tampered = _request(log, 0, 3).replace(b"\n3\n", b"\n2\n")
    assert witness.add_checkpoint(tampered).status == 403
    assert witness.state(ORIGIN) is None


def test_stale_old_size_409_with_the_stored_size(witness):
    log = _log(10)
    assert witness.add_checkpoint(_request(log, 0, 6)).status == 200
    answer = witness.add_checkpoint(_request(log, 3, 10))
    assert (answer.status, answer.body, answer.content_type) == (409, b"6\n", "text/x.tlog.size")
    assert witness.evidence() == []  # a stale client is not a fork


def test_fork_at_the_same_size_409_and_evidence(witness):
    log, fork = _log(6), _log(6, tag=b" rewritten")
    assert witness.add_checkpoint(_request(log, 0, 6)).status == 200
    request = _request(fork, 6, 6)
    assert witness.add_checkpoint(request).status == 409
    [kept] = witness.evidence()
    assert kept["kind"] == "conflict" and kept["request"] == request and kept["stored"] == _signed(log, 6)
    assert witness.state(ORIGIN) == (6, log.root(6))


def test_fork_with_a_bad_proof_422_and_evidence(witness):
    log, fork = _log(12), _log(12, tag=b" rewritten")
    assert witness.add_checkpoint(_request(log, 0, 5)).status == 200
    request = _request(fork, 5, 12)
    assert witness.add_checkpoint(request).status == 422
    [kept] = witness.evidence()
    assert kept["kind"] == "bad-proof" and kept["request"] == request and kept["stored"] == _signed(log, 5)
    # both are the log's own signatures: the evidence verifies without the witness
    for signed in (parse_request(kept["request"]).checkpoint, kept["stored"]):
        checkpoint.open_checkpoint(signed, [LOG.verifier()], origin=ORIGIN)
    assert witness.state(ORIGIN) == (5, log.root(5))


def test_bad_requests_400(witness):
    log = _log(4)
    good = _request(log, 0, 4)
    for body in (
        b"",
        good.replace(b"old 0", b"old 00"),
        good.replace(b"old 0", b"old -1"),
        good.replace(b"old 0", b"new 0"),
        good.replace(b"old 0\n\n", b"old 0\n"),
        format_request(5, [], _signed(log, 4)),  # old > size
        format_request(0, [], _signed(log, 4).replace(b"\n4\n", b"\n04\n")),  # parsed after the signature: 403
    ):
        answer = witness.add_checkpoint(body)
        assert answer.status == (403 if b"\n04\n" in body else 400), (body, answer)
    assert witness.add_checkpoint(format_request(0, [], b"not a note\n")).status == 404  # origin "not a note"
    bad_text = checkpoint.note.sign_note(f"{ORIGIN}\n04\n{base64.b64encode(log.root(4)).decode()}\n", [LOG])
    assert witness.add_checkpoint(format_request(0, [], bad_text)).status == 400  # signed, but not a checkpoint
    with pytest.raises(RequestError, match="63"):
        parse_request(b"old 1\n" + b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n" * 64 + b"\n")
    with pytest.raises(RequestError, match="32"):
        parse_request(b"old 1\nAAAA\n\nx")


def test_proof_rules_422(witness):
    log = _log(8)
    assert witness.add_checkpoint(format_request(0, [log.root(1)], _signed(log, 8))).status == 422
    assert witness.add_checkpoint(_request(log, 0, 4)).status == 200
    assert witness.add_checkpoint(format_request(4, [log.root(1)], _signed(log, 4))).status == 422
    assert witness.add_checkpoint(format_request(4, log.prove_tree(4, size=8)[:-1], _signed(log, 8))).status == 422


def test_concurrent_requests_never_roll_back(witness):
    """The spec's race: sizes submitted at once from the same old size; exactly one wins, the state only grows."""
    log = _log(30)
    assert witness.add_checkpoint(_request(log, 0, 10)).status == 200
    results = []
    threads = [
        threading.Thread(target=lambda s=s: results.append((s, witness.add_checkpoint(_request(log, 10, s)).status)))
        for s in range(11, 31)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [s for s, status in results if status == 200]
    assert len(winners) == 1 and all(status == 409 for s, status in results if s not in winners)
    assert witness.state(ORIGIN) == (winners[0], log.root(winners[0]))


# -- real witness processes on loopback ---------------------------------------------------------------


def _carledger(*args, **kw):
    return subprocess.run([sys.executable, "-m", "carledger", *args], capture_output=True, text=True, timeout=60, **kw)


def _start(directory, log_key: str):
    proc = subprocess.Popen(
        [sys.executable, "-m", "carledger", "witness", "run", str(directory), "--log", log_key, "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    assert "listening on http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
    return proc, port


def _post(port: int, body: bytes, path: str = "/add-checkpoint") -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body)
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type"), r.read()
    finally:
        conn.close()


def test_two_witness_processes_cosign_and_keep_the_fork(tmp_path):
    vkeys = []
    for name in ("w1", "w2"):
        done = _carledger("witness", "keygen", str(tmp_path / name), "--name", f"witness.example/{name}")
        assert done.returncode == 0, done.stderr
        vkeys.append(done.stdout.strip())
        assert oct(os.stat(tmp_path / name / "witness.key").st_mode & 0o777) == "0o600"
    assert _carledger("witness", "keygen", str(tmp_path / "w1"), "--name", "x").returncode == 1  # never overwrites
    procs = [_start(tmp_path / name, LOG.verifier().vkey()) for name in ("w1", "w2")]
    try:
        log = _log(50)
        old = 0
        for size in (7, 20, 50):
            signed = _signed(log, size)
            for _, port in procs:
                status, _, body = _post(port, _request(log, old, size))
                assert status == 200, body
                signed += body
            verifiers = [LOG.verifier()] + [note.parse_verifier_key(v) for v in vkeys]
            _, opened = checkpoint.open_checkpoint(signed, verifiers, origin=ORIGIN)
            assert len(opened.sigs) == 3  # the log and a quorum of two witnesses
            old = size
        fork = _log(60, tag=b" after the crash")
        status, _, _ = _post(procs[0][1], _request(fork, 50, 60))
        assert status == 422
        status, ctype, body = _post(procs[1][1], _request(fork, 20, 60))
        assert (status, ctype, body) == (409, "text/x.tlog.size", b"50\n")
        assert _post(procs[0][1], b"x", path="/other")[0] == 404
    finally:
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs:
            assert proc.wait(timeout=30) == 0
            proc.stdout.close()
            proc.stderr.close()
    listed = _carledger("witness", "evidence", str(tmp_path / "w1"))
    assert listed.returncode == 1 and "bad-proof" in listed.stdout and ORIGIN in listed.stdout
    assert _carledger("witness", "evidence", str(tmp_path / "w2")).returncode == 0


def test_cli_refuses_bad_arguments(tmp_path):
    assert _carledger("witness", "keygen", str(tmp_path / "w"), "--name", "bad name").returncode == 2
    assert _carledger("witness", "run", str(tmp_path / "none"), "--log", LOG.verifier().vkey()).returncode == 2
    assert _carledger("witness", "keygen", str(tmp_path / "w"), "--name", "w").returncode == 0
    bad = _carledger("witness", "run", str(tmp_path / "w"), "--log", "x+00000000+AAAA")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("carledger witness run: error: --log")
    assert "Traceback" not in bad.stderr
    assert _carledger("witness", "run", str(tmp_path / "w")).returncode == 2  # no log keys
    assert _carledger("witness", "run", str(tmp_path / "w"), "--log", WITNESS.verifier().vkey()).returncode == 2
    assert _carledger("witness", "evidence", str(tmp_path / "none")).returncode == 2
