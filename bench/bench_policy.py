"""The owner's policy at work: pipeline throughput with a realistic policy, against the same baseline.

    python bench/bench_policy.py [--seconds 1900] [--runs 3]

Records a long simulated city drive (about 535 frames/s, with GPS, so zones and
trips have work to do) as a candump log, then measures in the same run, in
separate child processes:

- baseline: python-can `LogReader` + cantools `decode_message` on every frame
  (bench_pipeline.py's baseline);
- pipeline: carledger under a realistic policy: 4 streams (an insurer's
  on-board metrics, a fleet stream with coarsened location, precision and
  window aggregates, a research stream with aggregates, the owner's local
  vault), 2 privacy zones (a circle and a polygon);
- pipeline + crash capture: the same policy with an `[edr]` section, so the
  pre-crash ring buffer fills its 100 ms ticks with 12 signals and the trigger
  sees every speed and acceleration sample (the drive has no crash: this is
  the cost of being ready for one). Its runs alternate with the other two, so
  the cost is measured under the same load.

Not a test: nothing here passes or fails. Prints frames/s, peak RSS, the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import child, measure, report  # noqa: E402  (bench scripts are run as files)

REPO = Path(__file__).resolve().parents[1]
DBC = REPO / "dbc" / "carledger_demo.dbc"

POLICY = """
version = 1

[[zone]]
name = "home"
lat = 48.1371
lon = 11.5754
radius_m = 300

[[zone]]
name = "work"
polygon = [[48.1400, 11.5800], [48.1420, 11.5830], [48.1395, 11.5860], [48.1380, 11.5820]]

[[stream]]
name = "insurer"
recipient = "Acme Insurance"
purpose = "pay-how-you-drive premium"
raw = false
consent = {consent}
[stream.metrics]
distance = true
harsh_braking = true
harsh_acceleration = true
night_driving = true
over_speed = {{ limit = 50.0 }}

[[stream]]
name = "fleet"
recipient = "Fleet Ops B.V."
purpose = "vehicle tracking and maintenance planning"
signals = ["Vehicle.Speed", "Vehicle.TraveledDistance", "Vehicle.Powertrain.CombustionEngine.ECT",
           "Vehicle.Powertrain.FuelSystem.RelativeLevel", "Vehicle.CurrentLocation.*"]
allow = ["location"]
min_interval = "10s"
precision = {{ "Vehicle.Speed" = 5, "Vehicle.Powertrain.CombustionEngine.ECT" = 1.0 }}
location = {{ decimals = 2 }}
consent = {consent}
[[stream.aggregate]]
signals = ["Vehicle.Acceleration.Longitudinal", "Vehicle.Acceleration.Lateral"]
window = "1m"
functions = ["min", "max", "mean", "count"]

[[stream]]
name = "research"
recipient = "TU Road Safety Lab"
purpose = "driver assistance research"
signals = ["Vehicle.Chassis.*", "Vehicle.Powertrain.CombustionEngine.Speed"]
min_interval = 0.1
precision = {{ "Vehicle.Chassis.SteeringWheel.Angle" = 1.0 }}
consent = {consent}
[[stream.aggregate]]
signals = ["Vehicle.Speed"]
window = 10
functions = ["mean", "max"]

[[stream]]
name = "vault"
local = true
purpose = "my own driving log"
signals = ["Vehicle.*"]
allow = ["location", "personal"]
min_interval = 1.0
"""

PIPELINE = """
import json, resource, sys, time
from pathlib import Path
from carledger.config import load_config
from carledger.pipeline import Pipeline
path, dbc, store, policy = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
store.mkdir(parents=True)
(store.parent / (store.name + ".policy.toml")).write_text(policy)
config = store.parent / (store.name + ".agent.toml")
config.write_text(f'''[agent]
store = "{store}"
vehicle = "BENCH00000000001"
policy = "{store.name}.policy.toml"
timezone = "Europe/Berlin"
[seal]
max_age = 1.0
[[bus]]
name = "car"
replay = "{path}"
speed = 0
dbc = ["{dbc}"]
''')
t0, c0 = time.perf_counter(), time.process_time()
summary = Pipeline(load_config(config)).run()
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"frames": summary.frames, "records": summary.records, "blocks": summary.blocks,
                  "streams": summary.streams, "seconds": seconds, "cpu_s": cpu,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# In a child process too: Linux keeps a process's peak RSS across fork and exec, so a parent
# that had generated the drive itself would inflate every child's measured peak.
RECORD = """
import json, sys
import can
from carledger_sim.car import SimulatedCar
seconds, out, start = float(sys.argv[1]), sys.argv[2], float(sys.argv[3])
frames = 0
with can.Logger(out) as logger:
    for msg in SimulatedCar("city", seed=7, duration=seconds, start_time=start).frames():
        logger.on_message_received(msg)
        frames += 1
print(json.dumps({"frames": frames}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1900.0, help="simulated drive (about 535 frames/s)")
    parser.add_argument("--runs", type=int, default=3, help="alternating runs of each; the best is reported")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    now = time.time()
    start = now - args.seconds - 60  # the drive is over; the consent covers it
    consent = f"{{ granted = {iso(now - 86400)}, expires = {iso(now + 300 * 86400)} }}"
    with tempfile.TemporaryDirectory(prefix="carledger-bench-") as tmp:
        log = Path(tmp) / "city.log"
        frames = child(RECORD, str(args.seconds), str(log), str(start))["frames"]
        print(f"log: {frames:,} frames ({log.stat().st_size / 1e6:.0f} MB), {args.seconds:.0f} s simulated city drive",
              file=sys.stderr)
        policy = POLICY.format(consent=consent)
        owner = "".join(f"{b:02x}" for b in range(32))  # any X25519 public key: nothing is captured
        result = measure(log, DBC, PIPELINE, [policy], args.runs,
                         [policy + f'\n[edr]\nkeys = {{ owner = "{owner}" }}\n'])  # alternated with the rest
        edr = result.pop("variant")
    if args.json:
        print(json.dumps({**result, "edr": edr}))
    else:
        report(result, "policy: 4 streams, 2 zones, metrics, aggregates")
        report(edr, "the same policy + crash capture")
        print(f"crash capture readiness costs {100 * (1 - edr['pipeline_fps'] / result['pipeline_fps']):.1f} % of throughput"
              f" ({100 * (edr['cpu_s'] / result['cpu_s'] - 1):.1f} % more process CPU: less sensitive to other work)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
