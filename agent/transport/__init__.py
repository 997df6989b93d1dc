"""Transport protocols: whole messages out of the frames that carry them (ISO-TP, J1939 TP).

A diagnostic answer or a J1939 parameter group longer than 8 bytes travels
as several frames. Decoding one of those frames as if it were the message
makes up values (a length byte read as a service id), so every frame of a
transport protocol goes through `TransportDecoder` and only the reassembled
messages reach the DBC decoder. What it accepts and the events it counts
are in docs/uds.md.
"""

from carledger.transport.decoder import TransportDecoder, TransportStats, is_isotp_key
from carledger.transport.j1939 import J1939Reassembler, J1939Message, pgn_key

__all__ = ["J1939Message", "J1939Reassembler", "TransportDecoder", "TransportStats", "is_isotp_key", "pgn_key"]
