"""A stream's send window and ack timeout, adapted like TCP's (RFC 5681 congestion control, RFC 6298 timer).

mosquitto drops QoS 1 messages beyond a subscriber's `max_queued_messages`,
and only the collector's ack tells the car what arrived. So the window (the
blocks out without an ack) starts small, grows with every block acked
(slow start: doubling per round trip up to a threshold, then about one per
round trip), and falls back to one block on an ack timeout, the threshold
halved; while the stream sends again what it had sent before, it grows by
one per ack, since an ack may jump over blocks the collector already holds.
The timeout follows the measured ack delay (smoothed delay plus four
deviations, at least MIN_RTO, at most `ack_timeout`), and doubles on each
timeout (up to 16 × `ack_timeout`). A block sent again gives no measure
(Karn's rule): its ack cannot say which send it answers.
"""

from __future__ import annotations

from carledger.sync.config import MqttConfig

__all__ = ["Window", "INITIAL_WINDOW", "MIN_RTO", "INITIAL_RTO"]

INITIAL_WINDOW = 4  # blocks a stream may have out before its first ack
MIN_RTO = 1.0  # seconds: the shortest ack timeout the measured delay may give
INITIAL_RTO = 3.0  # seconds before the first measure (RFC 6298 says 1 s; a collector's batch is slower)


class Window:
    """How many blocks of one stream may be out, and how long to wait for their ack."""

    __slots__ = ("largest", "ack_timeout", "cwnd", "ssthresh", "srtt", "rttvar", "rto", "timeout")

    def __init__(self, cfg: MqttConfig):
        self.largest = float(cfg.window)
        self.ack_timeout = cfg.ack_timeout
        self.cwnd = float(min(INITIAL_WINDOW, cfg.window))
        self.ssthresh = self.largest
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = min(cfg.ack_timeout, INITIAL_RTO)  # the measured timeout
        self.timeout = self.rto  # the one in force: the measure, doubled per timeout in a row

    def room(self, inflight: int) -> int:
        """Blocks that may still be sent with `inflight` out."""
        return max(1, int(self.cwnd)) - inflight

    def timed_out(self, inflight: int) -> None:
        """No ack in time: the broker likely dropped what did not fit; send one block, wait longer."""
        self.ssthresh = max(2.0, inflight / 2)
        self.cwnd = 1.0
        self.timeout = min(self.timeout * 2, self.ack_timeout * 16)

    def progressed(self, blocks: int, delay: float | None, resending: bool) -> None:
        """An ack moved the stream by `blocks`; `delay` is the ack delay of a block sent once, if known."""
        if resending:
            self.cwnd += 1
        elif self.cwnd < self.ssthresh:
            self.cwnd += blocks
        else:
            self.cwnd += blocks / self.cwnd
        self.cwnd = min(self.cwnd, self.largest)
        if delay is not None:
            if self.srtt is None:
                self.srtt, self.rttvar = delay, delay / 2
            else:
                self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - delay)
                self.srtt = 0.875 * self.srtt + 0.125 * delay
            self.rto = min(self.ack_timeout, max(MIN_RTO, self.srtt + 4 * self.rttvar))
        self.timeout = self.rto
