"""Profile one Collector in-process (no broker) on PostgreSQL: where a worker's time goes per flush.

    python bench/profile_worker.py [VEHICLES] [BLOCKS]   (defaults 200 10; blocks of 50 records)

Feeds the bench's pre-signed fleet in batches of the service's BATCH, under cProfile, and prints
blocks/s, the store's round trips per block and the 35 costliest calls (cumulative).
"""
import cProfile, pstats, sys, time, tempfile
from pathlib import Path
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "bench")]
from bench_fleet import make_fleet, STREAM
from pg import PgCluster, pg_bin
from carledger.collect import Collector
from carledger.collect.pgstore import PgStore
from carledger.collect.service import BATCH
from carledger.sync import topics

K, B = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (200, 10)
keys, msgs = make_fleet(K, B, 50)
with tempfile.TemporaryDirectory() as tmp:
    cl = PgCluster(pg_bin()).start()
    try:
        dsn = cl.new_database()
        st = PgStore(dsn)
        for v, p in keys.items(): st.enroll(v, p.hex())
        st.close()
        c = Collector(Path(tmp) / "k", store=dsn)
        queue = [(topics.block(v, STREAM), m[s]) for s in range(B) for v, m in msgs.items()]
        pr = cProfile.Profile()
        t = time.perf_counter(); rt0 = c.registry.round_trips
        pr.enable()
        for i in range(0, len(queue), BATCH):
            for tp, p in queue[i:i + BATCH]: c.receive(tp, p)
            c.flush()
        pr.disable()
        dt = time.perf_counter() - t
        print(f"{len(queue)} blocks in {dt:.2f}s: {len(queue)/dt:.0f} blocks/s; round trips/block {(c.registry.round_trips-rt0)/len(queue):.3f}; accepted {c.stats.accepted}")
        c.close()
        pstats.Stats(pr).sort_stats("cumulative").print_stats(35)
    finally:
        cl.close()
