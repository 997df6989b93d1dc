"""The policy the agent's configuration names, or the command line's `--stream`s make up, put in force at start.

Newer than the policy in force, it is applied as the owner's decision
(`policy-applied`, origin `config`, docs/owner-state.md). Not newer, or a
signed update that is not the enrolled owner's, it is refused and the
policy in force stays: the agent starts all the same, and the caller says
why (`Rejected`). A file that cannot be read as a policy at all stops the
start (`ConfiguredPolicyError`, one line naming the file).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from carledger.config import local_streams_policy, stream_option_problems
from carledger.owner.actions import OwnerActions, OwnerError, Outcome
from carledger.owner.signed import UnsignedPolicy, is_signed_update
from carledger.policy import PolicyError, policy_from_text


class ConfiguredPolicyError(Exception):
    """The configured policy cannot be read, or the `--stream`s make no valid policy: the agent does not start."""


@dataclass(frozen=True)
class Rejected:
    """The configured policy was refused; the one in force stays."""

    file: str
    error: str


def apply_configured_policy(actions: OwnerActions, path: str | None, streams: Mapping[str, Sequence[str]] | None,
                            now: float) -> Outcome | Rejected | None:
    """Apply the policy file at `path` (plain or signed), else the one `streams` make up; None when there is none.

    The `--stream`s are the next version unless they are what is in force already (then nothing happens).
    """
    current = actions.state.policy
    signed = None
    if path is not None:
        name, data = path, _read(path)
        if is_signed_update(data):  # the owner's signed update (carledger remote sign-policy)
            signed, text = data, ""
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfiguredPolicyError(f"{name}: cannot read the policy: not UTF-8 text ({exc.reason})") from None
    elif streams is not None:
        name, text = "--stream", local_streams_policy(streams, current.version + 1)
        try:
            candidate = policy_from_text(name, text, actions.known_signals, check_expiry=False)
        except PolicyError as exc:
            raise ConfiguredPolicyError(stream_option_problems(streams, exc.problems)) from None
        if candidate.streams == current.streams:
            return None
    else:
        return None
    try:
        return actions.apply_policy(text, origin="config", name=name, now=now, signed=signed)
    except OwnerError as exc:
        # not newer, or not the enrolled owner's: the policy in force stays
        if "is not higher than" not in str(exc) and not isinstance(exc, UnsignedPolicy):
            raise ConfiguredPolicyError(str(exc)) from None
        return Rejected(name, str(exc))


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfiguredPolicyError(f"{path}: cannot read the policy: {exc}") from None
