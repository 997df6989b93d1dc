"""The SocketCAN test harness: a real vcan, from the host kernel or from user-mode-linux.

`vcan.find_vcan()` says which of the two this machine offers (or why neither);
`vcan.run_guest(...)` runs a guest program (a list of scenarios, see
`guest.py`) against real vcan interfaces, once per test module, and the test
then asserts on the results the guest wrote to a host directory.
"""

from harness.vcan import GuestRun, Vcan, find_vcan, run_guest

__all__ = ["GuestRun", "Vcan", "find_vcan", "run_guest"]
