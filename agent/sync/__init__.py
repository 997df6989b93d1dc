"""The sync stage: store-and-forward of sealed blocks over MQTT, acks back, remote policy updates.

Formats and behaviour: docs/sync.md. Typical use, beside the pipeline::

    syncer = Syncer(store_dir, vehicle_id, mqtt_config, outbound_streams)
    syncer.start()          # its own thread and its own SQLite connection
    ...
    syncer.notify()         # after a seal: send now rather than at the next poll
    syncer.stop()           # retained "offline" status, clean disconnect
"""

from carledger.sync import topics
from carledger.sync.ack import Ack, AckRejected, collector_key, collector_keys, enroll_collector, open_ack, sign_ack
from carledger.sync.config import MqttConfig, mqtt_config_from_table
from carledger.sync.mqtt import Backoff
from carledger.sync.policy_update import (
    PolicyRejected,
    enroll_owner,
    load_owner_key,
    open_policy,
    sign_policy,
    submit_policy,
)
from carledger.sync.quota import PROTECTED, EvictionPlan, plan_eviction, seq_ranges
from carledger.sync.gate import OutboundGate, OutboundStream, outbound_streams
from carledger.sync.syncer import Disclosure, Syncer, SyncStats
from carledger.sync.wire import BlockPacker, unpack_block

__all__ = [
    "topics",
    "Ack",
    "AckRejected",
    "collector_key",
    "collector_keys",
    "enroll_collector",
    "open_ack",
    "sign_ack",
    "OutboundGate",
    "outbound_streams",
    "MqttConfig",
    "mqtt_config_from_table",
    "Backoff",
    "PolicyRejected",
    "enroll_owner",
    "load_owner_key",
    "open_policy",
    "sign_policy",
    "submit_policy",
    "PROTECTED",
    "EvictionPlan",
    "plan_eviction",
    "seq_ranges",
    "Disclosure",
    "OutboundStream",
    "Syncer",
    "SyncStats",
    "BlockPacker",
    "unpack_block",
]
