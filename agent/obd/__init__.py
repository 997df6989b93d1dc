"""OBD-II: SAE J1979 PIDs, DTCs and the VIN, over CAN (ISO 15765-4) or through an ELM327 adapter.

Three ways in, one set of samples ``(t, name, value, source)``: names are VSS
paths (``Vehicle.Speed``) or ``OBD.<NAME>``, sources ``OBD.01.0D``, ``OBD.03``:

- `ObdPoller`: active polling on a CAN bus with can-isotp, in its own thread;
  the only thing the agent ever transmits, and only where configured;
- `Elm327Source`: the same polling through an ELM327 adapter (python-OBD);
- `PassiveDecoder`: answers decoded from frames seen on a bus or in a log.

`ObdConfig` and its TOML parsers, the PID table and the DTC codec complete
the public surface. The formats and the configuration are in docs/obd.md.
"""

from typing import TYPE_CHECKING

from carledger._imports import lazy_exports

# Loaded on first use: a run without OBD-II does not import the poller's can-isotp (docs/performance.md).
__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "config": ("ObdConfig", "elm327_config_from_table", "obd_config_from_table"),
    "dtc": ("decode_dtc", "encode_dtc"),
    "elm327": ("Elm327Source",),
    "messages": ("ResponseError", "parse_response", "request"),
    "passive": ("PassiveDecoder",),
    "pids": ("PIDS", "Pid", "PidSignal", "pid_by_name", "pids_for_name"),
    "poller": ("ObdPoller",),
    "session": ("ObdSession", "pid_intervals"),
})

if TYPE_CHECKING:
    from carledger.obd.config import ObdConfig, elm327_config_from_table, obd_config_from_table
    from carledger.obd.dtc import decode_dtc, encode_dtc
    from carledger.obd.elm327 import Elm327Source
    from carledger.obd.messages import ResponseError, parse_response, request
    from carledger.obd.passive import PassiveDecoder
    from carledger.obd.pids import PIDS, Pid, PidSignal, pid_by_name, pids_for_name
    from carledger.obd.poller import ObdPoller
    from carledger.obd.session import ObdSession, pid_intervals
