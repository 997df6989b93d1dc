"""Sync throughput, bytes on the wire and memory, on the real RAV4 log, through a real mosquitto on loopback.

    python bench/bench_sync.py [--minutes 60]
    python bench/bench_sync.py --minutes 10 --max-queued 10     # a broker with a small queue per subscriber

1. Repeats the real 2017 RAV4 powertrain log to --minutes of driving and runs
   it through the pipeline (the same 16 signals in two streams as
   bench_pipeline.py), which leaves a store of sealed blocks: the backlog of a
   car that was offline that long.
2. Starts Debian's mosquitto on a free loopback port and the collector
   (`carledger collect run`, its own process), and drains the backlog with the
   agent's Syncer in a child process: blocks/s and samples/s until the
   collector has acked every block, as a multiple of real time (minutes of
   driving / drain time).
3. Bytes on the wire (PUBLISH packets of block payloads) per sample, against
   the same frames as candump text: every frame of the log, and only the
   frames of the messages the recorded signals come from.
4. Peak RSS of the sync process draining the whole backlog, against the sync
   process of an agent online (a writer appends the same blocks while it
   syncs, so its backlog stays small).
5. With --max-queued N, the broker keeps at most N messages queued for the
   collector (mosquitto's max_queued_messages, which drops the rest): the
   drain time, the blocks sent again and the ack timeouts, with the sync's
   default window (64) and ack timeout (30 s) unless --window/--ack-timeout
   say otherwise. Issue 11 measured 243 s and 883 blocks sent again for a
   drain of ~460 blocks per stream with N = 10 before the window adapted.

The store the pipeline leaves holds the streams as local ones (a replay on
the command line); the bench then puts a policy in force that sends both to
the recipient "bench" (consent over the log's 1970 times) and enrols the
collector's ack key, as an owner would: nothing else leaves.

Not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from bench_pipeline import DBC, LOG, PIPELINE, STREAMS, build_log, child  # noqa: E402

SYNC = """
import json, resource, sys, time
from carledger.ledger import Store
from carledger.sync import MqttConfig, Syncer
store, port, streams, wait_for = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
cfg = MqttConfig(host="127.0.0.1", port=port, client_id="bench-agent", status_interval=5.0, **json.loads(sys.argv[5]))
syncer = Syncer(store, "rav4", cfg)  # what the policy in force sends: the two streams
t0 = time.perf_counter()
syncer.start()
marks = Store.open_readonly(store)
def drained():  # every outbound block acked (the store's local streams, audit and health, never leave)
    return not set(marks.backlog()) & set(streams) and (wait_for == "-" or __import__("os").path.exists(wait_for))
while not drained():
    time.sleep(0.05)
seconds = time.perf_counter() - t0
syncer.stop()
s = syncer.stats
print(json.dumps({"seconds": seconds, "blocks": s.acked_blocks, "records": s.records, "published": s.published,
                  "resent": s.resent, "timeouts": s.timeouts,
                  "payload_bytes": s.payload_bytes, "wire_bytes": s.wire_bytes,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def candump_bytes(log: Path) -> tuple[int, int]:
    """(bytes of every frame as candump text, bytes of the frames of the messages the streams record from)."""
    import cantools

    db = cantools.database.load_file(str(DBC), strict=False)
    names = {p.split(".")[0] for patterns in STREAMS.values() for p in patterns}
    ids = {f"{db.get_message_by_name(n).frame_id:03X}" for n in names}
    total = recorded = 0
    with log.open("rb") as f:
        for line in f:
            total += len(line)
            parts = line.split(b" ", 2)
            if len(parts) == 3 and parts[2].split(b"#", 1)[0].decode() in ids:
                recorded += len(line)
    return total, recorded


def run_sync(store: Path, port: int, wait_for: str = "-", cfg: dict | None = None) -> dict:
    return child(SYNC, str(store), str(port), json.dumps(list(STREAMS)), wait_for, json.dumps(cfg or {}))


def send_to(store: Path, collector_dir: Path) -> None:
    """The owner's part: a policy that sends the bench's streams to "bench", and the collector's ack key enrolled."""
    from carledger.owner import OwnerState
    from carledger.policy import policy_from_text
    from carledger.sync import collector_key, enroll_collector

    lines = ["version = 100"]
    for name, signals in STREAMS.items():
        lines += ["[[stream]]", f'name = "{name}"', 'recipient = "bench"', 'purpose = "bench"',
                  f"signals = {json.dumps(signals)}",
                  "consent = { granted = 1970-01-01T00:00:00Z, expires = 1971-12-01T00:00:00Z }"]
    text = "\n".join(lines) + "\n"
    state = OwnerState.load(store)
    state.install_policy(policy_from_text("bench-policy", text, check_expiry=False), text.encode())
    enroll_collector(store, "bench", collector_key(collector_dir).verify_key)


def online(source: Path, target: Path, port: int, collector_dir: Path, blocks_per_s: float) -> dict:
    """The sync process of an agent online: a writer appends the source's blocks at a steady pace while it syncs."""
    from carledger.collect import Registry
    from carledger.ledger import Store, open_block

    done = target.with_suffix(".done")
    with Store.open_readonly(source) as src:
        rows = list(src.iter_blocks())  # the bench's own process, not the measured one
        key = src.verify_key
        blocks = [open_block(src.message(r), key) for r in rows]
    from carledger.ledger.keys import KEY_DIR

    (target / KEY_DIR).mkdir(parents=True, exist_ok=True)
    for name in ("vehicle.key", "vehicle.pub"):
        (target / KEY_DIR / name).write_bytes((source / KEY_DIR / name).read_bytes())
    (target / KEY_DIR / "vehicle.key").chmod(0o600)
    writer = Store.open(target, "rav4")
    writer.append(blocks[:2])
    registry = Registry(collector_dir)
    registry.enroll("rav4", bytes(key))
    registry.close()
    send_to(target, collector_dir)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(run_sync(target, port, str(done))))
    thread.start()
    for i in range(2, len(blocks), 2):
        writer.append(blocks[i:i + 2])
        time.sleep(2 / blocks_per_s)
    writer.close()
    done.touch()
    thread.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=60, help="minutes of driving offline (default 60)")
    parser.add_argument("--online-minutes", type=int, default=3, help="minutes of driving synced online (default 3)")
    parser.add_argument("--max-queued", type=int, default=100_000, metavar="N",
                        help="the broker's max_queued_messages (default 100000, sized for the collector; try 10)")
    parser.add_argument("--window", type=int, help="the sync's largest window per stream (default 64)")
    parser.add_argument("--ack-timeout", type=float, help="the sync's longest ack timeout, seconds (default 30)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if not LOG.exists():
        print(f"reference data not available: {LOG}", file=sys.stderr)
        return 2
    from broker import Broker

    from carledger.ledger import Store

    with tempfile.TemporaryDirectory(prefix="carledger-bench-sync-") as tmp:
        tmp = Path(tmp)
        span = float(LOG.read_text().splitlines()[-1].split()[0][1:-1]) - float(LOG.read_text().split()[0][1:-1]) + 0.01
        log = tmp / "drive.log"
        frames = build_log(args.minutes * 60 * 53_800 // int(span), log)
        repeats = -(-frames // 53_800)
        seconds_driven = repeats * span
        print(f"log: {frames:,} frames, {seconds_driven / 60:.1f} minutes of driving", file=sys.stderr)
        store = tmp / "agent"
        made = child(PIPELINE, str(log), str(DBC), str(store), json.dumps(STREAMS))
        with Store.open_readonly(store) as s:
            backlog = {name: v for name, v in s.backlog().items() if name in STREAMS}
            blocks, backlog_bytes = sum(n for n, _ in backlog.values()), sum(b for _, b in backlog.values())
        print(f"backlog: {blocks} blocks, {made['records']:,} samples, {backlog_bytes / 1e6:.1f} MB", file=sys.stderr)
        all_text, recorded_text = candump_bytes(log)

        broker = Broker(tmp / "broker", max_queued=args.max_queued).start()  # 100000: sized for the collector
        cfg = {k: v for k, v in (("window", args.window), ("ack_timeout", args.ack_timeout)) if v is not None}
        collectors = []
        try:
            def collector(path: Path, client_id: str) -> subprocess.Popen:
                proc = subprocess.Popen([sys.executable, "-m", "carledger", "collect", "run", str(path), "--host", "127.0.0.1",
                                         "--port", str(broker.port), "--client-id", client_id],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                collectors.append(proc)
                return proc

            from carledger.collect import Registry

            registry = Registry(tmp / "collected")
            with Store.open_readonly(store) as s:
                registry.enroll("rav4", bytes(s.verify_key))
            registry.close()
            send_to(store, tmp / "collected")
            collector(tmp / "collected", "bench-collector")
            time.sleep(1.0)
            drain = run_sync(store, broker.port, cfg=cfg)
            print(f"drain: {drain['blocks']} blocks in {drain['seconds']:.1f} s", file=sys.stderr)

            collectors.pop().terminate()  # collectors of one group share one directory: the next one has its own
            collector(tmp / "collected-online", "bench-collector-online")
            small = tmp / "agent-small"
            small_log = tmp / "small.log"
            build_log(args.online_minutes * 60 * 53_800 // int(span), small_log)
            child(PIPELINE, str(small_log), str(DBC), str(small), json.dumps(STREAMS))
            live = online(small, tmp / "agent-online", broker.port, tmp / "collected-online", blocks_per_s=40)
        finally:
            for proc in collectors:
                proc.terminate()
                proc.wait(20)
            broker.stop()

    samples = made["records"]
    result = {
        "minutes_driven": seconds_driven / 60,
        "blocks": drain["blocks"],
        "samples": samples,
        "max_queued": args.max_queued,
        "drain_seconds": drain["seconds"],
        "resent": drain["resent"],
        "ack_timeouts": drain["timeouts"],
        "blocks_per_s": drain["blocks"] / drain["seconds"],
        "samples_per_s": samples / drain["seconds"],
        "real_time_multiple": seconds_driven / drain["seconds"],
        "wire_bytes": drain["wire_bytes"],
        "wire_bytes_per_sample": drain["wire_bytes"] / samples,
        "candump_bytes_all_frames": all_text,
        "candump_bytes_recorded_messages": recorded_text,
        "wire_vs_candump_all": drain["wire_bytes"] / all_text,
        "wire_vs_candump_recorded": drain["wire_bytes"] / recorded_text,
        "backlog_mb": backlog_bytes / 1e6,
        "rss_mb_draining_backlog": drain["rss_mb"],
        "rss_mb_online": live["rss_mb"],
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"drain to mosquitto on loopback, acked by the collector: {result['blocks']} blocks, {samples:,} samples "
          f"in {result['drain_seconds']:.1f} s")
    print(f"  {result['blocks_per_s']:,.0f} blocks/s, {result['samples_per_s']:,.0f} samples/s, "
          f"{result['real_time_multiple']:,.0f}x real time")
    print(f"  broker max_queued_messages {args.max_queued}: {result['resent']} blocks sent again, "
          f"{result['ack_timeouts']} ack timeouts")
    print(f"bytes on the wire: {result['wire_bytes_per_sample']:.2f} per sample; "
          f"{100 * result['wire_vs_candump_recorded']:.1f}% of the recorded messages' frames as candump text, "
          f"{100 * result['wire_vs_candump_all']:.1f}% of all frames")
    print(f"peak RSS of the sync process: {result['rss_mb_draining_backlog']:.0f} MB draining a "
          f"{result['backlog_mb']:.0f} MB backlog, {result['rss_mb_online']:.0f} MB online")
    return 0


if __name__ == "__main__":
    sys.exit(main())
