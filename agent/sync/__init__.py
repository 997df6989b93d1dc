"""The sync stage: store-and-forward of sealed blocks over MQTT, acks back, remote policy updates.

Formats and behaviour: docs/sync.md. Typical use, beside the pipeline::

    syncer = Syncer(store_dir, vehicle_id, mqtt_config, outbound_streams)
    syncer.start()          # its own thread and its own SQLite connection
    ...
    syncer.notify()         # after a seal: send now rather than at the next poll
    syncer.stop()           # retained "offline" status, clean disconnect
"""

from carledger.sync import topics
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
from carledger.sync.syncer import Disclosure, OutboundStream, Syncer, SyncStats
from carledger.sync.wire import BlockPacker, decode_ack, encode_ack, unpack_block

__all__ = [
    "topics",
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
    "decode_ack",
    "encode_ack",
    "unpack_block",
]
