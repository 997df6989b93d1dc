"""Profile a collector worker: in-process under cProfile, or a real `collect run` worker per thread under yappi.

    python bench/profile_worker.py [VEHICLES] [BLOCKS]   (defaults 200 10; blocks of 50 records)

Feeds the bench's pre-signed fleet in batches of the service's BATCH, under cProfile, and prints
blocks/s, the store's round trips per block and the 35 costliest calls (cumulative).

    python bench/profile_worker.py --yappi OUT -- collect run DIR --dsn ... --broker ...

Runs `carledger ARGS` (a worker, as bench_fleet starts it) under yappi with CPU time, every thread
(paho's network loop is each session's own thread, cProfile sees only the main one); at exit writes
OUT: per thread its CPU seconds and its 40 costliest functions (own time). bench_fleet.py --profile DIR
starts its workers this way.
"""
import sys
import time
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def yappi_main(out: str, argv: list[str]) -> int:
    import atexit
    import yappi

    yappi.set_clock_type("cpu")
    yappi.start(builtins=True)

    def dump() -> None:
        yappi.stop()
        with open(out, "w") as f:
            threads = sorted(yappi.get_thread_stats(), key=lambda t: -t.ttot)
            total = sum(t.ttot for t in threads)
            f.write(f"CPU seconds per thread (yappi, cpu clock), total {total:.2f}\n")
            for t in threads:
                f.write(f"  {t.name:<28} id {t.id:<3} {t.ttot:8.2f} s  {100 * t.ttot / max(total, 1e-9):5.1f} %\n")
            for t in threads:
                if t.ttot < 0.02 * total:
                    continue
                stats = yappi.get_func_stats(ctx_id=t.id)
                f.write(f"\n== thread {t.name} (id {t.id}): {t.ttot:.2f} s; functions by own time (tsub) ==\n")
                for s in sorted(stats, key=lambda s: -s.tsub)[:40]:
                    f.write(f"  {s.tsub:8.3f} own {s.ttot:8.3f} cum {s.ncall:>9} calls  {s.module.split('/')[-1]}:{s.lineno} {s.name}\n")
                f.write("\n-- same thread, by cumulative time --\n")
                for s in sorted(stats, key=lambda s: -s.ttot)[:40]:
                    f.write(f"  {s.ttot:8.3f} cum {s.tsub:8.3f} own {s.ncall:>9} calls  {s.module.split('/')[-1]}:{s.lineno} {s.name}\n")

    atexit.register(dump)
    from carledger.cli import main

    return main(argv)


def cprofile_main() -> None:
    import cProfile
    import pstats

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
            for v, p in keys.items():
                st.enroll(v, p.hex())
            st.close()
            c = Collector(Path(tmp) / "k", store=dsn)
            queue = [(topics.block(v, STREAM), m[s]) for s in range(B) for v, m in msgs.items()]
            pr = cProfile.Profile()
            t = time.perf_counter()
            rt0 = c.registry.round_trips
            pr.enable()
            for i in range(0, len(queue), BATCH):
                for tp, p in queue[i:i + BATCH]:
                    c.receive(tp, p)
                c.flush()
            pr.disable()
            dt = time.perf_counter() - t
            print(f"{len(queue)} blocks in {dt:.2f}s: {len(queue) / dt:.0f} blocks/s; round trips/block "
                  f"{(c.registry.round_trips - rt0) / len(queue):.3f}; accepted {c.stats.accepted}")
            c.close()
            pstats.Stats(pr).sort_stats("cumulative").print_stats(35)
        finally:
            cl.close()


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--yappi":
        args = sys.argv[3:]
        sys.exit(yappi_main(sys.argv[2], args[1:] if args[:1] == ["--"] else args))
    cprofile_main()
