"""The witness's `add-checkpoint` requests per second (C2SP tlog-witness), on a real witness.

    python bench/bench_witness.py [--requests 2000] [--logs 4] [--dir /dev/shm]

Each request is a valid one that the witness cosigns (200): a checkpoint one
leaf larger than the one it holds, with the consistency proof from there,
signed by the log's Ed25519 key; requests are built before the clock starts.

1. In the process: `Witness.add_checkpoint(body)` (parse, open the note with
   the log key, check the proof, one SQLite IMMEDIATE transaction with
   synchronous=FULL, cosign), one log and `--logs` logs in turn.
2. Over HTTP: a `carledger witness run` process on loopback, one keep-alive
   client sending requests one after the other (each waits for its answer),
   then two clients on two logs at once.

The witness's database is in --dir (default /dev/shm where there is one: the
figures are then CPU; on a disk, each request's fsync adds its time).
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from carledger.ledger import merkle
from carledger.transparency.checkpoint import Checkpoint, sign_checkpoint
from carledger.transparency.cosignature import CosignatureSigner
from carledger.transparency.note import Ed25519Signer
from carledger.transparency.witness import Witness, format_request


def requests_for(signer: Ed25519Signer, n: int) -> list[bytes]:
    """n add-checkpoint bodies, sizes 1..n, each with its proof from the size before (the first from 0)."""
    leaves = [os.urandom(64) for _ in range(n)]
    hashes = merkle.leaf_hashes(leaves)
    out = []
    for size in range(1, n + 1):
        root = merkle.root_from_hashes(hashes[:size])
        proof = merkle.consistency_proof(leaves[:size], size - 1) if size > 1 else []
        note = sign_checkpoint(Checkpoint(signer.name, size, root), [signer])
        out.append(format_request(size - 1, proof, note))
    return out


def in_process(where: str | None, requests: int, logs: int) -> float:
    """Requests per second through Witness.add_checkpoint, `logs` logs taken in turn."""
    signers = [Ed25519Signer(f"bench.example/log{i}", os.urandom(32)) for i in range(logs)]
    bodies = [requests_for(s, requests // logs) for s in signers]
    with tempfile.TemporaryDirectory(dir=where) as d:
        witness = Witness(d, CosignatureSigner("bench.example/w", os.urandom(32)), [s.verifier() for s in signers])
        try:
            start = time.perf_counter()
            for step in range(requests // logs):
                for b in bodies:
                    answer = witness.add_checkpoint(b[step])
                    assert answer.status == 200, answer
            return (requests // logs) * logs / (time.perf_counter() - start)
        finally:
            witness.close()


def _client(port: int, bodies: list[bytes]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for body in bodies:
            conn.request("POST", "/add-checkpoint", body=body)
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 200, answer.status
    finally:
        conn.close()


def over_http(where: str | None, requests: int, clients: int) -> float:
    """Requests per second to a `carledger witness run` on loopback, `clients` keep-alive clients on their own logs."""
    signers = [Ed25519Signer(f"bench.example/log{i}", os.urandom(32)) for i in range(clients)]
    bodies = [requests_for(s, requests // clients) for s in signers]
    with tempfile.TemporaryDirectory(dir=where) as d:
        made = subprocess.run([sys.executable, "-m", "carledger", "witness", "keygen", d, "--name", "bench.example/w"],
                              capture_output=True, check=True)
        assert made.stdout
        logs = [a for s in signers for a in ("--log", s.verifier().vkey())]
        proc = subprocess.Popen([sys.executable, "-m", "carledger", "witness", "run", d, *logs, "--listen", "127.0.0.1:0"],
                                stdout=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            port = int(line.split("listening on http://")[1].split("/")[0].rsplit(":", 1)[1])
            threads = [threading.Thread(target=_client, args=(port, b)) for b in bodies]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return sum(len(b) for b in bodies) / (time.perf_counter() - start)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            proc.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--logs", type=int, default=4)
    parser.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    args = parser.parse_args()
    print(f"in process, 1 log:     {in_process(args.dir, args.requests, 1):7.0f} add-checkpoint/s")
    print(f"in process, {args.logs} logs:    {in_process(args.dir, args.requests, args.logs):7.0f} add-checkpoint/s")
    print(f"HTTP, 1 client:        {over_http(args.dir, args.requests, 1):7.0f} add-checkpoint/s")
    print(f"HTTP, 2 clients:       {over_http(args.dir, args.requests, 2):7.0f} add-checkpoint/s")


if __name__ == "__main__":
    main()
