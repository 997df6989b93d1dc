"""Requests from the owner's CLI to the running agent, as files in STORE/owner/requests/.

Only the process holding the store's writer lock may change the ledger, so
while the agent runs the CLI hands its request over: it writes
``req-ID.json`` (atomically: write, then rename) and waits for the agent's
``res-ID.json``. The agent looks for requests a few times a second, runs
each, and answers. A request the agent never took can be withdrawn, so a CLI
that gives up leaves nothing behind to surprise the owner later.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from carledger.ledger.files import private_dir, write_private
from carledger.owner.state import OWNER_DIR

log = logging.getLogger(__name__)

REQUEST_DIR = "requests"
_POLL = 0.05


class Spool:
    def __init__(self, store: str | os.PathLike):
        self.directory = Path(store) / OWNER_DIR / REQUEST_DIR

    # -- the CLI's side -----------------------------------------------------------------------

    def put(self, request: dict[str, Any]) -> str:
        """Queue a request; returns its id."""
        private_dir(self.directory)
        request_id = f"{time.time_ns():020d}-{os.getpid()}"
        _write(self.directory / f"req-{request_id}.json", request)
        return request_id

    def wait(self, request_id: str, timeout: float) -> dict[str, Any] | None:
        """The agent's answer, or None if it did not come within `timeout` seconds."""
        answer = self.directory / f"res-{request_id}.json"
        deadline = time.monotonic() + timeout
        while True:
            if answer.exists():
                try:
                    data = json.loads(answer.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    data = None
                if isinstance(data, dict):
                    answer.unlink(missing_ok=True)
                    return data
            if time.monotonic() >= deadline:
                return None
            time.sleep(_POLL)

    def withdraw(self, request_id: str) -> bool:
        """Take back a request the agent has not taken yet; False when it already took it."""
        try:
            (self.directory / f"req-{request_id}.json").unlink()
            return True
        except FileNotFoundError:
            return False

    # -- the agent's side ---------------------------------------------------------------------

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        """Queued requests, oldest first; each is removed as it is taken (answer it with `answer`)."""
        try:
            names = sorted(e.name for e in os.scandir(self.directory) if e.name.startswith("req-") and e.name.endswith(".json"))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            path = self.directory / name
            request_id = name[4:-5]
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                data = {"action": None, "error": f"unreadable request: {exc}"}
            path.unlink(missing_ok=True)
            if not isinstance(data, dict):
                data = {"action": None}
            out.append((request_id, data))
        return out

    def answer(self, request_id: str, result: dict[str, Any]) -> None:
        try:
            _write(self.directory / f"res-{request_id}.json", result)
        except OSError as exc:  # the answer is a courtesy; the action itself is done and recorded
            log.warning("cannot answer owner request %s: %s", request_id, exc)


def _write(path: Path, data: dict[str, Any]) -> None:
    write_private(path, json.dumps(data).encode("utf-8"))
