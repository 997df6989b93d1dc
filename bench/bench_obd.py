"""Passive OBD-II decoding throughput on the real CSS Electronics polling log, against a baseline.

    .venv/bin/python bench/bench_obd.py [--repeat N]

Baseline, measured in the same run: cantools decoding every 0x7E8 frame of the
log with CSS Electronics' OBD DBC (nested multiplexing on service and PID).
Measured: `PassiveDecoder.feed` on every frame of the log (it skips what is
not an OBD answer itself). Prints frames/s of both, their ratio and the
samples made. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOG = REPO.parent / "shared" / "data" / "logs" / "css_obd2_gnss"


def best_of(runs: int, fn) -> tuple[float, int]:
    best, result = float("inf"), 0
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, best taken (default 3)")
    args = parser.parse_args()
    if not LOG.exists():
        print(f"reference data not available: {LOG}", file=sys.stderr)
        return 2
    import cantools

    from carledger.obd import PassiveDecoder
    from carledger.sources.candump import read_candump_file

    frames = list(read_candump_file(str(LOG / "obd2_gnss_3BA199E2_session164.log")))
    answers = [f for f in frames if f[1] == 0x7E8]
    message = cantools.database.load_file(str(LOG / "OBD-v4.4.dbc"), strict=False).get_message_by_frame_id(0x7E8)

    def baseline() -> int:
        decode = message.decode
        return sum(len(decode(data)) for _, _, data in answers)

    def passive() -> int:
        feed = PassiveDecoder().feed
        return sum(len(feed(t, key, data)) for t, key, data in frames)

    base_s, base_signals = best_of(args.repeat, baseline)
    ours_s, samples = best_of(args.repeat, passive)
    print(f"log: {len(frames)} frames, {len(answers)} OBD answers")
    print(f"baseline  cantools + OBD DBC, answers only: {len(answers) / base_s:12,.0f} answers/s ({base_signals} values)")
    print(f"passive   PassiveDecoder.feed, every frame: {len(frames) / ours_s:12,.0f} frames/s "
          f"({len(answers) / ours_s:,.0f} answers/s, {samples} samples)")
    print(f"ratio (answers/s, passive / baseline): {base_s / ours_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
