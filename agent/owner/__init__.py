"""The owner's side of the agent: the policy in force, consents, pause, and the actions that change them.

`OwnerState` is what STORE/owner/ holds; `OwnerActions` changes it and records
each change in the `audit` stream; `StreamManager` starts and stops streams
to match; `Spool` carries the CLI's requests to a running agent, and
`submit` runs a request either way (docs/owner-state.md).
"""

import importlib
from typing import TYPE_CHECKING, Any

#: Each name and the module that defines it, imported on first use: a reader of the owner's state (status,
#: consent list, the console's pages) then never loads the sync and the policy engine that the actions need.
_WHERE = {
    "AUDIT_STREAM": "actions", "OwnerActions": "actions", "OwnerError": "actions", "Outcome": "actions",
    "Spool": "spool", "OwnerState": "state", "OwnerStateError": "state", "StreamManager": "streams",
}

if TYPE_CHECKING:
    from carledger.owner.actions import AUDIT_STREAM, OwnerActions, OwnerError, Outcome  # noqa: F401
    from carledger.owner.spool import Spool  # noqa: F401
    from carledger.owner.state import OwnerState, OwnerStateError  # noqa: F401
    from carledger.owner.streams import StreamManager  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"carledger.owner.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'carledger.owner' has no attribute {name!r}")


__all__ = [
    "AUDIT_STREAM", "OwnerActions", "OwnerError", "OwnerState", "OwnerStateError", "Outcome", "Spool", "StreamManager",
]
