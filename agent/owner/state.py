"""The owner's decisions, kept beside the ledger: the policy in force, consents, the pause switch.

STORE/owner/ holds them as plain files (docs/owner-state.md):

- ``policy.toml``: the policy in force, byte for byte as the owner applied it;
  ``policies/vN-DIGEST.toml`` keeps every version ever applied;
- ``state.json``: the owner's consent decisions made from the CLI (the last
  grant or revocation per stream), the pause switch, and each stream's
  collection status (active or not, since when, why), which lets an agent that
  was stopped declare on its next start what happened meanwhile.

Every file is replaced atomically (write, fsync, rename), so a reader or a
crash sees the old or the new state, never half of one. Only the process that
holds the store's writer lock changes them (the agent, or the CLI while the
agent is stopped); the ledger records each change as a signed event.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from carledger.ledger.files import private_dir, write_private
from carledger.policy import Consent, Policy, Stream, load_policy

OWNER_DIR = "owner"
POLICY_FILE = "policy.toml"
HISTORY_DIR = "policies"
STATE_FILE = "state.json"

GRANT = "grant"
REVOKE = "revoke"


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def iso(ts: float | None) -> str | None:
    """Seconds as an ISO 8601 UTC time to the second, the form every owner record uses."""
    if ts is None:
        return None
    return utc(ts).isoformat(timespec="seconds").replace("+00:00", "Z")


def seconds(when: datetime) -> float:
    return when.timestamp()


@dataclass(frozen=True)
class ConsentDecision:
    """The owner's last word on one stream from the CLI: a grant (until `expires`) or a revocation."""

    action: str  # GRANT or REVOKE
    at: float  # seconds
    expires: float | None = None  # for a grant

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action, "at": self.at}
        if self.expires is not None:
            out["expires"] = self.expires
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ConsentDecision":
        return cls(str(data["action"]), float(data["at"]), None if data.get("expires") is None else float(data["expires"]))


@dataclass(frozen=True)
class Pause:
    """All collection paused from `since` until `until` (None: until `carledger resume`)."""

    since: float
    until: float | None = None

    def covers(self, t: float) -> bool:
        return self.since <= t and (self.until is None or t < self.until)


@dataclass
class IgnitionCycles:
    """The ignition cycles the agent saw, and the owner's allowances for classes off at each one.

    `cycle` counts ignitions; `last_seen` is the data's time of the newest
    frame when the agent last stopped or saw an ignition, so that its next
    start knows whether the bus was silent long enough for a new cycle.
    `this_drive` maps a class to the cycle it is allowed for; `standing` a
    class to when the owner allowed it for every cycle (until withdrawn).
    """

    cycle: int = 0
    since: float | None = None
    last_seen: float | None = None
    this_drive: dict[str, int] = field(default_factory=dict)
    standing: dict[str, float] = field(default_factory=dict)

    def allowance(self, cls: str) -> str | None:
        """"standing", "this-drive" or None: why a class marked in `[ignition]` is on now."""
        if cls in self.standing:
            return "standing"
        if self.this_drive.get(cls) == self.cycle and self.cycle > 0:
            return "this-drive"
        return None

    def to_json(self) -> dict[str, Any]:
        return {"cycle": self.cycle, "since": self.since, "last_seen": self.last_seen,
                "this_drive": dict(sorted(self.this_drive.items())), "standing": dict(sorted(self.standing.items()))}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "IgnitionCycles":
        def num(key: str) -> float | None:
            return None if data.get(key) is None else float(data[key])

        return cls(int(data.get("cycle", 0)), num("since"), num("last_seen"),
                   {str(k): int(v) for k, v in data.get("this_drive", {}).items()},
                   {str(k): float(v) for k, v in data.get("standing", {}).items()})


@dataclass(frozen=True)
class StreamStatus:
    """Was a stream collecting at the last check, since when, and why (or why not)."""

    active: bool
    since: float
    reason: str
    policy: str = ""  # digest (hex) of the policy version the stream last ran under

    def to_json(self) -> dict[str, Any]:
        return {"active": self.active, "since": self.since, "reason": self.reason, "policy": self.policy}


@dataclass
class OwnerState:
    """What STORE/owner/ holds, loaded; `save()` writes it back atomically."""

    store: Path
    policy: Policy = field(default_factory=Policy.empty)
    policy_bytes: bytes = b""
    consents: dict[str, ConsentDecision] = field(default_factory=dict)
    pause: Pause | None = None
    status: dict[str, StreamStatus] = field(default_factory=dict)
    ignition: IgnitionCycles = field(default_factory=IgnitionCycles)

    @property
    def directory(self) -> Path:
        return self.store / OWNER_DIR

    @classmethod
    def load(cls, store: str | os.PathLike) -> "OwnerState":
        """The state of a store (empty policy and nothing decided when the store has none yet).

        The policy in force was valid when applied; it is read again without
        checking expiry (a consent that expired since simply ends its stream)
        and without signal names (the DBCs may have changed since).
        """
        state = cls(Path(store))
        path = state.directory / POLICY_FILE
        if path.exists():
            state.policy_bytes = path.read_bytes()
            state.policy = load_policy(path, check_expiry=False)
        data = _read_json(state.directory / STATE_FILE)
        for name, item in data.get("consents", {}).items():
            state.consents[name] = ConsentDecision.from_json(item)
        pause = data.get("pause")
        if pause:
            state.pause = Pause(float(pause["since"]), None if pause.get("until") is None else float(pause["until"]))
        for name, item in data.get("status", {}).items():
            state.status[name] = StreamStatus(
                bool(item["active"]), float(item["since"]), str(item["reason"]), str(item.get("policy", ""))
            )
        if data.get("ignition"):
            try:
                state.ignition = IgnitionCycles.from_json(data["ignition"])
            except (AttributeError, TypeError, ValueError) as exc:
                raise OwnerStateError(f"{state.directory / STATE_FILE}: ignition: unreadable owner state: {exc}") from None
        return state

    def save(self) -> None:
        data: dict[str, Any] = {
            "consents": {n: c.to_json() for n, c in sorted(self.consents.items())},
            "pause": None if self.pause is None else {"since": self.pause.since, "until": self.pause.until},
            "status": {n: s.to_json() for n, s in sorted(self.status.items())},
            "ignition": self.ignition.to_json(),
        }
        _write_atomic(self.directory / STATE_FILE, (json.dumps(data, indent=1) + "\n").encode())

    def install_policy(self, policy: Policy, data: bytes) -> Path:
        """Make `policy` (parsed from `data`) the one in force; keep a copy in the history."""
        history = self.directory / HISTORY_DIR / f"v{policy.version}-{policy.digest().hex()[:12]}.toml"
        _write_atomic(history, data)
        _write_atomic(self.directory / POLICY_FILE, data)
        self.policy, self.policy_bytes = policy, data
        return history

    def history(self) -> list[Path]:
        folder = self.directory / HISTORY_DIR
        return sorted(folder.glob("v*.toml"), key=_version_of) if folder.is_dir() else []

    # -- what is in force at a time --------------------------------------------------------

    def paused(self, t: float) -> bool:
        return self.policy.paused or (self.pause is not None and self.pause.covers(t))

    def collection(self, t: float) -> dict[str, Any]:
        """The owner's collection switch at t: collecting, paused (until resume), or paused until a time.

        Read from STORE/owner/ (unsigned, the owner's own files): it is what the
        car does, shown to the owner and on the status topic. Trusting it can
        show a wrong switch, never change what is recorded or sent (the agent
        decides that from the same files, and declares each pause in the chains).
        """
        if self.policy.paused:
            return {"state": "paused", "since": None, "until": None, "by": "policy"}
        pause = self.pause
        if pause is not None and pause.covers(t):
            return {"state": "paused", "since": iso(pause.since), "until": iso(pause.until), "by": "owner"}
        ended = pause.until if pause is not None and pause.until is not None and pause.until <= t else None
        return {"state": "collecting", "since": iso(ended), "until": None, "by": None}

    def consent(self, stream: Stream) -> tuple[Consent | None, str | None]:
        """The consent in force for a stream, and "revoked" when the owner's revocation decides it.

        The newest decision wins: the policy file's consent (as of its grant
        time) or the owner's last grant or revocation from the CLI.
        """
        consent = stream.consent
        decision = self.consents.get(stream.name)
        if stream.local or decision is None:
            return consent, None
        if consent is not None and decision.at < seconds(consent.granted):
            return consent, None
        if decision.action == REVOKE:
            if consent is None:
                return None, "revoked"
            end = min(seconds(consent.expires), decision.at)
            return replace(consent, expires=utc(end)), "revoked"
        assert decision.expires is not None
        return Consent(utc(decision.at), utc(decision.expires)), None

    def classes_off(self) -> frozenset[str]:
        """The classes `[ignition]` marks that the owner has not allowed for the current cycle."""
        marked = self.policy.ignition.each_drive if self.policy.ignition is not None else ()
        return frozenset(c for c in marked if self.ignition.allowance(c) is None)

    def effective_policy(self) -> Policy:
        """The policy in force with the owner's CLI consent decisions folded in."""
        streams = tuple(replace(s, consent=self.consent(s)[0]) for s in self.policy.streams)
        return replace(self.policy, streams=streams)

    def why_inactive(self, stream: Stream, t: float) -> str | None:
        """None when `stream` collects at t, else the reason (an event kind of docs/block-format.md)."""
        if self.paused(t):
            return "pause"
        if stream.paused:
            return "stream-paused"
        if stream.local:
            return None
        consent, revoked = self.consent(stream)
        if consent is None:
            return "consent-revoked" if revoked else "no-consent"
        when = utc(t)
        if when < consent.granted:
            return "consent-pending"
        if when >= consent.expires:
            return "consent-revoked" if revoked and self._revocation_ended(stream, consent) else "consent-expired"
        return None

    def _revocation_ended(self, stream: Stream, consent: Consent) -> bool:
        """Did the revocation (not the consent's own expiry) end it? `stream` may be the effective one."""
        try:
            original = self.policy.stream(stream.name).consent
        except KeyError:
            return True
        return original is None or consent.expires < original.expires

    def next_change(self, t: float) -> float | None:
        """The earliest time after t at which some stream may start or stop (consent or pause bounds)."""
        times = []
        if self.pause is not None and self.pause.until is not None and self.pause.until > t:
            times.append(self.pause.until)
        for stream in self.policy.streams:
            consent = self.consent(stream)[0]
            if consent is None or stream.local:
                continue
            for bound in (seconds(consent.granted), seconds(consent.expires)):
                if bound > t:
                    times.append(bound)
        return min(times) if times else None


def _version_of(path: Path) -> int:
    try:
        return int(path.name[1:].split("-", 1)[0])
    except ValueError:
        return -1


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise OwnerStateError(f"{path}: unreadable owner state: {exc}") from None
    if not isinstance(data, dict):
        raise OwnerStateError(f"{path}: unreadable owner state: not a JSON object")
    return data


class OwnerStateError(Exception):
    """STORE/owner/ holds something this version cannot read."""


def _write_atomic(path: Path, data: bytes) -> None:
    private_dir(path.parent)
    write_private(path, data)
