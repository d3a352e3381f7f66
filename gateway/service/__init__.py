"""`iot-anchor run`: the MQTT service that feeds the pipeline and acknowledges anchored readings.

Data flow (one asyncio loop, one worker thread that owns the pipeline and its SQLite handle):

    broker --PUBLISH anchor/<id>/readings (QoS 1)--> client on_publish --> inbox (list)
    processor: inbox --start/finish--> pipeline (worker thread) --commit--> CommitResult
    after the commit:  PUBACK the broker for every message of the batch, in arrival order;
                       publish anchor/<id>/ack (QoS 1, sealed by downlink.Downlink: a COSE_Mac0
                       over {"ctr", "upto", "seqs", "entry"});
                       publish anchor/checkpoint (retained, the signed note's text).
    broker --PUBLISH anchor/<id>/confirm--> verified (Downlink.verify_confirmation) -->
                       on_confirmation(conf), then PUBACKed; send_command(cmd) publishes a
                       sealed command on anchor/<id>/cmd and returns on its PUBACK.

Durability. A reading is acknowledged to its device only after the SQLite transaction that
stores it has committed, and so is the broker's PUBACK (`--puback commit`, the default): with
the persistent session (clean session off, a stable client id from the gateway key) the broker
redelivers every message the gateway had not PUBACKed when it reconnects, and queues what
arrives while it is down; the pipeline counts redelivered copies of committed readings as
duplicates and acknowledges them again. The broker holds each reading in flight until its
batch commits, so its per-client in-flight limit must be off for the gateway
(`max_inflight_messages 0`; `iot-anchor broker-config` and PrivateBroker write it).
`--puback receipt` PUBACKs on arrival, for brokers that cannot be configured so; the device
outbox is then the only safety net. It always is the end-to-end one: a device republishes every
reading not acknowledged as anchored after its ack timeout and after each reconnect.

A message that arrived on a previous connection is not PUBACKed on a new one (packet ids are
per connection); the broker redelivers it and the pipeline counts the copy as a duplicate.

Memory bound. After an outage the broker sends the session's whole backlog at once. At
`inbox_max` waiting messages (default max(8 x batch_max, 32768)) the service stops reading the
broker's socket until half of them are worked off (TCP back-pressure: the backlog waits in the
broker). Acks wait coalesced per device (`acks.AckOutbox`), at most ACKS_INFLIGHT_MAX of them
unPUBACKed by the broker.

Storage faults. A failed start, finish or commit is logged with its reason and retried after
0.5 s, doubling up to 10 s while the failures go on (a PostgreSQL restart, a network cut);
nothing is PUBACKed or acknowledged meanwhile, and the messages keep waiting.

Several gateways (`run --shared GROUP`, a PostgreSQL store): MQTT 5, a clean session on
$share/GROUP/anchor/+/readings, so the broker spreads the readings over the group and a
gateway that goes away leaves it at once; what it had not PUBACKed (not committed) is gone
from the broker, and the devices republish it after their ack timeout, to a live member.
Appends are serialised by the store's sequencer (gateway/storage/postgres.py).

Modules: `config` (ServiceConfig), `port` (the pipeline as the service sees it), `acks` (acks
waiting to be published), `runner` (GatewayService), `resources` (what the process reports).
"""

from gateway.service.config import DEFAULT_BROKER, ServiceConfig
from gateway.service.runner import GatewayService, run_service

__all__ = ["DEFAULT_BROKER", "GatewayService", "ServiceConfig", "run_service"]
