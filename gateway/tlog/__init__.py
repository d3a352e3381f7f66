"""The transparency-log parties around the gateway: witnesses, the gateway's witness client,
mirrors (docs/tlog.md).

Modules: `witness_state` (a witness's durable state, SQLite), `witness_server` (C2SP
tlog-witness over HTTP: `iot-anchor witness serve`), `witness_client` (the gateway sending its
checkpoints to witnesses, `run --witness`), `mirror` (`iot-anchor mirror`), `evidence` (fork
and rollback evidence: writing and checking it), `fetch` (bounded HTTP GETs of a log).
The pure formats they use are in gateway/ledger (tiles, cosignature, note).
"""
