"""Instructions, not seconds: the fast-replay benches' work counted by valgrind, far steadier than time.

    python bench/bench_instructions.py [--frames 150000] [--against CHECKOUT] [--json]

On a shared or virtual machine the same replay takes 20-50 % more or less
time from one minute to the next (docs/performance.md), so the timed
benches need many alternated runs to resolve a change of a few per cent,
and sometimes cannot. The number of instructions a replay executes hardly
depends on the machine's other work: counted here by valgrind's cachegrind
(`--cache-sim=no`), with `PYTHONHASHSEED=0` and every module compiled
beforehand, the same code counts the same to within 0.3 % on an idle
machine, and with two busy loops on both cores (the agent's work on the
wall clock, such as its looks for the owner's requests every 0.2 s, is the
rest). Run it on an otherwise idle machine all the same: during the test
suite (its brokers, databases and disk writes), `[edr]`'s share read 5.5 %
where idle runs read 6.8 %.

Each workload runs in a child process under valgrind twice: on the log's
first `--frames` frames, and on its first 1,000; the difference, over the
difference in frames, is the instructions per frame of the work itself,
start-up (imports, opening the store, loading the DBC) apart. Workloads:

- bench_pipeline's: python-can `LogReader` + cantools `decode_message` (the
  baseline), and carledger recording its 16 signals, on the RAV4 log;
- bench_policy's: the same baseline, carledger under the realistic policy,
  and the same policy with `[edr]` (crash capture readiness), on the
  simulated city drive.

Prints instructions per frame, carledger's ratio against the baseline on
the same log, and what `[edr]` adds to the policy alone. `--against
CHECKOUT` counts carledger's workloads again with another checkout's code
(a worktree: `git worktree add ../before HEAD~1`), run by this checkout's
interpreter and libraries, and prints the change: a before/after that one
run settles.

Instructions are not time: waiting for the disk (the store's fsyncs), the
kernel's work in system calls and stalls on memory are not counted, and an
instruction of C code in OpenSSL is not one of the interpreter's. The
timed benches say how long; this says how much work, and whether a change
made less of it. Not a test: nothing here passes or fails. Needs valgrind
(Debian: `apt-get install valgrind`); a 150,000-frame workload takes 20-60 s
under it, two at a time.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pipeline as bp  # noqa: E402  (bench scripts are run as files)
import bench_policy as bpo  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHORT = 1_000  # frames of the start-up run
_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


class Workload:
    """One child process's code and arguments, on a log; `store` when it writes a ledger."""

    def __init__(self, name: str, code: str, log: Path, args: list[str], *, store: bool, agent: bool):
        self.name, self.code, self.log, self.args, self.store, self.agent = name, code, log, args, store, agent


def count(workload: Workload, log: Path, code: Path, folder: Path) -> int:
    """Instructions of one run of the workload on `log` with the carledger in `code` (start-up included)."""
    args = [str(log), *workload.args]
    if workload.store:
        store = Path(tempfile.mkdtemp(prefix="store", dir=folder)) / "store"
        args = [str(log), workload.args[0], str(store), *workload.args[1:]]
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(code)}
    done = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         sys.executable, "-c", workload.code, *args],
        capture_output=True, text=True, cwd=folder, env=env, check=False,
    )
    found = _REFS.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"bench step {workload.name!r} failed:\n{done.stderr[-3000:]}")
    return int(found.group(1).replace(",", ""))


def head(log: Path, frames: int, out: Path) -> int:
    """The first `frames` lines of a candump log into `out`; how many there were."""
    with log.open() as src, out.open("w") as dst:
        lines = list(islice(src, frames))
        dst.writelines(lines)
    return len(lines)


def code_of(checkout: Path, folder: Path) -> Path:
    """A folder whose `carledger` is the checkout's package, its modules compiled, for PYTHONPATH.

    Every checkout, this one included, runs the same way: this interpreter and its libraries, the same
    sys.path, the same working folder. (Started from a .venv of its own, or from another folder, the
    same code was counted 1.5 % apart.) Compiled, so that no run counts the compiler
    (PYTHONDONTWRITEBYTECODE may be set).
    """
    path = folder / f"code-{len(list(folder.glob('code-*')))}"
    path.mkdir()
    (path / "carledger").symlink_to(checkout / "agent")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(checkout / "agent")], check=True,
                   stdout=subprocess.DEVNULL)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=150_000, help="frames of each log counted")
    parser.add_argument("--against", type=Path, metavar="CHECKOUT",
                        help="also count carledger's workloads with another checkout's agent/ (a git worktree)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind not found: it counts the instructions (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    if not bp.LOG.exists():
        print(f"reference data not available: {bp.LOG}", file=sys.stderr)
        return 2
    checkouts = [REPO] + ([args.against.resolve()] if args.against else [])
    for checkout in checkouts:
        if not (checkout / "agent" / "pipeline.py").exists():
            print(f"{checkout}: not a carledger checkout (no agent/pipeline.py)", file=sys.stderr)
            return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="carledger-bench-") as tmp:
        folder = Path(tmp)
        code = {checkout: code_of(checkout, folder) for checkout in checkouts}
        rav4 = folder / "rav4.log"
        bp.build_log(args.frames, rav4)
        city = folder / "city.log"
        now = time.time()
        seconds = args.frames / 535 + 5  # the drive's frames per second, and some to spare
        bp.child(bpo.RECORD, str(seconds), str(city), str(now - seconds - 60))
        logs = {}
        for log in (rav4, city):
            full, short = log.with_suffix(".head.log"), log.with_suffix(".short.log")
            logs[full] = (short, head(log, args.frames, full), head(log, SHORT, short))
        rav4, city = rav4.with_suffix(".head.log"), city.with_suffix(".head.log")
        policy = bpo.POLICY.format(consent=f"{{ granted = {bpo.iso(now - 86400)}, expires = {bpo.iso(now + 300 * 86400)} }}")
        owner = "".join(f"{b:02x}" for b in range(32))  # any X25519 public key: nothing is captured
        workloads = [
            Workload("baseline, RAV4", bp.BASELINE, rav4, [str(bp.DBC)], store=False, agent=False),
            Workload("carledger, RAV4, 16 signals", bp.PIPELINE, rav4, [str(bp.DBC), json.dumps(bp.STREAMS)],
                     store=True, agent=True),
            Workload("baseline, city drive", bp.BASELINE, city, [str(bpo.DBC)], store=False, agent=False),
            Workload("carledger, city drive, policy", bpo.PIPELINE, city, [str(bpo.DBC), policy], store=True, agent=True),
            Workload("carledger, city drive, policy + [edr]", bpo.PIPELINE, city,
                     [str(bpo.DBC), policy + f'\n[edr]\nkeys = {{ owner = "{owner}" }}\n'], store=True, agent=True),
        ]
        # Per frame of the work: (the full run - the start-up run) / the difference in their frames.
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            runs = {}
            for checkout in checkouts:
                for w in workloads:
                    if w.agent or checkout == REPO:
                        short, frames, short_frames = logs[w.log]
                        runs[(w.name, checkout)] = (pool.submit(count, w, w.log, code[checkout], folder),
                                                    pool.submit(count, w, short, code[checkout], folder),
                                                    frames - short_frames)
            results = {key: (full.result() - start.result()) / n for key, (full, start, n) in runs.items()}
    result = {
        "frames": args.frames, "seconds": round(time.monotonic() - started),
        "this": {w.name: round(results[(w.name, REPO)]) for w in workloads},
    }
    if args.against:
        result["against"] = {w.name: round(results[(w.name, checkouts[1])]) for w in workloads if w.agent}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"instructions per frame, start-up apart (valgrind cachegrind, the first {args.frames:,} frames of each log,"
          f" {result['seconds']} s)")
    this = result["this"]
    for w in workloads:
        n = this[w.name]
        base = this["baseline, RAV4" if "RAV4" in w.name else "baseline, city drive"]
        note = f"  {base / n:.2f}x fewer than the baseline" if w.agent else ""
        if w.agent and args.against:
            other = result["against"][w.name]
            note += f"; {args.against.name}: {other:,} ({100 * (n / other - 1):+.1f} % here)"
        print(f"  {w.name:<40} {n:>9,}{note}")
    edr, plain = this["carledger, city drive, policy + [edr]"], this["carledger, city drive, policy"]
    print(f"crash capture readiness adds {100 * (edr / plain - 1):.1f} % to the policy's instructions per frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
