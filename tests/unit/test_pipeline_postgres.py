"""The pipeline's tests (test_pipeline.py) again, on a PostgreSQL store in a private cluster:
the same SQL through gateway/storage/postgres.py must give the same outcomes, acks and audit.
Left out: the two that fake SQLite's own failures with its PRAGMAs (query_only,
max_page_count; the PostgreSQL failures have their own tests, test_store_postgres.py), and the
two-process test, which has its PostgreSQL form here: with concurrent writers a reading is
classified against the cached device state, and the commit drops what another process stored
meanwhile (acknowledged as a duplicate)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.ingest.pipeline import Pipeline
from gateway.storage import location
from gateway.storage.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers_readings import Device  # noqa: E402
from test_pipeline import (  # noqa: E402,F401  (the fixtures and tests run here again)
    assert_audit_ok,
    devices,
    pipe,
    statuses,
    test_accept_commit_ack,
    test_batch_max_splits_into_entries,
    test_chain_break_is_recorded_and_still_anchored,
    test_equivocation_is_kept_first_and_recorded,
    test_feed_overlaps_commits_with_verification,
    test_gap_late_fill_and_watermark,
    test_nothing_is_acknowledged_before_commit_and_duplicates_are_acked_again,
    test_rejections_by_reason,
    test_reverse_order_in_one_batch_has_no_false_chain_break,
    test_revoke_and_rotate_keep_old_readings_verifiable,
    test_seq0_must_have_zero_prev,
    test_submit_again_after_a_storage_error,
)


@pytest.fixture
def store(tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """A fresh ledger in PostgreSQL; Store.open(DIR) in the test opens it too (as --store)."""
    monkeypatch.setattr(location, "command_line_store", pg_url)
    s, _ = Store.create(tmp_path / "data", pg_url)
    assert s.engine == "postgresql"
    try:
        yield s
    finally:
        s.close()


def test_two_gateways_on_one_ledger(store: Store, devices: list[Device]) -> None:  # noqa: F811
    """Two pipelines on two connections with overlapping readings (one device's readings
    spread over both, as a shared subscription does): each commit reconciles its batch under
    the sequencer lock; nothing is stored twice; acks cover what is anchored; one chain."""
    a, b, _ = devices
    msgs = a.readings(60) + b.readings(60)
    other = Store.open(store.data_dir)
    assert other.engine == "postgresql"
    p1 = Pipeline(store, batch_max=4096, workers=1)
    p2 = Pipeline(other, batch_max=4096, workers=1)
    p1.submit(msgs[:80:2] + msgs[1:80:2])
    p2.submit(msgs[40:])  # 40 of these are in p1's open batch too
    r2 = p2.commit()
    r1 = p1.commit()  # reconciled with what p2 stored
    assert r1 is not None and r2 is not None
    assert r2.readings == 80 and r1.readings == 40
    assert store.reading_count() == 120
    assert r1.acks["d0"].upto == 59 and r2.acks["d1"].upto == 59
    assert set(r1.acks) == {"d0", "d1"}  # d1's seqs 0..19 are p1's, 20..39 acked as stored
    # a redelivery of readings the other stored: acknowledged, never stored again
    p1.submit(msgs[100:105])
    r3 = p1.commit()
    assert r3 is not None and r3.readings == 0 and r3.acks["d1"].upto == 59
    assert store.query("SELECT COUNT(*) FROM events") == [(0,)]
    p1.close()
    p2.close()
    other.close()
    assert_audit_ok(store)


def test_equivocation_across_gateways(store: Store, devices: list[Device]) -> None:  # noqa: F811
    """Two messages for one (dev, seq) with different bytes, one at each gateway, neither
    stored when classified: the first commit stores its own, the second finds it under the
    lock and records an equivocation; one seq, one message, the audit holds."""
    a = devices[0]
    good = a.readings(3)
    evil = a.message(1, bytes(32), {"t": -1})
    other = Store.open(store.data_dir)
    p1 = Pipeline(store, batch_max=4096, workers=1)
    p2 = Pipeline(other, batch_max=4096, workers=1)
    assert statuses(p1.submit(good)) == ["accepted"] * 3
    assert statuses(p2.submit([evil])) == ["accepted"]  # it cannot know yet
    assert p1.commit() is not None
    r2 = p2.commit()
    assert r2 is not None and r2.readings == 0
    assert store.query("SELECT seq, cose FROM readings WHERE dev = 'd0' AND seq = 1") == [
        (1, good[1])]
    assert store.query("SELECT kind, dev, seq FROM events") == [("equivocation", "d0", 1)]
    assert store.rejected_counts() == {"equivocation": 1}
    p1.close()
    p2.close()
    other.close()
    assert_audit_ok(store)
