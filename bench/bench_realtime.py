"""Real time: the agent fed at the car's pace, against a python-can Notifier + cantools on the same feed.

    python bench/bench_realtime.py [--seconds 30] [--interval 0.05[,0.1,0.2]] [--skip-four] [--floor]
    python bench/bench_realtime.py --memory

`--memory` prints instead what each part of the agent costs in RSS: the
interpreter, each library and carledger's own modules as `carledger run`
imports them, the pipeline built and its bus open; what the configuration
adds ([mqtt], OBD polling); and the peak RSS of `carledger run --replay`
of the RAV4 log and of an MF4 file (CSS Electronics' CANedge). Every receiver runs with the service unit's `Environment=`
(systemd/carledger.service: MALLOC_ARENA_MAX), as the agent does in the car.

The other benches replay a file as fast as it reads. In a car frames come at
the bus's pace, a few at a time, and what costs is waking up for them. Here a
feeder process sends the real 2017 RAV4 log at its recorded rate (897
frames/s) to a stand-in for the car's bus on loopback (no vcan here; the
SocketCAN tier of the tests runs inside user-mode-linux, too slow to time).
Each frame is a UDP datagram with the kernel's receive timestamp. `--bus`
picks the stand-in:

- socketcan (the default): the car's path. Each datagram is a 16-byte
  `struct can_frame`, the bus's filters are applied in the kernel, and the
  agent opens it as its SocketCAN bus and reads its socket with its own
  reader (`SocketReader`); the baseline reads it with python-can's own
  `SocketcanBus.recv` (bench/socketcan_standin.py says what it keeps and
  what it does not);
- udp_multicast: python-can's `udp_multicast` bus (msgpack), read by the
  agent like any python-can bus that is not SocketCAN (paced, software
  filter, receive buffer sized).

For --seconds of feed, measured from inside each receiving process
(`getrusage`, /proc/self/statm):

- start-up: CPU seconds and RSS until every bus is open, before the feed;
- CPU per frame during the feed (the process's user + system time over the
  frames the feeder sent), voluntary context switches per second (wake-ups),
  peak RSS (ru_maxrss) and steady RSS (median of samples every 2 s);
- frames dropped: sent by the feeder (of the identifiers the receiver's
  filter takes) minus read. CPU per frame is per frame on the bus, read or
  not: on the socketcan stand-in the kernel keeps from the agent the frames
  no stream takes, as in the car.

Receivers, one after the other on the same feed:

- baseline: python-can `Notifier` + cantools `decode_message` on every frame;
- with `--floor`, the floor: the bus opened and read by the agent's own
  reader on its wake-up grid, frames counted and dropped, nothing else: what
  any agent reading this bus pays per frame at the car's pace on this machine
  (its RSS is all of python-can's imports, not the agent's);
- carledger recording the 16 signals of bench_pipeline.py (a fleet
  recorder's choice), and recording every signal of the DBC;
- 4 x 4,500 frames/s: four buses, each the RAV4 log at 5x its rate (4,485
  frames/s, a full 500 kbit/s bus), agent (16 signals per bus) and baseline:
  CPU as a share of one core, and drops (which must be zero).

After each single-bus agent run, the same agent configuration replays the
log as fast as it reads (`Pipeline.run` in one process, start-up apart): the
fast-replay cost of the same work, measured in the same run, which the real
time cost is compared with. The agent's CPU is also split by thread
(schedstat), with each thread's wake-ups.

`--interval 0.05,0.1,0.2` runs the single-bus agents (and the floor) at each
wake-up interval on the same feed, against one baseline: what a longer
interval saves, which docs/edr.md weighs against the crash capture's later
seal, in one run.

`--against CHECKOUT` runs the agent of another checkout (a worktree of the
code before a change: its agent/, with this interpreter) right after this
one's on each feed, and `--repeat N` alternates the whole sequence N times:
compare before and after within one run, on a machine whose other work moves
the figures.

Prints each receiver's figures and carledger's CPU per frame as a ratio of
the baseline's. Not a test: nothing here passes or fails, and the machine's
other work moves the figures (say which machine and when, with them).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import DBC, LOG, STREAMS  # noqa: E402  (bench scripts are run as files)

REPO = Path(__file__).resolve().parents[1]
BUSES = ("socketcan", "udp_multicast")  # the stand-ins for the car's bus (--bus)
GROUP = "239.74.163.{}"  # udp_multicast groups on loopback, one per bus, each on its own port
PORT = 43200
RSS_SAMPLE = 2.0  # seconds between steady-state RSS samples (one wake-up each)

# Shared by both receivers: resource use of this process, RSS sampled now and then.
MEASURE = """
import json, os, resource, statistics, sys, threading, time
PAGE = os.sysconf("SC_PAGE_SIZE")
def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu": r.ru_utime + r.ru_stime, "user": r.ru_utime, "vcsw": r.ru_nvcsw, "ivcsw": r.ru_nivcsw,
            "peak_mb": r.ru_maxrss * 1024 / 1e6, "wall": time.monotonic()}
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 1e6
samples = []
sampling = threading.Event()
def sample():
    while not sampling.wait(%(rss_sample)r):
        samples.append(rss_mb())
def feed_window(ready_rss):
    print(json.dumps({"ready": True}), flush=True)
    start = usage()
    threading.Thread(target=sample, daemon=True).start()
    sys.stdin.readline()  # the feed is over (and drained): blocks without waking
    end = usage()
    sampling.set()
    return {"startup_cpu": start["cpu"], "startup_rss_mb": ready_rss,
            "cpu": end["cpu"] - start["cpu"], "user": end["user"] - start["user"],
            "seconds": end["wall"] - start["wall"],
            "vcsw": end["vcsw"] - start["vcsw"], "ivcsw": end["ivcsw"] - start["ivcsw"],
            "peak_rss_mb": end["peak_mb"], "steady_rss_mb": statistics.median(samples) if samples else rss_mb()}
""" % {"rss_sample": RSS_SAMPLE}

AGENT = MEASURE + """
def threads_cpu():
    # CPU seconds and voluntary context switches of each thread (schedstat: nanoseconds on a CPU)
    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
            with open(f"/proc/self/task/{tid}/status") as f:
                vcsw = int(f.read().split("voluntary_ctxt_switches:")[1].split()[0])
        except (OSError, IndexError):
            continue
        name = names.get(int(tid), "thread")
        name = "source" if name.startswith("source-") else "pipeline" if name == "agent" else name
        if name in ("pipeline", "source", "MainThread"):
            cpu, switches = out.get(name, (0.0, 0))
            out[name] = (cpu + ns / 1e9, switches + vcsw)
    return out
from carledger.config import load_config
from carledger.pipeline import Pipeline
from carledger.sources.candump import read_candump_file
config, log = sys.argv[1], sys.argv[2]
pipeline = Pipeline(load_config(config))
runner = threading.Thread(target=pipeline.run, daemon=True, name="agent")
runner.start()
while not all(s.opened.is_set() for s in pipeline.sources):
    time.sleep(0.01)
before = threads_cpu()
window = feed_window(rss_mb())
after = threads_cpu()
read = [s.frames_read for s in pipeline.sources]
pipeline.stop()
runner.join(60)
keys = {key for _, key, _ in read_candump_file(log)}
window.update(threads={k: [v[0] - before.get(k, (0.0, 0))[0], v[1] - before.get(k, (0.0, 0))[1]]
                       for k, v in after.items()})
window.update(read=read, rounds=pipeline.summary.rounds, batches=pipeline.summary.batches,
              records=pipeline.summary.records, blocks=pipeline.summary.blocks,
              wanted=[sorted(k for k in keys if b.frame_filter.matches(k)) for b in pipeline.buses])
print(json.dumps(window))
"""

BASELINE = MEASURE + """
import can, cantools
dbc, channels = sys.argv[1], json.loads(sys.argv[2])
db = cantools.database.load_file(dbc, strict=False)
class Decode(can.Listener):
    def __init__(self):
        self.frames = 0
    def on_message_received(self, msg):
        self.frames += 1
        try:
            db.decode_message(msg.arbitration_id, msg.data)
        except KeyError:
            pass
buses = [can.Bus(**bus) for bus in channels]
listeners = [Decode() for _ in buses]
notifiers = [can.Notifier(bus, [listener]) for bus, listener in zip(buses, listeners)]
window = feed_window(rss_mb())
read = [listener.frames for listener in listeners]
for notifier in notifiers:
    notifier.stop()
for bus in buses:
    bus.shutdown()
window.update(read=read, wanted=None)
print(json.dumps(window))
"""

# The floor: only what any agent on this bus must do at the car's pace. The bus opened as the agent opens it and read
# with the agent's own reader (carledger.sources.udpmulticast), on the agent's wake-up grid (`Pacer`), the frames
# counted and dropped: no decoding, no policy, no store. argv: channels (json), wake-up interval.
FLOOR = MEASURE + """
import can
from carledger.sources.base import Pacer
from carledger.sources.socketcan import SocketReader
from carledger.sources.udpmulticast import reader_for
channels, interval = json.loads(sys.argv[1]), float(sys.argv[2])
buses = [can.Bus(**bus) for bus in channels]
readers = [SocketReader(bus.socket, 1 << 22) if bus_["interface"] == "socketcan" else reader_for(bus, 1 << 22)
           for bus, bus_ in zip(buses, channels)]
assert all(readers), "python-can's udp_multicast bus is not one the agent's reader reads"
read = [0] * len(readers)
stop = threading.Event()
def loop():
    pacer = Pacer(interval)
    while not pacer.wait(stop):
        for i, reader in enumerate(readers):
            read[i] += len(reader.read(0, 1 << 20, lambda *error: None))
reading = threading.Thread(target=loop, daemon=True)
reading.start()
window = feed_window(rss_mb())
stop.set()
reading.join()
for bus in buses:
    bus.shutdown()
window.update(read=read, wanted=None)
print(json.dumps(window))
"""

# RSS after each import stage of the agent, in the order `carledger run` takes them, then the pipeline built and
# its bus open; each stage's cost is the difference from the one before. argv: agent.toml, stage names to skip.
STAGES = """
import json, os, resource, sys, threading, time
PAGE = os.sysconf("SC_PAGE_SIZE")
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 1e6
out = [("Python itself (interpreter, site)", rss_mb())]
def stage(name, *modules):
    for module in modules:
        __import__(module)
    out.append((name, rss_mb()))
stage("stdlib python-can needs (typing_extensions, logging, json, ...)", "typing_extensions",
      "json", "configparser", "platform", "concurrent.futures.thread", "logging", "threading", "socket")
stage("python-can, the parts a bus needs (carledger._imports)", "carledger._imports", "can.interface", "can.bus")
stage("cantools (database, DBC format)", "cantools.database", "cantools.j1939")
stage("cbor2, PyNaCl, zstandard", "cbor2", "nacl.signing", "nacl.public", "zstandard")
stage("sqlite3", "sqlite3")
stage("stdlib the agent needs (hashlib with OpenSSL's libcrypto, zoneinfo, tomllib ...)", "hashlib", "hmac",
      "secrets", "zoneinfo", "tomllib", "difflib", "gzip", "dataclasses", "datetime", "queue", "select")
stage("carledger's own modules (carledger.pipeline)", "carledger.pipeline", "carledger.cli.run")
from carledger.config import load_config
from carledger.pipeline import Pipeline
pipeline = Pipeline(load_config(sys.argv[1]))
out.append(("pipeline built (DBC, decoders, policy, store open)", rss_mb()))
runner = threading.Thread(target=pipeline.run, daemon=True)
runner.start()
while not all(s.opened.is_set() for s in pipeline.sources):
    time.sleep(0.01)
out.append(("buses open (the udp_multicast driver, msgpack)", rss_mb()))
pipeline.stop()
runner.join(60)
extra = []
for name, code in (("paho-mqtt, ssl (only with [mqtt])", "import carledger.sync.syncer"),
                   ("can-isotp (only with OBD-II/UDS polling)", "import carledger.obd.poller"),
                   ("package metadata (only for a python-can interface plug-in)", "import importlib.metadata"),
                   ("the rest of python-can (asyncio, log readers: not loaded)", "import can; can.Notifier"),
                   ("asammdf, numpy, pandas (only to replay .mf4 through asammdf)", "import asammdf")):
    before = rss_mb()
    try:
        exec(code)
    except ImportError:
        continue
    extra.append((name, rss_mb() - before))
print(json.dumps({"stages": out, "extra": extra, "modules": len(sys.modules)}))
"""

# Runs `carledger run --replay LOG --dbc DBC --fast --stream all=*` and reports the command's peak RSS.
REPLAY = """
import json, os, subprocess, sys, tempfile
log, dbc = sys.argv[1], sys.argv[2]
with tempfile.TemporaryDirectory() as store:
    command = [sys.executable, "-m", "carledger", "run", "--replay", log, "--dbc", dbc, "--store", store + "/ledger",
               "--fast", "--stream", "all=*", "--json"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    summary = json.loads(out) if status == 0 else {}
print(json.dumps({"status": status, "peak_rss_mb": usage.ru_maxrss * 1024 / 1e6, "summary": summary}))
"""

# The same work as fast as the log reads: the agent's configuration with the bus replaced by the log (speed 0),
# CPU of `Pipeline.run` (start-up apart) over the log's frames. argv: agent.toml, log.
FAST = """
import json, re, resource, sys, tempfile
from pathlib import Path
from carledger.config import load_config
from carledger.pipeline import Pipeline
from carledger.sources.candump import read_candump_file
config, log = Path(sys.argv[1]), sys.argv[2]
text = re.sub(r'interface = .*\\nchannel = .*\\noptions = .*\\n', f'replay = "{log}"\\nspeed = 0\\n', config.read_text())
replayed = config.with_name("fast.toml")
replayed.write_text(text)
pipeline = Pipeline(load_config(replayed))
start = resource.getrusage(resource.RUSAGE_SELF)
summary = pipeline.run()
end = resource.getrusage(resource.RUSAGE_SELF)
frames = sum(1 for _ in read_candump_file(log))
cpu = end.ru_utime + end.ru_stime - start.ru_utime - start.ru_stime
print(json.dumps({"cpu": cpu, "frames": frames, "us_per_frame": cpu / frames * 1e6, "blocks": summary.blocks}))
"""

# Sends the log onto each bus at `speed` x its recorded rate, bus i starting 15 s further into it, for `seconds`.
# A SocketCAN stand-in's frames go as `struct can_frame` datagrams (bench/socketcan_standin.py), sent to every
# receiver: its filters are in its kernel.
FEEDER = """
import json, sys, time
import can
from carledger.sources.candump import read_candump_file
from carledger.sources.frame import EFF_FLAG
log, channels, speed, seconds = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
sys.path.insert(0, sys.argv[5])
from socketcan_standin import SenderBus
frames = list(read_candump_file(log))
t0, span = frames[0][0], frames[-1][0] - frames[0][0] + 0.01
messages = [(t - t0, can.Message(arbitration_id=key & 0x1FFFFFFF, is_extended_id=bool(key & EFF_FLAG), data=data),
             key) for t, key, data in frames]
feed = []
for index in range(len(channels)):
    shift, lap = index * 15.0, 0
    while True:
        start = lap * span - shift
        lap += 1
        batch = [((start + offset) / speed, index, msg, key) for offset, msg, key in messages
                 if 0 <= (start + offset) / speed < seconds]
        feed += batch
        if (start + span) / speed >= seconds:
            break
feed.sort(key=lambda item: item[0])
buses = [SenderBus(bus["channel"]) if bus["interface"] == "socketcan" else can.Bus(**bus) for bus in channels]
sent = [dict() for _ in buses]
time.sleep(0.5)
begin = time.monotonic()
for due, index, msg, key in feed:
    delay = begin + due - time.monotonic()
    if delay > 0.001:  # bursts, as a bus delivers them to a socket
        time.sleep(delay)
    buses[index].send(msg)
    sent[index][key] = sent[index].get(key, 0) + 1
late = time.monotonic() - begin - seconds
for bus in buses:
    bus.shutdown()
print(json.dumps({"sent": [{str(k): n for k, n in s.items()} for s in sent], "late": late}))
"""


MF4 = REPO.parent / "shared" / "data" / "logs" / "css_obd2_gnss" / "00000164_00000001-60FE3F04.MF4"
UNIT = REPO / "systemd" / "carledger.service"


def unit_environment() -> dict[str, str]:
    """This environment plus the service unit's `Environment=` (MALLOC_ARENA_MAX): the agent as the car runs it."""
    env = dict(os.environ)
    for text in UNIT.read_text().splitlines():
        if text.startswith("Environment="):
            for assignment in shlex.split(text.partition("=")[2]):
                key, _, value = assignment.partition("=")
                env[key] = value
    return env


def python(code: str, *args: str, checkout: Path = REPO) -> dict:
    """Runs `code` in a fresh interpreter as the unit would; its last line of output, as JSON."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=checkout,
                          env=environment(checkout), check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench step failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory(folder: Path) -> None:
    """Prints what each part of the agent costs in RSS, and the peak RSS of replaying logs."""
    config = write_agent(folder / "memory", 1, STREAMS, 0.05)
    result = python(STAGES, str(config))
    print(f"{'part':<84} {'RSS after':>9} {'costs':>7}")
    before = 0.0
    for name, rss in result["stages"]:
        print(f"{name:<84} {rss:7.1f} MB {rss - before:+5.1f} MB")
        before = rss
    for name, cost in result["extra"]:
        print(f"{'  + ' + name:<84} {'':>9}    {cost:+5.1f} MB")
    print(f"({result['modules']} modules loaded)")
    for log, dbc in ((LOG, DBC), (MF4, MF4.parent / "OBD-v4.4.dbc")):
        if log.exists():
            r = python(REPLAY, str(log), str(dbc))
            print(f"carledger run --replay {log.name} --fast, every signal: peak RSS {r['peak_rss_mb']:.1f} MB"
                  f"{'' if r['status'] == 0 else ' (FAILED)'}")


def channels(buses: int, kind: str) -> list[dict]:
    """python-can's `can.Bus` arguments of each stand-in bus (the feeder's, the receivers')."""
    if kind == "socketcan":
        return [{"interface": "socketcan", "channel": f"standin:{PORT + i}"} for i in range(buses)]
    return [{"interface": "udp_multicast", "channel": GROUP.format(2 + i), "port": PORT + i} for i in range(buses)]


def standin(kind: str, agent: bool) -> str:
    """Code that makes the SocketCAN stand-in python-can's "socketcan" in a receiver; nothing for udp_multicast.

    The agent imports python-can by its parts (carledger._imports) before the
    stand-in imports any of it, as it would open a real SocketCAN bus.
    """
    if kind != "socketcan":
        return ""
    first = "import carledger._imports\n" if agent else ""
    return (first + f"import sys\nsys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
            "import socketcan_standin\nsocketcan_standin.install()\n")


def write_agent(folder: Path, buses: int, streams: dict[str, list[str]], interval: float, kind: str) -> Path:
    """An agent configuration on `buses` stand-in buses and a policy of local streams (on every bus)."""
    from carledger.config import local_streams_policy

    folder.mkdir(parents=True)
    (folder / "policy.toml").write_text(local_streams_policy(streams))
    lines = ["[agent]", 'store = "ledger"', 'vehicle = "bench-car"', 'policy = "policy.toml"',
             f"wakeup_interval = {interval}", "health_interval = 3600"]
    for i, bus in enumerate(channels(buses, kind)):
        options = {k: v for k, v in bus.items() if k not in ("interface", "channel")}
        lines += ["", "[[bus]]", f'name = "can{i}"', f'interface = "{bus["interface"]}"', f'channel = "{bus["channel"]}"',
                  "options = { " + ", ".join(f"{k} = {v}" for k, v in options.items()) + " }", f'dbc = ["{DBC}"]']
    path = folder / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


_CODE: dict[Path, Path] = {}  # another checkout -> a folder whose `carledger` is its package


def environment(checkout: Path) -> dict[str, str]:
    """The unit's environment; for another checkout, PYTHONPATH to its package (bench_instructions' `code_of`).

    Every checkout runs with this interpreter and its libraries: a worktree's
    .venv linked to this one's would import this checkout's package (an
    editable install), and measure it twice.
    """
    env = unit_environment()
    if checkout != REPO:
        if checkout not in _CODE:
            from bench_instructions import code_of

            _CODE[checkout] = code_of(checkout, Path(tempfile.mkdtemp(prefix="carledger-bench-code-")))
        env["PYTHONPATH"] = str(_CODE[checkout])
    return env


def receive(receiver: list[str], buses: int, speed: float, seconds: float, kind: str, checkout: Path = REPO) -> dict:
    """Start a receiver on `buses` stand-ins of `kind`, feed it for `seconds`, let it drain, and collect what it
    measured of itself."""
    proc = subprocess.Popen([sys.executable, "-c", *receiver], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=checkout, env=environment(checkout))
    assert proc.stdin is not None and proc.stdout is not None
    ready = proc.stdout.readline()
    if not ready:
        proc.wait()
        raise SystemExit(f"bench receiver failed to start ({receiver[0][-200:]!r})")
    fed = subprocess.run([sys.executable, "-c", FEEDER, str(LOG), json.dumps(channels(buses, kind)), str(speed),
                          str(seconds), str(Path(__file__).resolve().parent)],
                         capture_output=True, text=True, check=False, cwd=REPO)
    if fed.returncode != 0:
        proc.kill()
        raise SystemExit(f"bench feeder failed:\n{fed.stderr}")
    time.sleep(1.0)  # let the receiver take what is in flight (the agent: at most two wake-ups)
    out, err = proc.communicate("stop\n", timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"bench receiver failed:\n{err}")
    result = json.loads(out.strip().splitlines()[-1])
    feed = json.loads(fed.stdout)
    sent = [{int(k): n for k, n in per_bus.items()} for per_bus in feed["sent"]]
    if result["wanted"] is None:  # the baseline takes every frame
        expected = [sum(per_bus.values()) for per_bus in sent]
    else:
        expected = [sum(per_bus.get(k, 0) for k in wanted) for per_bus, wanted in zip(sent, result["wanted"])]
    result["sent"] = sum(sum(per_bus.values()) for per_bus in sent)
    result["expected"] = sum(expected)
    result["dropped"] = sum(expected) - sum(result["read"])
    result["feeder_late"] = feed["late"]
    result["us_per_frame"] = result["cpu"] / result["sent"] * 1e6  # per frame on the bus, whether read or not
    result["core_share"] = result["cpu"] / result["seconds"]
    result["wakeups_per_s"] = result["vcsw"] / result["seconds"]
    return result


def line(name: str, r: dict, base: dict | None) -> str:
    ratio = f", {base['us_per_frame'] / r['us_per_frame']:.2f}x less CPU than the baseline" if base else ""
    extra = f", {r['rounds'] / r['seconds']:.0f} pipeline rounds/s" if "rounds" in r else ""
    if r.get("threads"):
        extra += " (" + ", ".join(f"{name} {cpu / r['sent'] * 1e6:.1f} us/frame, {switches / r['seconds']:.0f}/s"
                                  for name, (cpu, switches) in sorted(r["threads"].items(), key=lambda kv: -kv[1][0])
                                  if cpu / r["sent"] * 1e6 >= 0.05) + ")"
    if r.get("fast"):
        extra += (f"; fast replay of the log {r['fast']['us_per_frame']:.1f} us per frame, real time "
                  f"{r['us_per_frame'] / r['fast']['us_per_frame']:.2f}x that")
    kernel = (r["cpu"] - r["user"]) / r["sent"] * 1e6
    return (f"{name}: {r['us_per_frame']:.1f} us CPU per frame (of which {kernel:.1f} in the kernel; "
            f"{r['core_share'] * 100:.1f} % of a core), "
            f"{r['wakeups_per_s']:.0f} wake-ups/s{extra}; start-up {r['startup_cpu']:.2f} s CPU, "
            f"{r['startup_rss_mb']:.0f} MB; RSS peak {r['peak_rss_mb']:.0f} MB, steady {r['steady_rss_mb']:.0f} MB; "
            f"{r['sent']:,} frames sent, {sum(r['read']):,} read, {r['dropped']:,} dropped{ratio}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of feed per receiver")
    parser.add_argument("--interval", type=_intervals, default=[0.05], metavar="SECONDS[,SECONDS...]",
                        help="the agent's [agent] wakeup_interval (default 0.05); several, comma-separated, run the "
                             "single-bus agents (and the floor) at each, on the same feed: the interval's trade-off "
                             "(docs/edr.md) in one run")
    parser.add_argument("--bus", choices=BUSES, default=BUSES[0],
                        help="the stand-in for the car's bus: socketcan (default: the car's path, struct can_frame "
                             "datagrams filtered in the kernel, bench/socketcan_standin.py) or python-can's "
                             "udp_multicast (a python-can bus that is not SocketCAN: msgpack, software filter)")
    parser.add_argument("--skip-four", action="store_true", help="leave out the 4 x 4,500 frames/s runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--memory", action="store_true", help="only the RSS of each part of the agent, and of replays")
    parser.add_argument("--against", action="append", default=[], metavar="CHECKOUT",
                        help="also run the agent of another checkout (its agent/, this interpreter; e.g. a git "
                             "worktree of the code before a change) right after this one's, on the same feed: "
                             "before and after in one run")
    parser.add_argument("--repeat", type=int, default=1, help="run everything this many times, alternating")
    parser.add_argument("--floor", action="store_true",
                        help="also run the floor: the bus read by the agent's own reader on its wake-up grid, and "
                             "nothing else (what any agent on this bus pays per frame at the car's pace)")
    args = parser.parse_args()
    if not LOG.exists():
        print(f"reference data not available: {LOG}", file=sys.stderr)
        return 2
    try:
        if args.bus == "udp_multicast" or args.memory:
            import msgpack  # noqa: F401  (python-can's udp_multicast needs it)
    except ImportError:
        print("bench_realtime needs msgpack for python-can's udp_multicast bus: .venv/bin/pip install 'python-can[multicast]'",
              file=sys.stderr)
        return 2
    if args.memory:
        with tempfile.TemporaryDirectory(prefix="carledger-bench-") as tmp:
            memory(Path(tmp))
        return 0
    from carledger.decode import load_dbc

    every = sorted({f"{m.name}.*" for m in load_dbc(str(DBC)).database.messages})
    checkouts = [("", REPO)] + [(f" [{Path(d).name}]", Path(d).resolve()) for d in args.against]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="carledger-bench-") as tmp:
        first = args.interval[0]
        runs = [("baseline", None, 1, 1.0, first)]
        for interval in args.interval:  # the first without a label: the figures a single interval always gave
            at = f" @{interval * 1000:g} ms" if interval != first else ""
            if args.floor:
                runs.append((f"floor: reading the bus, nothing else{at}", "floor", 1, 1.0, interval))
            runs += [(f"carledger, 16 signals{at}", STREAMS, 1, 1.0, interval),
                     (f"carledger, every signal{at}", {"all": every}, 1, 1.0, interval)]
        if not args.skip_four:
            runs += [("baseline, 4 x 4,500 frames/s", None, 4, 5.0, first),
                     ("carledger, 4 x 4,500 frames/s", STREAMS, 4, 5.0, first)]
        number = 0
        for repeat in range(args.repeat):
            for name, streams, buses, speed, interval in runs:
                for label, checkout in checkouts if isinstance(streams, dict) else checkouts[:1]:
                    number += 1
                    key = name + label + (f" #{repeat + 1}" if args.repeat > 1 else "")
                    on = json.dumps(channels(buses, args.bus))
                    if streams is None:
                        receiver = [standin(args.bus, agent=False) + BASELINE, str(DBC), on]
                    elif streams == "floor":
                        receiver = [standin(args.bus, agent=True) + FLOOR, on, str(interval)]
                    else:
                        config = write_agent(Path(tmp) / f"run{number}", buses, streams, interval, args.bus)
                        receiver = [standin(args.bus, agent=True) + AGENT, str(config), str(LOG)]
                    results[key] = receive(receiver, buses, speed, args.seconds, args.bus, checkout)
                    if isinstance(streams, dict) and buses == 1:  # the same work in fast replay, right after
                        results[key]["fast"] = python(FAST, str(config), str(LOG), checkout=checkout)
                    print(line(key, results[key], None), file=sys.stderr)
    for name, r in results.items():
        base = _baseline_of(name, results)
        if name.startswith("carledger"):
            r["ratio_vs_baseline"] = base["us_per_frame"] / r["us_per_frame"]
    if args.json:
        print(json.dumps({"seconds": args.seconds, "bus": args.bus, "interval": args.interval[0], "intervals": args.interval,
                          "results": results}))
        return 0
    print(f"{args.seconds:g} s of feed per receiver on the {args.bus} stand-in, agent wake-up interval "
          f"{', '.join(f'{i * 1000:g}' for i in args.interval)} ms")
    for name, r in results.items():
        print(line(name, r, _baseline_of(name, results) if name.startswith("carledger") else None))
    return 0


def _intervals(text: str) -> list[float]:
    """`--interval`: one or more wake-up intervals in seconds, comma-separated, each as the agent accepts it."""
    from carledger.config import MAX_WAKEUP_INTERVAL as HIGHEST, MIN_WAKEUP_INTERVAL as LOWEST

    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(LOWEST <= v <= HIGHEST for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text[:80]!r}: seconds from {LOWEST:g} to {HIGHEST:g}, comma-separated, "
                                         "each once")
    return values


def _baseline_of(name: str, results: dict[str, dict]) -> dict:
    """The baseline run of the same repeat and feed as run `name`."""
    repeat = name[name.rindex(" #"):] if " #" in name else ""
    return results[("baseline, 4 x 4,500 frames/s" if "4 x" in name else "baseline") + repeat]


if __name__ == "__main__":
    sys.exit(main())
