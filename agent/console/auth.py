"""Pairing a phone with a one-time code, sessions that expire, one-time CSRF tokens, a pairing throttle.

The code is made by `carledger console pair` (another process) and only its
salted PBKDF2 hash is written, to STORE/console/pairing.json (0600): whoever
reads the store learns nothing that lets them pair. The code works once,
for CODE_LIFETIME seconds, and MAX_WRONG wrong tries burn it. On top of that,
the server answers at most THROTTLE_TRIES pairing attempts per
THROTTLE_WINDOW seconds, from anyone (an attacker can change addresses), so
guessing 10^8 codes is out of reach.

Sessions live in the server's memory, keyed by the SHA-256 of their token:
a restart of the console ends them all, and nothing on disk can be replayed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from carledger.console import CONSOLE_DIR
from carledger.ledger.files import private_dir, write_private

PAIR_FILE = "pairing.json"
CODE_DIGITS = 8
CODE_LIFETIME = 600.0  # seconds a code can be used
MAX_WRONG = 5  # wrong tries that burn a code
THROTTLE_TRIES, THROTTLE_WINDOW = 5, 60.0  # pairing attempts per window, from anyone
SESSION_IDLE = 2 * 3600.0  # a session unused this long ends
SESSION_MAX = 24 * 3600.0  # and every session ends this long after pairing
CSRF_LIFETIME = 900.0  # a form must be sent within this long
CSRF_KEPT = 32  # outstanding tokens per session (the oldest go first)
PBKDF2_ROUNDS = 200_000
KEY_PAIRING = b"carledger/console-pair/v1\n"  # the domain of an owner-key pairing signature, then the challenge
CHALLENGES_KEPT = 32  # outstanding owner-key challenges (the oldest go first)


def pairing_message(challenge: str) -> bytes:
    """What the owner's key signs to pair (`carledger console sign-pairing`): a domain, then the server's challenge."""
    return KEY_PAIRING + challenge.strip().lower().encode("ascii", "replace")


def _hash(code: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", code.encode(), salt, PBKDF2_ROUNDS)


def new_code(store: str | Path, now: float | None = None) -> tuple[str, float]:
    """Make a pairing code (replacing any earlier one) and store its hash; returns (code, expiry)."""
    now = time.time() if now is None else now
    code = "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))
    salt = secrets.token_bytes(16)
    expires = now + CODE_LIFETIME
    record = {"salt": salt.hex(), "hash": _hash(code, salt).hex(), "expires": expires, "wrong": 0}
    write_private(private_dir(Path(store) / CONSOLE_DIR) / PAIR_FILE, json.dumps(record).encode())
    return f"{code[:4]}-{code[4:]}", expires


class Throttled(Exception):
    """Too many pairing attempts lately; the message says when to try again."""


@dataclass
class Session:
    created: float
    seen: float
    csrf: dict[str, float] = field(default_factory=dict)  # token -> expiry


class Auth:
    """The server's pairing check and session table (thread-safe: one lock, short critical sections)."""

    def __init__(self, store: str | Path, clock=time.time):
        self.pair_file = Path(store) / CONSOLE_DIR / PAIR_FILE
        self.clock = clock
        self.sessions: dict[bytes, Session] = {}
        self.attempts: deque[float] = deque()
        self.challenges: dict[str, float] = {}  # owner-key challenges shown on the pairing page -> expiry
        self.store = Path(store)
        self.lock = threading.Lock()

    # -- pairing ----------------------------------------------------------------------------------

    def _throttle(self, now: float) -> None:
        """Count one pairing attempt (by code or by key); Throttled when there were too many lately. Holds the lock."""
        while self.attempts and self.attempts[0] <= now - THROTTLE_WINDOW:
            self.attempts.popleft()
        if len(self.attempts) >= THROTTLE_TRIES:
            wait = self.attempts[0] + THROTTLE_WINDOW - now
            raise Throttled(f"too many pairing attempts: try again in {max(1, round(wait))} s")
        self.attempts.append(now)

    def _session(self, now: float) -> str:
        token = secrets.token_urlsafe(32)
        self.sessions[_key(token)] = Session(created=now, seen=now)
        return token

    def challenge(self) -> str:
        """A fresh challenge for pairing with the owner's key, valid CODE_LIFETIME seconds, once."""
        now = self.clock()
        challenge = secrets.token_hex(16)
        with self.lock:
            self.challenges = {c: e for c, e in self.challenges.items() if e > now}
            while len(self.challenges) >= CHALLENGES_KEPT:
                self.challenges.pop(next(iter(self.challenges)))
            self.challenges[challenge] = now + CODE_LIFETIME
        return challenge

    def pair_with_key(self, challenge: str, signature: str) -> str | None:
        """A new session token when `signature` (hex) is the enrolled owner key's over this server's unused
        `challenge` (which is then used up, right or wrong); else None. Raises Throttled like `pair`."""
        from nacl.exceptions import BadSignatureError

        from carledger.ledger import KeyFileError
        from carledger.sync.policy_update import load_owner_key

        now = self.clock()
        with self.lock:
            self._throttle(now)
            expires = self.challenges.pop(challenge.strip().lower(), None)
            if expires is None or expires <= now:
                return None
            try:
                owner = load_owner_key(self.store)
                raw = bytes.fromhex(signature.strip())
                if owner is None or len(raw) != 64:
                    return None
                owner.verify(pairing_message(challenge), raw)
            except (KeyFileError, ValueError, BadSignatureError):
                return None
            return self._session(now)

    def pair(self, code: str) -> str | None:
        """A new session token when `code` is the current pairing code (which is then used up); else None.

        Raises Throttled when too many attempts came lately, whatever the code.
        """
        now = self.clock()
        with self.lock:
            self._throttle(now)
            record = self._pairing(now)
            if record is None:
                return None
            digits = "".join(c for c in code if c.isdigit())
            if not hmac.compare_digest(_hash(digits, bytes.fromhex(record["salt"])), bytes.fromhex(record["hash"])):
                record["wrong"] += 1
                if record["wrong"] >= MAX_WRONG:
                    self.pair_file.unlink(missing_ok=True)
                else:
                    write_private(self.pair_file, json.dumps(record).encode())
                return None
            self.pair_file.unlink(missing_ok=True)  # one time only
            return self._session(now)

    def _pairing(self, now: float) -> dict | None:
        try:
            record = json.loads(self.pair_file.read_text())
            if float(record["expires"]) > now and int(record["wrong"]) < MAX_WRONG:
                return record
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no code, or not one we wrote: nothing pairs
        return None

    # -- sessions ---------------------------------------------------------------------------------

    def session(self, token: str | None) -> Session | None:
        """The live session of `token` (its idle clock restarted), or None: missing, unknown or expired."""
        if not token:
            return None
        now = self.clock()
        with self.lock:
            key = _key(token)
            session = self.sessions.get(key)
            if session is None:
                return None
            if now - session.seen > SESSION_IDLE or now - session.created > SESSION_MAX:
                del self.sessions[key]
                return None
            session.seen = now
            return session

    def end_all(self) -> None:
        """Every session ends (a wipe: they were the previous owner's)."""
        with self.lock:
            self.sessions.clear()

    def end(self, token: str | None) -> None:
        with self.lock:
            self.sessions.pop(_key(token or ""), None)

    def csrf_token(self, session: Session) -> str:
        """A fresh token for one form of this session; used up by `check_csrf`."""
        now = self.clock()
        token = secrets.token_urlsafe(24)
        with self.lock:
            session.csrf = {t: e for t, e in session.csrf.items() if e > now}
            while len(session.csrf) >= CSRF_KEPT:
                session.csrf.pop(next(iter(session.csrf)))
            session.csrf[token] = now + CSRF_LIFETIME
        return token

    def check_csrf(self, session: Session, token: str | None) -> bool:
        """True once for a token this session was given and has not used or let expire."""
        with self.lock:
            expires = session.csrf.pop(token or "", None)
        return expires is not None and expires > self.clock()


def _key(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
