"""carledger-sim: drive a simulated car onto a CAN bus, record it, replay logs."""

from __future__ import annotations

import argparse
import math
import sys

from carledger.cli._args import add_logging_options, configure_logging, seconds
from carledger.sources.replay import MAX_PAUSE
from carledger.times import parse_time

EPILOG = """\
examples:
  carledger-sim scenarios
  carledger-sim run --interface socketcan --channel vcan0 --scenario city --seed 1
  carledger-sim run --interface virtual --channel test --scenario highway --duration 60 --speed 10
  carledger-sim run --channel vcan0 --scenario city --drop-ecu ABS@20:30 --flood 40:45
  carledger-sim record --scenario harsh_brake --seed 2 --duration 45 -o drive.log
  carledger-sim record --scenario crash --seed 1 -o crash.log
  carledger-sim replay drive.log --interface socketcan --channel vcan0 --fast

in-process, without a bus at all (python-can plug-in):
  can.Bus(interface="carledger-sim", channel="city", seed=1, speed=10.0)
"""


def _scenario_name(value: str) -> str:
    from .scenarios import SCENARIOS

    if value not in SCENARIOS:
        raise argparse.ArgumentTypeError(f"unknown scenario {value!r} (choose from {', '.join(SCENARIOS)})")
    return value


def _positive(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a positive number: {value!r}")
    return v


def _speed(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if v < 0 or math.isnan(v):
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 = as fast as possible): {value!r}")
    return v


def _int(value: str) -> int:
    try:
        return int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None


def _start_time(value: str) -> float:
    if value == "now":
        import time

        return time.time()
    try:
        return parse_time(value)  # POSIX seconds or ISO 8601, from 1970 to the year 9999 (not nan, inf, 1e300)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (or 'now')") from None


def _window(text: str, what: str) -> tuple[float, float]:
    start, _, end = text.partition(":")
    try:
        a = float(start) if start else 0.0
        b = float(end) if end else math.inf
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad time window for {what}: {text!r} (use START:END seconds)") from None
    if a < 0 or b <= a:
        raise argparse.ArgumentTypeError(f"bad time window for {what}: {text!r}")
    return a, b


def _drop_ecu(value: str):
    from .ecus import SilentEcu

    name, _, window = value.partition("@")
    if not name:
        raise argparse.ArgumentTypeError("--drop-ecu needs an ECU name, e.g. ABS or ABS@10:20")
    a, b = _window(window, "--drop-ecu") if window else (0.0, math.inf)
    return SilentEcu(name, a, b)


def _malformed(value: str):
    from .ecus import MalformedFrame

    name, sep, rest = value.partition("@")
    at, _, dlc = rest.partition(":")
    try:
        if not (name and sep):
            raise ValueError
        t = float(at)
        d = int(dlc) if dlc else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"use MESSAGE@SECONDS[:DLC], e.g. ABS_SPEED@5:3, not {value!r}") from None
    if t < 0 or (d is not None and not 0 <= d <= 8):
        raise argparse.ArgumentTypeError(f"bad --malformed value {value!r} (time >= 0, DLC 0..8)")
    return MalformedFrame(name, t, d)


def _flood(value: str):
    from .ecus import UnknownIdFlood

    parts = value.split(":")
    if len(parts) > 3:
        raise argparse.ArgumentTypeError(f"use START:END[:PERIOD_MS], not {value!r}")
    a, b = _window(":".join(parts[:2]), "--flood")
    period = 1.0
    if len(parts) == 3:
        try:
            period = float(parts[2])
        except ValueError:
            period = -1.0
        if not period > 0:
            raise argparse.ArgumentTypeError(f"bad flood period in {value!r}")
    return UnknownIdFlood(a, b, period / 1000.0)


def _add_drive_options(p: argparse.ArgumentParser) -> None:
    from .scenarios import SCENARIOS

    p.add_argument(
        "--scenario", type=_scenario_name, default="city",
        help=f"{', '.join(SCENARIOS)} (default city; `carledger-sim scenarios` says what each is)",
    )
    p.add_argument("--seed", type=_int, default=0, help="random seed; same seed, same drive (default 0)")
    p.add_argument("--duration", type=_positive, help="seconds to drive (default: the scenario's)")
    p.add_argument("--dbc", help="DBC to encode (default: the shipped carledger_demo.dbc)")
    p.add_argument(
        "--drop-ecu", metavar="ECU[@START:END]", type=_drop_ecu, action="append", default=[],
        help="fault: the ECU (ECM, ABS, TCM, BCM, GPS, ACU, EPS) sends nothing, the whole drive or a window",
    )
    p.add_argument(
        "--malformed", metavar="MESSAGE@T[:DLC]", type=_malformed, action="append", default=[],
        help="fault: one extra frame of MESSAGE at T seconds with a wrong DLC (default: 3 bytes short)",
    )
    p.add_argument(
        "--flood", metavar="START:END[:PERIOD_MS]", type=_flood, action="append", default=[],
        help="fault: frames with unknown identifiers (0x600-0x6FF), one per PERIOD_MS (default 1 ms)",
    )


def _add_bus_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interface", default="socketcan", help="python-can interface (default socketcan)")
    p.add_argument("--channel", default="vcan0", help="python-can channel (default vcan0)")
    p.add_argument("--bitrate", type=_int, help="bitrate, for interfaces that need one")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carledger-sim",
        description="A simulated car for carledger: ECUs broadcasting a DBC's frames from one drive model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_logging_options(parser, "carledger-sim")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sub.add_parser("scenarios", help="list the scenarios")

    p = sub.add_parser("run", help="drive onto a CAN bus in (warped) real time", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_bus_options(p)
    _add_drive_options(p)
    p.add_argument("--speed", type=_speed, default=1.0, help="time-warp factor, 0 = as fast as possible (default 1)")

    p = sub.add_parser("record", help="write a drive to a log file, as fast as possible", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_drive_options(p)
    p.add_argument("-o", "--output", required=True, help="log file; format by suffix (.log candump, .asc, .blf, .trc, .csv)")
    p.add_argument("--start-time", type=_start_time, default="now",
                   help="timestamp of the drive's start: POSIX seconds, ISO 8601 or 'now' (default now: a policy's "
                   "consents, judged at each sample's time, then cover the recording)")
    p.add_argument("--log-channel", default="can0", help="channel name written in the log (default can0)")
    p.add_argument("--drives", type=_int, default=1,
                   help="this many drives (seeds SEED, SEED+1, ...), each its own ignition cycle (default 1)")
    p.add_argument("--parked", type=_positive, default=600.0,
                   help="with --drives: seconds parked, ignition off, between drives (default 600)")
    p.add_argument("--awake", type=seconds, default=5.0,
                   help="with --drives: seconds the body module keeps sending IgnitionState OFF after each drive "
                   "before the bus sleeps (default 5; >= --parked keeps the bus awake)")

    p = sub.add_parser("replay", help="replay a recorded log onto a CAN bus", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", help="log file (.log candump, .asc, .blf, .trc, .csv, ...)")
    _add_bus_options(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fast", action="store_true", help="as fast as possible")
    g.add_argument("--speed", type=_speed, default=1.0, help="time-warp factor (default 1 = recorded pace)")
    p.add_argument("--max-pause", type=seconds, default=MAX_PAUSE, metavar="SECONDS",
                   help=f"a pause in the log longer than this (two drives in one file, a damaged time far ahead) "
                        f"takes this long, as `carledger run --replay` does (default {MAX_PAUSE:g})")

    for name, text in (("obd", "an OBD-II ECU answering J1979 requests from the drive, on a CAN bus"),
                       ("elm327", "an ELM327 adapter on a pseudo-terminal, with the OBD-II ECU behind it"),
                       ("ev", "an EV's battery management system answering UDS DIDs (0x7E4 -> 0x7EC), and a J1939 BAM")):
        p = sub.add_parser(name, help=text, description=text)
        _add_bus_options(p)
        if name == "elm327":
            p.set_defaults(interface="virtual", channel="carledger-sim-elm327")
        _add_drive_options(p)
        _add_obd_options(p)
        if name == "ev":
            p.add_argument("--bam-period", type=seconds, default=1.0, metavar="SECONDS",
                           help="send the DM1 by J1939 BAM every SECONDS (default 1; 0: never)")
    return parser


def _add_obd_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--speed", type=_positive, default=1.0, help="time-warp factor of the drive (default 1)")
    p.add_argument("--dtc", action="append", default=[], metavar="CODE", help="a stored DTC such as P0301 (repeatable)")
    p.add_argument("--mode", choices=("normal", "slow", "pending", "silent"), default="normal",
                   help="answer at once, after --delay, with 7F xx 78 first, or not at all")
    p.add_argument("--delay", type=_positive, default=0.2, help="seconds for slow and pending answers (default 0.2)")
    p.add_argument("--extended", action="store_true", help="29-bit identifiers (0x18DB33F1 / 0x18DAF110)")


def _faults(args) -> list:
    return [*args.drop_ecu, *args.malformed, *args.flood]


def _bus_errors() -> tuple[type[BaseException], ...]:
    """What python-can raises for a bad interface, channel or platform: a usage error here, not a traceback.

    NotImplementedError is BusABC's default for an operation a plug-in lacks
    (a receive-only interface asked to send); python-can's own "not on this
    platform" error is a CanError.
    """
    import can

    return (OSError, ValueError, ImportError, can.CanError, NotImplementedError)


def _open_bus(args):
    import can

    if args.interface == "carledger-sim":
        raise ValueError("carledger-sim is the simulated car itself; send onto a real or virtual bus instead")
    kwargs = {}
    if args.bitrate:
        kwargs["bitrate"] = args.bitrate
    try:
        return can.Bus(interface=args.interface, channel=args.channel, **kwargs)
    except _bus_errors() as exc:
        raise OSError(f"cannot open {args.interface} bus {args.channel!r}: {exc}") from None


def _cmd_scenarios(args) -> int:
    from .scenarios import SCENARIOS

    width = max(len(n) for n in SCENARIOS)
    for s in SCENARIOS.values():
        print(f"{s.name:<{width}}  {s.default_duration:5.0f} s  {s.description}")
    return 0


def _with_progress(car, desc: str):
    """The drive's frames, moving a bar by simulated seconds (carledger's tqdm bar: nothing off a terminal)."""
    from carledger.cli._display import progress_bar

    bar = progress_bar(desc, "s", round(car.duration))
    try:
        for msg in car.frames():
            second = int(msg.timestamp - car.start_time)
            if second > bar.n:
                bar.update(second - bar.n)
            yield msg
    finally:
        bar.close()


def _cmd_run(args) -> int:
    from .car import SimulatedCar
    from .pacing import send_paced

    car = SimulatedCar(args.scenario, seed=args.seed, dbc=args.dbc, duration=args.duration, faults=_faults(args))
    bus = _open_bus(args)
    try:
        n = send_paced(_with_progress(car, "driving"), bus, args.speed, None, t0=car.start_time)
    finally:
        bus.shutdown()
    print(f"sent {n} frames ({car.duration:g} s of {car.scenario.name}, seed {car.seed}) to {args.interface}:{args.channel}",
          file=sys.stderr)
    return 0


def _cmd_record(args) -> int:
    import can

    from .car import SimulatedCar

    if args.drives != 1:
        return _record_cycles(args)

    car = SimulatedCar(
        args.scenario, seed=args.seed, dbc=args.dbc, duration=args.duration,
        start_time=args.start_time, channel=args.log_channel, faults=_faults(args),
    )
    n = 0
    with can.Logger(args.output) as writer:
        for msg in _with_progress(car, "recording"):
            writer.on_message_received(msg)
            n += 1
    print(f"wrote {n} frames ({car.duration:g} s of {car.scenario.name}, seed {car.seed}) to {args.output}",
          file=sys.stderr)
    return 0


def _record_cycles(args) -> int:
    """`record --drives N`: N drives parked between them (cycles.py); faults apply to single drives only."""
    import can

    from .cycles import ignition_cycles
    from .scenarios import get_scenario

    if args.drives < 1 or args.awake < 0 or _faults(args):
        print("carledger-sim record: error: --drives needs N >= 1, --awake >= 0 and no fault options", file=sys.stderr)
        return 2
    duration = args.duration or get_scenario(args.scenario).default_duration
    n = 0
    with can.Logger(args.output) as writer:
        for msg in ignition_cycles(args.scenario, [duration] * args.drives, seed=args.seed, start=args.start_time,
                                   parked_s=args.parked, awake_s=args.awake, dbc=args.dbc, channel=args.log_channel):
            writer.on_message_received(msg)
            n += 1
    print(f"wrote {n} frames ({args.drives} drives of {duration:g} s of {args.scenario}, parked {args.parked:g} s "
          f"between them) to {args.output}", file=sys.stderr)
    return 0


def _cmd_replay(args) -> int:
    from .replay import read_log, replay

    next(iter(read_log(args.log)), None)  # fail early on a missing or unreadable file
    bus = _open_bus(args)
    try:
        def on_pause(wall: float, t: float) -> None:
            print(f"{args.log}: a pause of {wall:.0f} s before the frame at {t:.6f} takes {args.max_pause:g} s",
                  file=sys.stderr)

        n = replay(args.log, bus, realtime_factor=0.0 if args.fast else args.speed, max_pause=args.max_pause,
                   on_pause=on_pause)
    finally:
        bus.shutdown()
    print(f"replayed {n} frames from {args.log} to {args.interface}:{args.channel}", file=sys.stderr)
    return 0


def _cmd_obd(args) -> int:
    import threading

    from .car import SimulatedCar
    from .elm327 import Elm327Emulator
    from .ev import BamBroadcaster, EvResponder
    from .obd_responder import DriveClock, ObdResponder

    car = SimulatedCar(args.scenario, seed=args.seed, dbc=args.dbc, duration=args.duration, faults=_faults(args))
    car.history()
    ev = args.command == "ev"
    buses = [_open_bus(args) for _ in range(2 if args.command == "elm327" or ev and args.bam_period > 0 else 1)]
    ident = (0x18DAF1E4 if ev else 0x18DAF110) if args.extended else (0x7EC if ev else 0x7E8)
    clock = DriveClock(car, speed=args.speed)
    ecu = EvResponder if ev else ObdResponder
    responder = ecu(buses[0], clock, response_id=ident, extended=args.extended, mode=args.mode, delay=args.delay)
    elm = bam = None
    try:
        for code in args.dtc:
            responder.inject_dtc(code)
        responder.start()
        if args.command == "elm327":
            elm = Elm327Emulator(buses[1], voltage=lambda: clock().battery_voltage)
            elm.start()
            print(f"ELM327 on {elm.port} (python-OBD: obd.OBD({elm.port!r}))", flush=True)
        if ev and args.bam_period > 0:
            bam = BamBroadcaster(buses[1], period=args.bam_period).start()
        print(f"{'EV BMS' if ev else 'OBD-II ECU'} 0x{ident:X} on {args.interface}:{args.channel}, {car.duration:g} s of {car.scenario.name}",
              file=sys.stderr, flush=True)
        threading.Event().wait(car.duration / args.speed)
    finally:
        for thread in (elm, bam):
            if thread is not None:
                thread.stop()
        responder.stop()
        for bus in buses:
            bus.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(parser, args)
    import cantools

    commands = {"scenarios": _cmd_scenarios, "run": _cmd_run, "record": _cmd_record, "replay": _cmd_replay,
                "obd": _cmd_obd, "elm327": _cmd_obd, "ev": _cmd_obd}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        return 130
    except (cantools.database.Error, *_bus_errors()) as exc:
        print(f"carledger-sim: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
