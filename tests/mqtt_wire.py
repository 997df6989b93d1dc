"""A TCP proxy between an MQTT client and a real broker that reads the packets on the wire.

Tests use it to check what the client actually sends, not what paho says it
will: how many QoS 1 PUBLISHes are awaiting their PUBACK at any moment (the
broker's Receive Maximum caps that), and what each PUBLISH carries. It parses
only the fixed header, the topic and the packet id (MQTT 5, section 2 and
3.3/3.4); everything is forwarded unchanged.
"""

from __future__ import annotations

import socket
import threading
from typing import Callable

__all__ = ["WireProxy"]

PUBLISH, PUBACK = 3, 4


class _Packets:
    """Splits a byte stream into MQTT control packets: (type, flags, body)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        self._buf += data
        out = []
        while True:
            length, shift, i = 0, 0, 1
            while True:  # the Remaining Length varint (at most 4 bytes)
                if i >= len(self._buf):
                    return out
                byte = self._buf[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                if not byte & 0x80:
                    break
            if len(self._buf) < i + length:
                return out
            first = self._buf[0]
            out.append((first >> 4, first & 0x0F, bytes(self._buf[i:i + length])))
            del self._buf[:i + length]


class WireProxy:
    """Listens on 127.0.0.1:`port` and relays each connection to `host`:`target_port`.

    `in_flight_max` is the most client-to-broker QoS > 0 PUBLISH packet ids seen
    at once without the broker's PUBACK; `published` counts those PUBLISHes.
    """

    def __init__(self, host: str, target_port: int, on_publish: Callable[[str], None] | None = None):
        self.target = (host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._waiting: set[int] = set()
        self.in_flight_max = 0
        self.published = 0
        self._on_publish = on_publish
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            with self._lock:
                self._waiting.clear()  # a new connection: the old one's unacked ids are resent, not in flight
            threading.Thread(target=self._pump, args=(client, upstream, self._from_client), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self._from_broker), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, seen: Callable[[int, int, bytes], None]) -> None:
        packets = _Packets()
        try:
            while data := src.recv(65536):
                for packet in packets.feed(data):
                    seen(*packet)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _from_client(self, kind: int, flags: int, body: bytes) -> None:
        if kind != PUBLISH or not (flags >> 1) & 0x03:
            return
        topic_len = int.from_bytes(body[:2], "big")
        packet_id = int.from_bytes(body[2 + topic_len:4 + topic_len], "big")
        with self._lock:
            self._waiting.add(packet_id)
            self.published += 1
            self.in_flight_max = max(self.in_flight_max, len(self._waiting))
        if self._on_publish is not None:
            self._on_publish(body[2:2 + topic_len].decode("utf-8", "replace"))

    def _from_broker(self, kind: int, flags: int, body: bytes) -> None:
        if kind == PUBACK:
            with self._lock:
                self._waiting.discard(int.from_bytes(body[:2], "big"))

    def close(self) -> None:
        self._listener.close()
        for s in self._sockets:
            s.close()
