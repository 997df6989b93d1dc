"""Profile one fast replay in-process: where the time of bench_pipeline / bench_policy (and its [edr] variant) goes.

    python bench/profile_replay.py pipeline|policy|edr [--out FILE.prof] [--normal-sync]

Builds the bench's log (the RAV4 log repeated to 1,000,000 frames, or the 1,900 s simulated
city drive with the realistic policy, with or without `[edr]`), replays it once under cProfile
and prints the wall and process CPU time and the 25 costliest functions (own time).
`--normal-sync` opens the store with `PRAGMA synchronous=NORMAL` (an experiment only: it shows
how much of the wall time is the store's fsyncs, one per sealed transaction; the agent never
runs so). Not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pipeline as bp  # noqa: E402  (bench scripts are run as files)
import bench_policy as bpo  # noqa: E402


def config(kind: str, tmp: Path):
    store = tmp / "store"
    if kind == "pipeline":
        from carledger.config import replay_config
        log = tmp / "rav4.log"
        bp.build_log(1_000_000, log)
        return replay_config(str(log), [str(bp.DBC)], str(store), bp.STREAMS, fast=True)
    from carledger.config import load_config
    now = time.time()
    log = tmp / "city.log"
    bp.child(bpo.RECORD, "1900", str(log), str(now - 1960))
    consent = f"{{ granted = {bpo.iso(now - 86400)}, expires = {bpo.iso(now + 300 * 86400)} }}"
    policy = bpo.POLICY.format(consent=consent)
    if kind == "edr":
        policy += f'\n[edr]\nkeys = {{ owner = "{"".join(f"{b:02x}" for b in range(32))}" }}\n'
    store.mkdir(parents=True)
    (tmp / "store.policy.toml").write_text(policy)
    (tmp / "store.agent.toml").write_text(f'''[agent]
store = "{store}"
vehicle = "BENCH00000000001"
policy = "store.policy.toml"
timezone = "Europe/Berlin"
[seal]
max_age = 1.0
[[bus]]
name = "car"
replay = "{log}"
speed = 0
dbc = ["{bpo.DBC}"]
''')
    return load_config(tmp / "store.agent.toml")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["pipeline", "policy", "edr"])
    parser.add_argument("--out", help="write the profile here (pstats format)")
    parser.add_argument("--normal-sync", action="store_true", help="experiment: synchronous=NORMAL (no fsync per commit)")
    args = parser.parse_args()
    if args.kind == "pipeline" and not bp.LOG.exists():
        print(f"reference data not available: {bp.LOG}", file=sys.stderr)
        return 2
    if args.normal_sync:
        import carledger.ledger.store as st
        durable = st._durable_wal

        def normal(conn, path):
            durable(conn, path)
            conn.execute("PRAGMA synchronous=NORMAL")
        st._durable_wal = normal
    from carledger.pipeline import Pipeline
    with tempfile.TemporaryDirectory(prefix="carledger-profile-") as tmp:
        cfg = config(args.kind, Path(tmp))
        profile = cProfile.Profile()
        t0, c0 = time.perf_counter(), time.process_time()
        pipeline = Pipeline(cfg)
        profile.enable()
        summary = pipeline.run()
        profile.disable()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"kind": args.kind, "frames": summary.frames, "records": summary.records, "blocks": summary.blocks,
                      "seconds": round(seconds, 3), "cpu_s": round(cpu, 3)}))
    if args.out:
        profile.dump_stats(args.out)
    pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
