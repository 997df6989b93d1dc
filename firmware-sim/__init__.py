"""carledger_sim: a simulated car for carledger's tests and demos.

ECUs broadcast the frames of a DBC at their cycle times from one physically
consistent vehicle state (see `model`), onto any python-can bus, as a python-can
interface (`can.Bus(interface="carledger-sim", channel="city")`), or into a log.
"""

from carledger import _imports as _imports  # noqa: F401  (keeps python-can from importing asammdf)
