"""The daemon: sd_notify READY/WATCHDOG/STOPPING, and SIGTERM seals the unsealed tail."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap

from carledger.cli import main
from carledger.dbc import path as dbc_path


def test_sigterm_seals_the_tail_and_systemd_hears_ready_watchdog_stopping(tmp_path, capsys):
    config = tmp_path / "agent.toml"
    config.write_text(textwrap.dedent(f"""
        [agent]
        store = "ledger"
        policy = "policy.toml"
        [seal]
        max_age = 3600          # nothing is sealed by age: only SIGTERM can seal the tail
        max_records = 1000000
        [[bus]]
        name = "sim"
        interface = "carledger-sim"
        channel = "city"
        options = {{ seed = 2, speed = 5 }}
        dbc = ["{dbc_path('carledger_demo.dbc')}"]
    """))
    (tmp_path / "policy.toml").write_text('version = 1\n[[stream]]\nname = "driving"\nlocal = true\nsignals = ["Vehicle.Speed"]\n')
    notify_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="200000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "carledger", "run", "-c", str(config)],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        messages = []

        def receive_until(word: str) -> None:
            while not any(word in m for m in messages):
                messages.append(sock.recv(4096).decode())

        receive_until("READY=1")
        receive_until("WATCHDOG=1")
        proc.send_signal(signal.SIGTERM)
        receive_until("STOPPING=1")
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill() if proc.poll() is None else None
        sock.close()
    assert proc.returncode == 0, stderr
    recorded = int(re.search(r"stream driving: ([\d,]+) records", stderr).group(1).replace(",", ""))
    assert recorded > 0

    capsys.readouterr()
    assert main(["verify", str(tmp_path / "ledger"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # with max_age an hour, the one block of this stream is the tail that SIGTERM sealed
    assert report["streams"]["driving"]["blocks"] == 1
    assert report["streams"]["driving"]["records"] == recorded
    health = report["streams"]["health"]
    assert health["records"] >= 2  # agent-start and agent-stop
