"""Full-pipeline throughput and memory on the real RAV4 log, against a plain python-can + cantools loop.

    python bench/bench_pipeline.py [--frames 1000000] [--runs 3]

Builds a candump log of at least --frames frames by repeating the real 2017
RAV4 powertrain log (timestamps shifted so time keeps increasing), then, in
the same run, measures in separate child processes (so each has its own peak
RSS):

- baseline: python-can `LogReader` + cantools `decode_message` on every frame;
- pipeline: carledger's read, filter, decode, sample, seal, sign and store,
  recording a realistic set of 16 signals (motion, driver inputs, powertrain) in two streams.

It prints frames/s, peak RSS and the ratio pipeline/baseline, by wall time
and by process CPU (on a shared machine the wall time also measures the
disk: every sealed block is an fsync). Not a test:
nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAV4 = REPO.parent / "shared" / "data" / "logs" / "comma2k19_rav4_2017"
LOG = RAV4 / "comma2k19_rav4_2017_seg40_bus0.log"
DBC = RAV4 / "toyota_rav4_2017_pt_generated.dbc"

# What a fleet recorder would keep of this car: motion, driver inputs, powertrain.
STREAMS = {
    "chassis": [
        "WHEEL_SPEEDS.*", "SPEED.SPEED", "STEER_ANGLE_SENSOR.STEER_ANGLE", "KINEMATICS.YAW_RATE",
        "ACCELEROMETER.ACCEL_X", "BRAKE_MODULE.BRAKE_PRESSED", "BRAKE_MODULE.BRAKE_PRESSURE",
    ],
    "powertrain": [
        "ENGINE_RPM.RPM", "GAS_PEDAL.GAS_PEDAL", "GEAR_PACKET.GEAR", "PCM_CRUISE.CRUISE_STATE",
        "PCM_CRUISE_2.SET_SPEED", "UI_SETTING.ODOMETER",
    ],
}

BASELINE = """
import json, resource, sys, time
import can, cantools
path, dbc = sys.argv[1], sys.argv[2]
t0, c0 = time.perf_counter(), time.process_time()
db = cantools.database.load_file(dbc, strict=False)
frames = decoded = 0
for msg in can.LogReader(path):
    frames += 1
    try:
        db.decode_message(msg.arbitration_id, msg.data)
        decoded += 1
    except KeyError:
        pass
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"frames": frames, "decoded": decoded, "seconds": seconds, "cpu_s": cpu,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

PIPELINE = """
import json, resource, sys, time
from carledger.config import replay_config
from carledger.pipeline import Pipeline
path, dbc, store, streams = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
t0, c0 = time.perf_counter(), time.process_time()
pipeline = Pipeline(replay_config(path, [dbc], store, streams, fast=True))
summary = pipeline.run()
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"frames": summary.frames, "records": summary.records, "blocks": summary.blocks,
                  "seconds": seconds, "cpu_s": cpu, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build_log(target_frames: int, out: Path) -> int:
    """Repeat the RAV4 log until it has at least target_frames frames."""
    lines = LOG.read_text().splitlines()
    first = float(lines[0].split()[0][1:-1])
    last = float(lines[-1].split()[0][1:-1])
    span = last - first + 0.01
    repeats = -(-target_frames // len(lines))
    with out.open("w") as f:
        for r in range(repeats):
            offset = r * span
            for line in lines:
                stamp, rest = line.split(" ", 1)
                f.write(f"({float(stamp[1:-1]) + offset:.6f}) {rest}\n")
    return repeats * len(lines)


COMPILE = """
import compileall, os, sys
import can, cantools, carledger
for package in (can, cantools, carledger):
    compileall.compile_dir(os.path.dirname(package.__file__), quiet=2)
print("{}")
"""


def compiled() -> None:
    """Compile the packages the children import, as an installed package is (pip and Debian compile them).

    Otherwise a run with PYTHONDONTWRITEBYTECODE set, or from a fresh checkout, would time the compiler:
    about 0.15 s of carledger's run, and none of the baseline's when its libraries were installed compiled.
    """
    child(COMPILE)


def child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"bench child failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3, help="alternating runs of each; the best is reported")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if not LOG.exists():
        print(f"reference data not available: {LOG}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="carledger-bench-") as tmp:
        log = Path(tmp) / "rav4_repeated.log"
        frames = build_log(args.frames, log)
        print(f"log: {frames:,} frames ({log.stat().st_size / 1e6:.0f} MB), RAV4 x{frames // 53800}", file=sys.stderr)
        result = measure(log, DBC, PIPELINE, [json.dumps(STREAMS)], args.runs)
    if args.json:
        print(json.dumps(result))
    else:
        report(result, "read..store, 2 streams")
    return 0


def measure(log: Path, dbc: Path, pipeline_code: str, pipeline_args: list[str], runs: int,
            variant_args: list[str] | None = None) -> dict:
    """Alternate baseline and pipeline child processes on the same log; the best run of each.

    With `variant_args`, a third child per run (the pipeline with those arguments) joins the
    alternation, so that its cost against the pipeline is measured under the same load
    (`result["variant"]`): on a shared machine, runs minutes apart are not comparable.
    """
    frames = sum(1 for _ in log.open())
    compiled()
    kinds = {"baseline": (BASELINE, [str(log), str(dbc)]), "pipeline": (pipeline_code, pipeline_args)}
    if variant_args is not None:
        kinds["variant"] = (pipeline_code, variant_args)
    results: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for run in range(runs):
        for kind, (code, args) in kinds.items():
            if kind != "baseline":
                store = Path(tempfile.mkdtemp(prefix="run", dir=log.parent)) / "store"  # measure() may run more than once
                args = [str(log), str(dbc), str(store), *args]
            results[kind].append(child(code, *args))
        print(f"run {run + 1}: " + ", ".join(f"{kind} {r[-1]['seconds']:.2f} s" + (
            f" ({r[-1]['cpu_s']:.2f} s CPU)" if "cpu_s" in r[-1] else "") for kind, r in results.items()),
              file=sys.stderr)
    base = min(results["baseline"], key=lambda r: r["seconds"])

    def summary(kind: str) -> dict:
        best = min(results[kind], key=lambda r: r["seconds"])
        return {
            "frames": frames,
            "baseline_fps": frames / base["seconds"],
            "pipeline_fps": frames / best["seconds"],
            "ratio": base["seconds"] / best["seconds"],
            "baseline_rss_mb": max(r["rss_mb"] for r in results["baseline"]),
            "pipeline_rss_mb": max(r["rss_mb"] for r in results[kind]),
            "records": best["records"],
            **({"cpu_s": min(r["cpu_s"] for r in results[kind])} if "cpu_s" in best else {}),
            **({"cpu_ratio": min(r["cpu_s"] for r in results["baseline"]) / min(r["cpu_s"] for r in results[kind])}
               if "cpu_s" in best and "cpu_s" in base else {}),
            "blocks": best["blocks"],
        }

    result = summary("pipeline")
    if variant_args is not None:
        result["variant"] = summary("variant")
    return result


def report(result: dict, what: str) -> None:
    print(f"baseline (LogReader + decode_message): {result['baseline_fps']:>10,.0f} frames/s, "
          f"peak RSS {result['baseline_rss_mb']:.0f} MB")
    print(f"pipeline ({what}): {result['pipeline_fps']:>10,.0f} frames/s, "
          f"peak RSS {result['pipeline_rss_mb']:.0f} MB, {result['records']:,} records, {result['blocks']} blocks")
    print(f"ratio pipeline/baseline: {result['ratio']:.2f}"
          + (f" (by process CPU, best of each: {result['cpu_ratio']:.2f}; the wall time also waits for the"
             f" store's fsyncs, the CPU time does not)" if "cpu_ratio" in result else ""))


if __name__ == "__main__":
    sys.exit(main())
