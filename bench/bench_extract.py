"""Frames/s of cantools' decode vs carledger's extractor on the real RAV4 log.

Not a test: run `python bench/bench_extract.py [log] [dbc]`. Both loops run in
this process on the same frames (already parsed into (t, key, data) tuples),
so the ratio is what matters, not the absolute numbers.

Scenarios:
  all    every signal of every frame whose ID is in the DBC
         (cantools: message.decode; ours: extractor of all signals)
  few    two signals each of four messages (a typical policy): frames of
         other IDs are dropped by a dict miss in both loops; cantools decodes
         the whole message and picks the two values.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cantools

from carledger.decode.extract import compile_message
from carledger.sources.candump import read_candump_file

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT.parent / "shared" / "data" / "logs" / "comma2k19_rav4_2017"
LOG = FOLDER / "comma2k19_rav4_2017_seg40_bus0.log"
DBC = FOLDER / "toyota_rav4_2017_pt_generated.dbc"

FEW = {
    "WHEEL_SPEEDS": ["WHEEL_SPEED_FL", "WHEEL_SPEED_RR"],
    "SPEED": ["SPEED", "ENCODER"],
    "STEER_ANGLE_SENSOR": ["STEER_ANGLE", "STEER_RATE"],
    "GEAR_PACKET": ["GEAR", "SPORT_ON"],
}


def read_candump(path: Path) -> list[tuple[float, int, bytes]]:
    return list(read_candump_file(str(path)))


def key_of(msg) -> int:
    return msg.frame_id | (0x80000000 if msg.is_extended_frame else 0)


def best_of(fn, frames, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(frames)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    log = Path(sys.argv[1]) if len(sys.argv) > 1 else LOG
    dbc = Path(sys.argv[2]) if len(sys.argv) > 2 else DBC
    db = cantools.database.load_file(str(dbc), strict=False)
    frames = read_candump(log)
    n = len(frames)

    # -- all signals --------------------------------------------------------
    by_key = {key_of(m): m for m in db.messages}
    ext_all = {key_of(m): compile_message(m, [s.name for s in m.signals]).extract for m in db.messages}

    def cantools_all(frames):
        get = by_key.get
        for _t, key, data in frames:
            msg = get(key)
            if msg is not None:
                msg.decode(data, decode_choices=False, scaling=True, allow_truncated=True)

    def ours_all(frames):
        get = ext_all.get
        for _t, key, data in frames:
            fn = get(key)
            if fn is not None:
                fn(data)

    # -- a few signals --------------------------------------------------------
    few_msgs = {key_of(db.get_message_by_name(m)): (db.get_message_by_name(m), s) for m, s in FEW.items()}
    ext_few = {k: compile_message(m, s).extract for k, (m, s) in few_msgs.items()}

    def cantools_few(frames):
        get = few_msgs.get
        for _t, key, data in frames:
            entry = get(key)
            if entry is not None:
                msg, names = entry
                d = msg.decode(data, decode_choices=False, scaling=True, allow_truncated=True)
                [d.get(name) for name in names]

    def ours_few(frames):
        get = ext_few.get
        for _t, key, data in frames:
            fn = get(key)
            if fn is not None:
                fn(data)

    decoded_all = sum(1 for _t, k, _d in frames if k in by_key)
    decoded_few = sum(1 for _t, k, _d in frames if k in few_msgs)
    print(f"{log.name}: {n} frames; {decoded_all} in the DBC, {decoded_few} of the 'few' messages")
    for label, base, ours, count in (
        ("all signals", cantools_all, ours_all, decoded_all),
        ("few signals", cantools_few, ours_few, decoded_few),
    ):
        tb = best_of(base, frames)
        to = best_of(ours, frames)
        print(
            f"{label:12s} cantools {n / tb:>10,.0f} frames/s ({tb / count * 1e6:5.2f} us/decode)"
            f" | extract {n / to:>10,.0f} frames/s ({to / count * 1e6:5.2f} us/decode)"
            f" | ratio {tb / to:5.1f}x"
        )


if __name__ == "__main__":
    main()
