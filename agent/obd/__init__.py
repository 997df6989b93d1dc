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

from carledger.obd.config import ObdConfig, elm327_config_from_table, obd_config_from_table
from carledger.obd.dtc import decode_dtc, encode_dtc
from carledger.obd.elm327 import Elm327Source
from carledger.obd.messages import ResponseError, parse_response, request
from carledger.obd.passive import PassiveDecoder
from carledger.obd.pids import PIDS, Pid, PidSignal, pid_by_name, pids_for_name
from carledger.obd.poller import ObdPoller
from carledger.obd.session import ObdSession, pid_intervals

__all__ = [
    "Elm327Source", "ObdConfig", "ObdPoller", "ObdSession", "PIDS", "PassiveDecoder", "Pid", "PidSignal",
    "ResponseError", "decode_dtc", "elm327_config_from_table", "encode_dtc", "obd_config_from_table",
    "parse_response", "pid_by_name", "pid_intervals", "pids_for_name", "request",
]
