"""The sync stage as the agent runs it: its syncer, its witness thread, and the acks they bring back.

The pipeline starts a `SyncLink` once the store is open and stops it in two
steps: the syncer first (every ack it took then reaches the audit stream
before the last seal), the witness thread after the ledger closed (its last
round carries the checkpoints the close signed). Neither thread touches the
pipeline's state: the syncer reads the outbound streams through a function
and hands disclosures over a deque, which the pipeline thread drains into
the audit (`audit`) once per round.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, Callable

Disclose = Callable[[Any], None]  # a Disclosure (carledger.sync.syncer) into the owner's audit


class SyncLink:
    """Syncer ([mqtt]) and witness thread ([[witness]]) of one agent; neither, when not configured."""

    def __init__(self, store: str | Path, vehicle_id: str, mqtt: Any, witnesses: list, signer: Any,
                 policy: Callable[[], Any], disclose: Disclose):
        self._store = store
        self._vehicle_id = vehicle_id
        self._mqtt = mqtt
        self._witnesses = witnesses
        self._signer = signer
        self._policy = policy  # the policy in effect (its recipients' streams go out)
        self._disclose = disclose
        self._outbound: dict[str, Any] = {}  # what the syncer may send: read from its thread, replaced whole
        self._disclosures: collections.deque = collections.deque()  # acked by the collector, for the audit
        self.syncer: Any = None
        self.witness_thread: Any = None

    @property
    def running(self) -> bool:
        """True while a syncer or witness thread runs: another connection may read what the store commits."""
        return self.syncer is not None or self.witness_thread is not None

    def start(self) -> None:
        if self._witnesses:
            from carledger.sync.witnesses import WitnessThread

            self.witness_thread = WitnessThread(self._store, self._witnesses)
            self.witness_thread.start()
        if self._mqtt is None:
            return
        from carledger.sync import Syncer

        self.refresh()
        self.syncer = Syncer(self._store, self._vehicle_id, self._mqtt, lambda: self._outbound,
                             on_disclosure=self._disclosures.append, signer=self._signer)
        self.syncer.start()

    def refresh(self) -> None:
        """The policy's streams for a recipient, each until its consent ends (the syncer checks them again)."""
        if self._mqtt is None:
            return  # nothing goes out: nothing to work out
        from carledger.sync import outbound_streams

        self._outbound = outbound_streams(self._policy())

    def notify(self) -> None:
        """Blocks were sealed: the syncer sends now rather than at its next poll."""
        if self.syncer is not None:
            self.syncer.notify()

    def audit(self) -> None:
        """The collector acked blocks of a stream: the audit stream says who got which blocks."""
        while self._disclosures:
            self._disclose(self._disclosures.popleft())

    def stop_sync(self) -> None:
        """Stop the syncer first, so that every ack it took is in the audit before the last seal."""
        if self.syncer is None:
            return
        syncer, self.syncer = self.syncer, None
        syncer.stop()
        self.audit()

    def stop_witnesses(self) -> None:
        """After the ledger closed: the witness thread's last round then carries the checkpoints the close signed."""
        witness_thread, self.witness_thread = self.witness_thread, None
        if witness_thread is not None:
            witness_thread.stop()
