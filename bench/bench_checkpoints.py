"""The cost of the car's logs per sealed block, and of a proof bundle, on a real store.

    python bench/bench_checkpoints.py [--blocks 600] [--dir /dev/shm]

1. Seal time per block of one stream (10 records a block, one transaction and
   fsync each, as the agent seals) with a checkpoint every N blocks, N in
   1, 16 (the default), 64 and "never" (the log's stored hashes are still
   kept), as a ratio to "never". The store is made in --dir (default
   /dev/shm where there is one: fsync there costs nothing, so the figures are
   the CPU cost, which a shared disk's fsync times would drown); each figure
   is the best of three runs.
2. Proof bundle size against the number of records disclosed (2 signals at
   2 Hz, a block every 10 s).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from carledger.ledger import Ledger, Store
from carledger.ledger.proofs import build_bundle, dumps


def seal_cost(every: int, blocks: int, where: str | None) -> float:
    """Microseconds per sealed block."""
    with tempfile.TemporaryDirectory(dir=where) as d, Ledger.open(d, "BENCH") as ledger:
        ledger.checkpoint_every = every
        w = ledger.writer("ubi")
        start = time.perf_counter()
        for b in range(blocks):
            for i in range(10):
                w.add_sample(b * 10 + i, "Vehicle.Speed", float(i))
            ledger.seal([w])
        return (time.perf_counter() - start) / blocks * 1e6


def proof_sizes() -> list[tuple[int, int]]:
    """(records disclosed, bundle bytes) for windows of 1 s to 5 minutes of a 10-minute drive."""
    out = []
    with tempfile.TemporaryDirectory() as d:
        with Ledger.open(d, "BENCH") as ledger:
            w = ledger.writer("ubi")
            for step in range(1200):
                w.add_sample(step / 2, "Vehicle.Speed", float(step % 130))
                w.add_sample(step / 2, "Vehicle.Powertrain.Rpm", 800 + step)
                if step % 20 == 19:
                    ledger.seal([w])
        with Store.open_readonly(d) as store:
            for seconds in (1, 5, 20, 60, 300):
                bundle = build_bundle(store, "ubi", 200 * 10**6, (200 + seconds) * 10**6)
                n = sum(len(b.get("records", [])) for b in bundle["blocks"])
                out.append((n, len(dumps(bundle))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=600)
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = parser.parse_args()
    never = min(seal_cost(10**12, args.blocks, args.dir) for _ in range(3))
    print(f"checkpoint never: {never:7.0f} µs/block (1.00)")
    for every in (64, 16, 1):
        cost = min(seal_cost(every, args.blocks, args.dir) for _ in range(3))
        print(f"checkpoint every {every:>2}: {cost:7.0f} µs/block ({cost / never:.2f})")
    for n, size in proof_sizes():
        print(f"proof of {n:4d} records: {size:7d} bytes ({size / n:.0f} bytes/record)")


if __name__ == "__main__":
    main()
