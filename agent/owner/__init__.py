"""The owner's side of the agent: the policy in force, consents, pause, and the actions that change them.

`OwnerState` is what STORE/owner/ holds; `OwnerActions` changes it and records
each change in the `audit` stream; `StreamManager` starts and stops streams
to match; `Spool` carries the CLI's requests to a running agent, and
`submit` runs a request either way (docs/owner-state.md).
"""

from carledger.owner.actions import AUDIT_STREAM, OwnerActions, OwnerError, Outcome
from carledger.owner.spool import Spool
from carledger.owner.state import OwnerState, OwnerStateError
from carledger.owner.streams import StreamManager

__all__ = [
    "AUDIT_STREAM", "OwnerActions", "OwnerError", "OwnerState", "OwnerStateError", "Outcome", "Spool", "StreamManager",
]
