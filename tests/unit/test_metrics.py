"""gateway.observe.metrics: the exposition parses with prometheus-client's own parser and says
what was committed; the ledger's figures as gauges."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.observe.metrics import (
    WITNESS_FAILING,
    WITNESS_OK,
    WITNESS_UNKNOWN,
    LedgerFigures,
    LiveGauges,
    ServiceMetrics,
    ledger_exposition,
)


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode())
            for s in fam.samples}


def test_service_metrics_count_per_commit() -> None:
    live = LiveGauges(inbox=3, verifying=256, acks_in_flight=7, acks_waiting=2,
                      connected=True, received=1000,
                      witnesses=(("w1", "ok", 1234), ("w2", "error", 0), ("w3", "pending", 0)))
    m = ServiceMetrics(lambda: live)
    m.committed(400, 0.012, {"bad_signature": 2})
    m.committed(0, 0.003, {"bad_signature": 1, "unknown_device": 4})
    s = samples(m.exposition())
    assert s[("iot_anchor_readings_anchored_total", ())] == 400
    assert s[("iot_anchor_readings_refused_total", (("reason", "bad_signature"),))] == 3
    assert s[("iot_anchor_readings_refused_total", (("reason", "unknown_device"),))] == 4
    assert s[("iot_anchor_batches_total", ())] == 1
    assert s[("iot_anchor_batch_readings_count", ())] == 1
    assert s[("iot_anchor_batch_readings_bucket", (("le", "256.0"),))] == 0
    assert s[("iot_anchor_batch_readings_bucket", (("le", "512.0"),))] == 1
    assert s[("iot_anchor_commit_seconds_count", ())] == 2
    assert abs(s[("iot_anchor_commit_seconds_sum", ())] - 0.015) < 1e-9
    assert s[("iot_anchor_verify_queue_messages", ())] == 256
    assert s[("iot_anchor_inbox_messages", ())] == 3
    assert s[("iot_anchor_acks_in_flight", ())] == 7
    assert s[("iot_anchor_broker_connected", ())] == 1
    assert s[("iot_anchor_messages_received_total", ())] == 1000
    assert s[("iot_anchor_witnesses", ())] == 3
    assert s[("iot_anchor_witness_status", (("witness", "w1"),))] == WITNESS_OK
    assert s[("iot_anchor_witness_status", (("witness", "w2"),))] == WITNESS_FAILING
    assert s[("iot_anchor_witness_status", (("witness", "w3"),))] == WITNESS_UNKNOWN
    assert s[("iot_anchor_witness_cosigned_size", (("witness", "w1"),))] == 1234
    assert s[("process_resident_memory_bytes", ())] > 1e6
    snap = m.snapshot()
    assert snap["anchored"] == 400 and snap["refused"] == {"bad_signature": 3,
                                                           "unknown_device": 4}


def test_ledger_exposition() -> None:
    f = LedgerFigures(readings=10, entries=4, devices=3, revoked=1, checkpoint_size=4,
                      checkpoint_time_ms=1_700_000_000_000, rejected={"too_large": 2},
                      events={"chain_break": 1}, cosignatures=1,
                      witnesses=({"witness": "w1", "size": 4, "state": "ok", "t": 5000},))
    s = samples(ledger_exposition(f))
    assert s[("iot_anchor_ledger_readings", ())] == 10
    assert s[("iot_anchor_ledger_size", ())] == 4
    assert s[("iot_anchor_ledger_refused", (("reason", "too_large"),))] == 2
    assert s[("iot_anchor_ledger_security_events", (("kind", "chain_break"),))] == 1
    assert s[("iot_anchor_ledger_checkpoint_timestamp_seconds", ())] == 1_700_000_000
    assert s[("iot_anchor_ledger_cosignatures", ())] == 1
    assert s[("iot_anchor_ledger_witness_state", (("state", "ok"), ("witness", "w1")))] == 1
    assert s[("iot_anchor_ledger_witness_cosigned_size", (("witness", "w1"),))] == 4
    assert s[("iot_anchor_ledger_witness_seen_timestamp_seconds", (("witness", "w1"),))] == 5


def test_the_grafana_dashboard_uses_only_exposed_metrics() -> None:
    import json
    import re
    from pathlib import Path

    dash = json.loads((Path(__file__).resolve().parents[2] / "docs" /
                       "grafana-dashboard.json").read_text())
    used = {m for p in dash["panels"] for t in p["targets"]
            for m in re.findall(r"\b(?:iot_anchor|process)_[a-z_]+\b", t["expr"])}
    m = ServiceMetrics(LiveGauges)
    m.committed(1, 0.01, {"too_large": 1})
    f = LedgerFigures(readings=1, entries=1, devices=1, revoked=0, checkpoint_size=1,
                      checkpoint_time_ms=1, rejected={"too_large": 1}, events={"x": 1},
                      witnesses=({"witness": "w", "size": 1, "state": "ok", "t": 1},))
    exposed = set(samples(m.exposition() + ledger_exposition(f)))
    names = {n for n, _ in exposed}
    assert used and used <= names, sorted(used - names)
