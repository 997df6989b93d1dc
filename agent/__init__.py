"""carledger: the owner's in-vehicle data agent.

CAN and OBD-II frames in; the owner's policy applied; a signed, hash-chained
ledger out, synced to the parties the owner chose.
"""

from carledger import _imports as _imports  # noqa: F401  (must run before python-can is imported)

__version__ = "0.1.0"
