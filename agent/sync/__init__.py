"""The sync stage: store-and-forward of sealed blocks over MQTT, acks back, remote policy updates.

Formats and behaviour: docs/sync.md. Typical use, beside the pipeline::

    syncer = Syncer(store_dir, vehicle_id, mqtt_config, outbound_streams)
    syncer.start()          # its own thread and its own SQLite connection
    ...
    syncer.notify()         # after a seal: send now rather than at the next poll
    syncer.stop()           # retained "offline" status, clean disconnect
"""

from typing import TYPE_CHECKING

from carledger._imports import lazy_exports

# Loaded on first use: a run without [mqtt] does not import paho-mqtt, ssl and http (docs/performance.md).
__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "topics": (),
    "ack": ("Ack", "AckRejected", "collector_key", "collector_keys", "enroll_collector", "open_ack", "sign_ack"),
    "config": ("MqttConfig", "mqtt_config_from_table"),
    "mqtt": ("Backoff",),
    "policy_update": ("PolicyRejected", "enroll_owner", "load_owner_key", "open_policy", "sign_policy", "submit_policy"),
    "quota": ("PROTECTED", "EvictionPlan", "plan_eviction", "seq_ranges"),
    "gate": ("OutboundGate", "OutboundStream", "outbound_streams"),
    "link": ("SyncLink",),
    "syncer": ("Disclosure", "Syncer", "SyncStats"),
    "wire": ("BlockPacker", "unpack_block"),
})

if TYPE_CHECKING:
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
    from carledger.sync.link import SyncLink
    from carledger.sync.syncer import Disclosure, Syncer, SyncStats
    from carledger.sync.wire import BlockPacker, unpack_block
