"""A simulated fleet against the collector's workers: PostgreSQL and SQLite, 1 to 3 workers, two brokers.

    python bench/bench_fleet.py [--vehicles 200] [--blocks 10] [--records 50,280] [--rate 0] [--workers 1,2,3]
                                [--half-rate] [--backends postgresql,sqlite]
    python bench/bench_fleet.py --duration 600 [--rate 200] [--vehicles 1000] [--workers 3]

K vehicles, each with its own Ed25519 key, publish pre-signed blocks of one
stream (--records samples each) to the broker `broker_for` assigns them (two
mosquitto on loopback), at --rate blocks/s in total (0: as fast as the
brokers take them). `carledger collect run` workers (own processes) on both
brokers store them in PostgreSQL (tests/pg.py's cluster, fsync off) or in one
shared collector directory (SQLite). Reported per run and per block size
(--records, a list: fleet blocks of tens of records, full blocks of a few
hundred): blocks and records stored and acked per second in total and per
worker, the workers' PostgreSQL round trips per block (they count them) and
transactions per block (pg_stat_database), the p50/p99 latency from publish
to the ack that covers the block, and the workers' peak RSS. --half-rate
runs each backend's largest worker count again at half the rate it reached,
for the latency there.

--duration S is the memory mode: the blocks are signed as they are sent
(fresh seqs, no end), at --rate, for S seconds, and the workers' RSS is
printed every S/10 seconds: flat means no growth with the blocks stored.

Not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import cbor2  # noqa: E402

from broker import Broker, require_mosquitto  # noqa: E402,F401
from carledger.collect.fleet import broker_for  # noqa: E402
from carledger.ledger import ZERO_DIGEST, encode_sample, seal_block  # noqa: E402
from carledger.ledger.keys import SigningKey  # noqa: E402
from carledger.sync import collector_key, topics  # noqa: E402
from carledger.sync.ack import open_ack  # noqa: E402
from carledger.sync.wire import BlockPacker  # noqa: E402
from conftest import wait_until  # noqa: E402
from pg import PgCluster, pg_bin  # noqa: E402

T0_US = 1_700_000_000_000_000
STREAM = "fleet"


def make_fleet(k: int, blocks: int, records: int) -> tuple[dict[str, bytes], dict[str, list[bytes]]]:
    """(vehicle -> raw public key, vehicle -> its packed block payloads in seq order), signed before the clock starts."""
    packer = BlockPacker(9)
    keys, messages = {}, {}
    for v in range(k):
        vid = f"car-{v:05d}"
        sk = SigningKey.generate()
        keys[vid] = bytes(sk.verify_key)
        prev, out = ZERO_DIGEST, []
        for b in range(blocks):
            t = T0_US + b * 10_000_000
            recs = [encode_sample(t + i * 1000, "Vehicle.Speed", float(i % 90)) for i in range(records)]
            blk = seal_block(vid=vid, stream=STREAM, seq=b, prev=prev, t0=t, t1=t + (records - 1) * 1000,
                             policy=bytes(32), records=recs, signing_key=sk)
            prev = blk.digest
            out.append(packer.pack(blk.message()))
        messages[vid] = out
    return keys, messages


class Acks:
    """Publish times per (vehicle, seq) until acked, and the latency of each block once an ack covers it.

    In the timed window an ack is only parsed (its seq, from the COSE payload); every ack is kept and its
    signature checked with `open_ack` after the window (`verify`), so the check, real as a car's, does not
    take the cores the workers are measured on.
    """

    def __init__(self, ack_key, vehicles):
        self.ack_key = ack_key
        self.sent: dict[str, dict[int, float]] = {v: {} for v in vehicles}
        self.next = {v: 0 for v in vehicles}
        self.latency: list[float] = []
        self.acked = 0
        self.last = 0.0
        self.lock = threading.Lock()
        self.received: list[tuple[str, int, bytes]] = []  # (vehicle, seq as parsed, payload): checked by verify()

    def publish(self, client: "RawClient", vid: str, seq: int, payload: bytes) -> None:
        packet = client.packet(topics.block(vid, STREAM), payload)
        with self.lock:
            self.sent[vid][seq] = time.monotonic()
        client.send([packet])

    def on_ack(self, topic: bytes, payload: bytes, now: float) -> None:
        parts = topic.split(b"/")
        if len(parts) != 5 or parts[4] != b"ack" or parts[3] != STREAM.encode():
            return
        vid = parts[2].decode()
        try:
            seq = cbor2.loads(cbor2.loads(payload).value[2])["seq"]
        except Exception:
            seq = -1
        with self.lock:
            self.received.append((vid, seq, payload))
            if vid not in self.next or type(seq) is not int:
                return
            sent = self.sent[vid]
            while self.next[vid] <= seq:
                self.latency.append(now - sent.pop(self.next[vid]))
                self.next[vid] += 1
                self.acked += 1
                self.last = now

    def verify(self) -> tuple[int, int]:
        """(acks whose signature, vehicle, stream and seq check, acks that do not): every ack received so far."""
        with self.lock:
            todo, self.received = self.received, []
        good = bad = 0
        for vid, seq, payload in todo:
            try:
                ok = open_ack(payload, self.ack_key, vid, STREAM).seq == seq
            except Exception:
                ok = False
            good, bad = (good + 1, bad) if ok else (good, bad + 1)
        return good, bad

    def percentiles(self) -> tuple[float, float]:
        """(p50, p99) in seconds, and forget the samples (the memory mode reports them per period)."""
        with self.lock:
            lat, self.latency = sorted(self.latency), []
        if not lat:
            return float("nan"), float("nan")
        return round(statistics.median(lat), 3), round(lat[max(0, int(len(lat) * 0.99) - 1)], 3)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: bytes) -> bytes:
    return len(s).to_bytes(2, "big") + s


def publish_packet(topic: bytes, packet_id: int, payload: bytes) -> bytes:
    """An MQTT 5 PUBLISH, QoS 1, no properties."""
    body = _str(topic) + packet_id.to_bytes(2, "big") + b"\x00" + payload
    return b"\x32" + _varint(len(body)) + body


class RawClient:
    """The generator's side of one broker, MQTT 5 over a plain socket, without paho.

    The fleet's PUBLISH packets (QoS 1, like a car's) are built before the clock
    starts and written in large chunks, within the broker's receive maximum; a
    reader thread takes the PUBACKs and the acks (PUBLISH, QoS 1, answered with
    PUBACKs sent together). paho's per-message Python was most of the
    generator's CPU, which shares the machine with what it measures.
    """

    def __init__(self, host: str, port: int, client_id: str, on_message: Callable[[bytes, bytes, float], None]):
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.on_message = on_message
        self.send_lock = threading.Lock()
        self.cond = threading.Condition()
        self.inflight = 0
        self.next_id = 0
        # CONNECT: clean start, keep alive 0 (none), receive maximum 65535 (property 0x21)
        props = b"\x21\xff\xff"
        var = _str(b"MQTT") + b"\x05\x02\x00\x00" + _varint(len(props)) + props
        body = var + _str(client_id.encode())
        self.sock.sendall(b"\x10" + _varint(len(body)) + body)
        self._buf = b""
        kind, data = self._read_packet()
        _n, i = self._read_varint(data, 1)
        if kind >> 4 != 2 or data[i + 1] != 0:
            raise RuntimeError(f"MQTT CONNACK refused: {data!r}")
        self.window = 65535
        plen, i = self._read_varint(data, i + 2)
        props, i = data[i:i + plen], 0
        while i < len(props):  # only receive maximum matters here; skip the rest by their known sizes
            pid = props[i]
            i += 1
            if pid == 0x21:
                self.window = int.from_bytes(props[i:i + 2], "big")
                i += 2
            elif pid in (0x24, 0x25, 0x28, 0x29, 0x2A):
                i += 1
            elif pid in (0x13, 0x22):
                i += 2
            elif pid in (0x11, 0x27):
                i += 4
            elif pid in (0x12, 0x1A, 0x1C, 0x1F, 0x15):
                n = int.from_bytes(props[i:i + 2], "big")
                i += 2 + n
            elif pid == 0x26:
                n = int.from_bytes(props[i:i + 2], "big")
                i += 2 + n
                n = int.from_bytes(props[i:i + 2], "big")
                i += 2 + n
            else:
                break
        self.window = max(1, min(self.window, 60000))
        self.reader = threading.Thread(target=self._read_loop, name="raw-mqtt", daemon=True)
        self.reader.start()

    def subscribe(self, topic_filter: str) -> None:
        body = b"\xff\xff" + b"\x00" + _str(topic_filter.encode()) + b"\x01"
        with self.send_lock:
            self.sock.sendall(b"\x82" + _varint(len(body)) + body)

    def packet(self, topic: str, payload: bytes) -> bytes:
        """The next PUBLISH of this connection, built ahead: packet ids in send order (1..65534, then again)."""
        self.next_id = self.next_id % 65534 + 1
        return publish_packet(topic.encode(), self.next_id, payload)

    def send(self, packets: list[bytes]) -> None:
        """Write PUBLISH packets, at most `window` unacknowledged at once."""
        i = 0
        while i < len(packets):
            with self.cond:
                while self.inflight >= self.window:
                    self.cond.wait()
                n = min(len(packets) - i, self.window - self.inflight)
                self.inflight += n
            with self.send_lock:
                self.sock.sendall(b"".join(packets[i:i + n]))
            i += n

    def close(self) -> None:
        try:
            with self.send_lock:
                self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        except OSError:
            pass
        self.sock.close()

    @staticmethod
    def _read_varint(data: bytes, i: int) -> tuple[int, int]:
        n, shift = 0, 0
        while True:
            b = data[i]
            i += 1
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n, i
            shift += 7

    def _read_packet(self) -> tuple[int, bytes]:
        while True:
            if len(self._buf) >= 2:
                try:
                    n, i = self._read_varint(self._buf, 1)
                except IndexError:
                    n, i = -1, 0
                if n >= 0 and len(self._buf) >= i + n:
                    kind, data = self._buf[0], self._buf[:i + n]
                    self._buf = self._buf[i + n:]
                    return kind, data
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("closed")
            self._buf += chunk

    def _read_loop(self) -> None:
        buf = b""
        try:
            while True:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    return
                now = time.monotonic()
                buf += chunk
                acks, done, i, end = [], 0, 0, len(buf)
                while i + 2 <= end:
                    first = buf[i]
                    n, shift, j = 0, 0, i + 1
                    while j < end:
                        b = buf[j]
                        j += 1
                        n |= (b & 0x7F) << shift
                        if not b & 0x80:
                            break
                        shift += 7
                    else:
                        break
                    if j + n > end:
                        break
                    kind = first >> 4
                    if kind == 4:  # PUBACK of ours
                        done += 1
                    elif kind == 3:  # an ack
                        tlen = int.from_bytes(buf[j:j + 2], "big")
                        topic = buf[j + 2:j + 2 + tlen]
                        k = j + 2 + tlen
                        if first & 0x06:
                            acks.append(b"\x40\x02" + buf[k:k + 2])
                            k += 2
                        plen, k = self._read_varint(buf, k)
                        self.on_message(topic, buf[k + plen:j + n], now)
                    i = j + n
                buf = buf[i:]
                if acks:
                    with self.send_lock:
                        self.sock.sendall(b"".join(acks))
                if done:
                    with self.cond:
                        self.inflight -= done
                        self.cond.notify_all()
        except OSError:
            return


def rss_kib(pid: int) -> int:
    """A process's resident memory (KiB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_ticks(pid: int) -> int:
    """A process's CPU time so far (user + system, all its threads), in clock ticks; 0 once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    cpu = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = cpu[3] + cpu[4]  # idle, iowait
    return sum(cpu[:8]) - idle, sum(cpu[:8])


def children(ppid: int) -> list[int]:
    """The pids whose parent is ppid (PostgreSQL's backends under its postmaster)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                    out.append(int(d.name))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    return out


class CpuMeter:
    """Where the CPU goes during the timed window: CPU seconds per process group (generator, each broker,
    each worker, PostgreSQL: the postmaster and all its children), the machine's busy time and the rest
    (processes outside this run: on a shared machine, other people's work)."""

    def __init__(self, groups: dict[str, list[int] | Callable[[], list[int]]]):
        self.groups = groups
        self.hz = os.sysconf("SC_CLK_TCK")
        self.ncpu = os.cpu_count() or 1
        self.start_ticks: dict[str, dict[int, int]] = {}

    def _pids(self, name: str) -> list[int]:
        g = self.groups[name]
        return g() if callable(g) else g

    def _sample(self) -> dict[str, dict[int, int]]:
        return {name: {pid: cpu_ticks(pid) for pid in self._pids(name)} for name in self.groups}

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.m0 = machine_ticks()
        self.start_ticks = self._sample()

    def stop(self) -> dict:
        """{"wall_s", "cpu_s": {group: seconds}, "machine_busy_s", "capacity_s"}: seconds over the window."""
        end = self._sample()
        m1 = machine_ticks()
        wall = time.monotonic() - self.t0
        cpu = {}
        for name, ticks in end.items():
            before = self.start_ticks.get(name, {})
            # A process that started in the window counts from 0; one that ended is lost (none should).
            cpu[name] = sum(t - before.get(pid, 0) for pid, t in ticks.items()) / self.hz
        busy = (m1[0] - self.m0[0]) / self.hz
        total = (m1[1] - self.m0[1]) / self.hz
        return {"wall_s": round(wall, 2), "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
                "machine_busy_s": round(busy, 2), "capacity_s": round(total, 2)}


def cpu_report(cpu: dict, blocks: int) -> str:
    """One line per group: CPU seconds, ms per block stored, share of the CPU this run used, share of the machine's."""
    ours = sum(cpu["cpu_s"].values())
    lines = [f"  CPU over {cpu['wall_s']} s ({cpu['capacity_s']:.1f} CPU-s available, machine busy "
             f"{cpu['machine_busy_s']:.1f} CPU-s = {100 * cpu['machine_busy_s'] / max(cpu['capacity_s'], 1e-9):.0f} %; "
             f"this run {ours:.1f} CPU-s, other processes {max(0.0, cpu['machine_busy_s'] - ours):.1f} CPU-s):"]
    for name, s in cpu["cpu_s"].items():
        lines.append(f"    {name:<12} {s:7.2f} CPU-s  {1000 * s / max(blocks, 1):6.3f} ms/block  "
                     f"{100 * s / max(ours, 1e-9):5.1f} % of the CPU this run used, "
                     f"{100 * s / max(cpu['capacity_s'], 1e-9):5.1f} % of the machine")
    return "\n".join(lines)


def client_for(b: Broker, acks: Acks, name: str) -> RawClient:
    c = RawClient(b.host, b.port, name, acks.on_ack)
    c.subscribe(f"{topics.PREFIX}/+/+/ack")
    return c


class Setup:
    """Two brokers, the store with the fleet enrolled, `workers` worker processes, and the fleet's MQTT clients."""

    def __init__(self, backend: str, workers: int, keys: dict[str, bytes], tmp: Path, cluster: PgCluster | None,
                 tag: str, profile: Path | None = None):
        self.backend, self.tmp, self.tag = backend, tmp, f"{backend}-{workers}-{tag}"
        self.stopped = False
        self.brokers = [Broker(tmp / f"{self.tag}-broker-{i}", max_queued=1_000_000).start() for i in range(2)]
        self.names = [f"{b.host}:{b.port}" for b in self.brokers]
        keydir = tmp / f"{self.tag}-collector"
        self.dsn = None
        if backend == "postgresql":
            from carledger.collect.pgstore import PgStore

            self.dsn = cluster.new_database()
            store = PgStore(self.dsn)
        else:
            from carledger.collect.registry import Registry

            store = Registry(keydir)
        for vid, pub in keys.items():
            store.enroll(vid, pub.hex())
        store.close()
        self.procs = []
        for i in range(workers):
            cmd = [sys.executable, "-m", "carledger"]
            if profile is not None:  # per thread, under yappi (bench/profile_worker.py): slower, for where, not how fast
                profile.mkdir(parents=True, exist_ok=True)
                cmd = [sys.executable, str(REPO / "bench" / "profile_worker.py"), "--yappi", str(profile / f"{self.tag}-w{i}.txt"), "--"]
            cmd += ["collect", "run", str(keydir), "--group", "bench", "--client-id", f"w{i}"]
            cmd += ["--dsn", self.dsn] if self.dsn else []
            for n in self.names:
                cmd += ["--broker", n]
            # stderr to a file: a pipe nobody reads fills up with the workers' warnings and stalls them
            with open(tmp / f"{self.tag}-w{i}.log", "w") as log:
                self.procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log))
        for i in range(workers):
            for j, b in enumerate(self.brokers):
                wait_until(lambda: f" as w{i}-{j} " in b.log_text(), timeout=60)
        self.acks = Acks(collector_key(keydir).verify_key, keys)
        self.clients = {n: client_for(b, self.acks, f"fleet-{n}") for n, b in zip(self.names, self.brokers)}
        self.assigned = {vid: self.clients[broker_for(vid, self.names)] for vid in keys}
        self.peak_rss = [0] * workers
        groups: dict = {"generator": [os.getpid()]}
        groups.update({f"broker-{i}": [b.proc.pid] for i, b in enumerate(self.brokers)})
        groups.update({f"worker-{i}": [p.pid] for i, p in enumerate(self.procs)})
        if cluster is not None and backend == "postgresql":
            pm = int((cluster.data / "postmaster.pid").read_text().split()[0])
            groups["postgresql"] = lambda: [pm, *children(pm)]
        self.cpu = CpuMeter(groups)

    def sample_rss(self) -> list[int]:
        rss = [rss_kib(p.pid) for p in self.procs]
        self.peak_rss = [max(a, b) for a, b in zip(self.peak_rss, rss)]
        return rss

    def __enter__(self) -> "Setup":
        return self

    def __exit__(self, *exc) -> None:
        """A run that failed or was stopped (Ctrl-C, SIGTERM) leaves no worker or broker behind."""
        if not self.stopped:
            for p in self.procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for c in self.clients.values():
                c.close()
            for b in self.brokers:
                b.stop()
            self.stopped = True

    def stop(self) -> list[tuple[int | None, int | None]]:
        """Stop everything; (accepted, store round trips) per worker, from its exit line."""
        self.stopped = True
        out = []
        for i, p in enumerate(self.procs):
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)
            text = (self.tmp / f"{self.tag}-w{i}.log").read_text()
            a, r = re.search(r"accepted (\d+)", text), re.search(r"store round trips (\d+)", text)
            out.append((int(a.group(1)) if a else None, int(r.group(1)) if r else None))
        for c in self.clients.values():
            c.close()
        for b in self.brokers:
            b.stop()
        return out


def run(backend: str, workers: int, keys, messages, rate: float, tmp: Path, cluster: PgCluster | None,
        profile: Path | None = None) -> dict:
    with Setup(backend, workers, keys, tmp, cluster, f"{len(next(iter(messages.values()))[0])}b-{rate:g}", profile) as setup:
        return _measure(setup, backend, workers, messages, rate)


def _measure(setup: "Setup", backend: str, workers: int, messages, rate: float) -> dict:
    acks = setup.acks
    xacts0 = _xacts(setup.dsn)
    total = sum(len(m) for m in messages.values())
    # The PUBLISH packets, in send order (each seq of every car, then the next), built before the clock starts.
    plan = [(vid, seq, setup.assigned[vid], setup.assigned[vid].packet(topics.block(vid, STREAM), msgs[seq]))
            for seq in range(max(len(m) for m in messages.values())) for vid, msgs in messages.items() if seq < len(msgs)]
    chunk = 256 if not rate else max(1, min(256, int(rate // 100)))
    setup.cpu.start()
    start = time.monotonic()
    last_sample = start
    for i in range(0, len(plan), chunk):
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        part = plan[i:i + chunk]
        now = time.monotonic()
        with acks.lock:
            for vid, seq, _c, _p in part:
                acks.sent[vid][seq] = now
        for c in setup.clients.values():
            c.send([p for _v, _s, cc, p in part if cc is c])
        if now - last_sample > 1:
            setup.sample_rss()
            last_sample = time.monotonic()
    wait_until(lambda: acks.acked >= total, timeout=900, interval=0.05)
    cpu = setup.cpu.stop()
    setup.sample_rss()
    good, bad = acks.verify()
    elapsed = acks.last - start
    xacts = _xacts(setup.dsn) - xacts0 if setup.dsn else None
    per_worker = setup.stop()
    p50, p99 = acks.percentiles()
    trips = [r for _, r in per_worker]
    return {
        "backend": backend, "workers": workers, "blocks": total, "rate": rate, "seconds": round(elapsed, 2),
        "blocks_per_s": round(total / elapsed),
        "per_worker_blocks_per_s": [round(n / elapsed) if n is not None else None for n, _ in per_worker],
        "round_trips_per_block": round(sum(trips) / total, 3) if setup.dsn and None not in trips else None,
        "transactions_per_block": round(xacts / total, 3) if xacts is not None else None,
        "ack_p50_s": p50, "ack_p99_s": p99, "peak_rss_mib": [round(k / 1024) for k in setup.peak_rss],
        "cpu": cpu, "acks_verified": good, "acks_failed": bad,
    }


def soak(backend: str, workers: int, vehicles: int, records: int, rate: float, duration: float, tmp: Path,
         cluster: PgCluster | None) -> None:
    """The memory mode: sign and send fresh blocks at `rate` for `duration` s; print the workers' RSS as it goes."""
    sks = {f"car-{v:05d}": SigningKey.generate() for v in range(vehicles)}
    with Setup(backend, workers, {v: bytes(k.verify_key) for v, k in sks.items()}, tmp, cluster, "soak") as setup:
        _soak(setup, backend, sks, vehicles, records, rate, duration)


def _soak(setup: "Setup", backend: str, sks: dict, vehicles: int, records: int, rate: float, duration: float) -> None:
    packer = BlockPacker(9)
    prev = {v: ZERO_DIGEST for v in sks}
    acks = setup.acks
    start = time.monotonic()
    sent, period, next_report = 0, duration / 10, start
    checked = [0, 0]  # acks verified, failed (checked at each report: the list of received acks stays short)
    print(f"{'t (s)':>6} {'sent':>8} {'acked':>8} {'p50 s':>6} {'p99 s':>6}  worker RSS (MiB)", flush=True)
    while True:
        now = time.monotonic()
        if now >= next_report:
            p50, p99 = acks.percentiles()
            checked = [a + b for a, b in zip(checked, acks.verify())]
            print(f"{now - start:6.0f} {sent:8d} {acks.acked:8d} {p50:6} {p99:6}  "
                  f"{[round(k / 1024, 1) for k in setup.sample_rss()]}", flush=True)
            next_report += period
        if now - start >= duration:
            break
        vid = f"car-{sent % vehicles:05d}"
        seq = sent // vehicles
        t = T0_US + seq * 10_000_000
        blk = seal_block(vid=vid, stream=STREAM, seq=seq, prev=prev[vid], t0=t, t1=t + (records - 1) * 1000,
                         policy=bytes(32), signing_key=sks[vid],
                         records=[encode_sample(t + i * 1000, "Vehicle.Speed", float(i % 90)) for i in range(records)])
        prev[vid] = blk.digest
        acks.publish(setup.assigned[vid], vid, seq, packer.pack(blk.message()))
        sent += 1
        delay = start + sent / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    wait_until(lambda: acks.acked >= sent, timeout=300, interval=0.05)
    checked = [a + b for a, b in zip(checked, acks.verify())]
    print(f"{backend}: {sent} blocks sent and acked in {duration:.0f} s ({checked[0]} acks verified, {checked[1]} failed); worker RSS now "
          f"{[round(k / 1024, 1) for k in setup.sample_rss()]} MiB, peak {[round(k / 1024, 1) for k in setup.peak_rss]} MiB",
          flush=True)
    setup.stop()


def _xacts(dsn: str | None) -> int:
    if not dsn:
        return 0
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
                            ).fetchone()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vehicles", type=int, default=200)
    parser.add_argument("--blocks", type=int, default=10, help="blocks per vehicle")
    parser.add_argument("--records", default="50", help="samples per block, a list (fleet streams: tens; full: ~280)")
    parser.add_argument("--rate", type=float, default=0, help="blocks/s published in total (0: as fast as possible)")
    parser.add_argument("--half-rate", action="store_true", help="also run the largest worker count at half its rate")
    parser.add_argument("--workers", default="1,2,3", help="worker counts to run (default 1,2,3)")
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--duration", type=float, default=0, help="memory mode: seconds of fresh blocks at --rate")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", type=Path, help="run the workers under yappi; per-thread profiles into this directory")
    args = parser.parse_args()
    if pg_bin() is None:
        print("bench_fleet: PostgreSQL is not installed (scripts/setup)", file=sys.stderr)
        return 2
    # SIGTERM as Ctrl-C: the runs' workers and brokers and the PostgreSQL cluster are stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        cluster = PgCluster(pg_bin()).start() if "postgresql" in args.backends else None
        try:
            if args.duration:
                for backend in args.backends.split(","):
                    soak(backend, int(args.workers.split(",")[-1]), args.vehicles, int(args.records.split(",")[0]),
                         args.rate or 200, args.duration, Path(tmp), cluster)
                return 0
            for records in (int(x) for x in args.records.split(",")):
                keys, messages = make_fleet(args.vehicles, args.blocks, records)
                for backend in args.backends.split(","):
                    counts = [int(x) for x in args.workers.split(",")]
                    plan = [(w, args.rate) for w in counts]
                    for w, rate in plan:
                        r = run(backend, w, keys, messages, rate, Path(tmp), cluster, args.profile)
                        r["records_per_s"] = r["blocks_per_s"] * records
                        r["records_per_block"] = records
                        results.append(r)
                        if not args.json:
                            print(f"{backend:<10} {records:>3} rec/block {w} worker(s) rate {rate or 'max'}: "
                                  f"{r['blocks_per_s']:>5} blocks/s ({r['records_per_s']} records/s; per worker "
                                  f"{r['per_worker_blocks_per_s']}), round trips/block {r['round_trips_per_block']}, "
                                  f"tx/block {r['transactions_per_block']}, ack p50 {r['ack_p50_s']} s p99 {r['ack_p99_s']} s, "
                                  f"peak RSS {r['peak_rss_mib']} MiB", flush=True)
                            print(cpu_report(r["cpu"], r["blocks"]), flush=True)
                            print(f"  all processes of the run: {1000 * sum(r['cpu']['cpu_s'].values()) / r['blocks']:.3f} "
                                  f"ms CPU/block; acks verified after the window: {r['acks_verified']}, "
                                  f"failed {r['acks_failed']}", flush=True)
                        if args.half_rate and w == counts[-1] and not rate:
                            plan.append((w, max(1, r["blocks_per_s"] // 2)))
        finally:
            if cluster is not None:
                cluster.close()
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
