"""The Pipeline: classification, batching, acks, chains, registry changes, storage failures."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audit.store_audit import audit
from gateway.errors import StorageError
from gateway.fleet import registry
from gateway.ingest.pipeline import REASONS, Pipeline
from gateway.ledger import merkle
from gateway.storage.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers_readings import Device, high_s_twin  # noqa: E402


@pytest.fixture
def devices(store: Store) -> list[Device]:
    devs = [Device(f"d{i}") for i in range(3)]
    for d in devs:
        registry.add(store, d.id, d.public_bytes)
    return devs


@pytest.fixture
def pipe(store: Store, devices: list[Device]) -> Iterator[Pipeline]:
    p = Pipeline(store, batch_max=64, workers=2)
    try:
        yield p
    finally:
        p.close()


def statuses(outs: list) -> list[str]:
    return [o.status if o.status != "rejected" else o.reason for o in outs]


def assert_audit_ok(store: Store) -> None:
    res = audit(store, store.vkey())
    assert res.ok, res.problems


def test_accept_commit_ack(store: Store, devices: list[Device], pipe: Pipeline) -> None:
    a, b, _ = devices
    msgs = a.readings(5) + b.readings(3)
    outs = pipe.submit(msgs)
    assert statuses(outs) == ["accepted"] * 8
    assert [(o.dev, o.seq) for o in outs[:2]] == [("d0", 0), ("d0", 1)]
    assert pipe.pending() == 8
    res = pipe.commit()
    assert res is not None and pipe.pending() == 0
    assert res.readings == 8 and len(res.entries) == 1 and res.entry == res.entries[0]
    assert res.acks["d0"].upto == 4 and res.acks["d0"].seqs == []
    assert res.acks["d1"].upto == 2 and res.acks["d1"].entry == res.entry
    assert res.root == merkle.root([merkle.leaf_hash(m) for m in msgs])
    assert res.checkpoint is not None and f"\n{res.size}\n" in res.checkpoint
    assert pipe.commit() is None
    assert_audit_ok(store)


def test_nothing_is_acknowledged_before_commit_and_duplicates_are_acked_again(
        store: Store, devices: list[Device], pipe: Pipeline) -> None:
    a = devices[0]
    msgs = a.readings(4)
    assert statuses(pipe.submit(msgs + [msgs[1]])) == ["accepted"] * 4 + ["duplicate"]
    first = pipe.commit()
    assert first is not None and first.acks["d0"].upto == 3
    assert statuses(pipe.submit([msgs[2]])) == ["duplicate"]
    again = pipe.commit()
    assert again is not None and again.entries == [] and again.acks["d0"].upto == 3
    assert store.reading_count() == 4


def test_stored_copies_are_answered_without_verifying_again(
        store: Store, devices: list[Device], pipe: Pipeline) -> None:
    """Once a submission is 1/16 duplicates, messages that are byte for byte stored readings
    are answered "duplicate" before the verifier pool and acknowledged again; a copy on
    another device's topic, a message that differs in one byte, one in the open batch only,
    and a copy from a device revoked since are still verified and classified as before."""
    from gateway.wire.cose import identity

    a, b, _ = devices
    stored = a.readings(4) + b.readings(2)
    assert all(identity(m) is not None for m in stored)  # the firmware's layout: the fast path
    pipe.submit(stored)
    pipe.commit()
    assert statuses(pipe.submit(stored[:2])) == ["duplicate"] * 2  # verified: none expected
    fresh = a.next()
    flipped = bytearray(stored[3])
    flipped[-1] ^= 1
    msgs = [stored[0], (stored[1], "d1"), fresh, bytes(flipped), stored[4], (stored[2], "d0")]
    sub = pipe.start(msgs)
    assert sorted(sub.copies) == [0, 4, 5] and len(sub.raws) == 3
    assert statuses(pipe.finish(sub)) == ["duplicate", "topic_mismatch", "accepted",
                                          "bad_signature", "duplicate", "duplicate"]
    assert [o.seq for o in pipe.submit([fresh])] == [4]  # in the open batch: verified
    res = pipe.commit()
    assert res is not None and res.acks["d0"].upto == 4 and res.acks["d1"].upto == 1
    other = Store.open(store.data_dir)
    registry.revoke(other, "d1")
    other.close()
    assert statuses(pipe.submit([stored[4], stored[0]])) == ["revoked_device", "duplicate"]
    assert store.reading_count() == 7
    assert_audit_ok(store)


def test_gap_late_fill_and_watermark(store: Store, devices: list[Device], pipe: Pipeline) -> None:
    a = devices[0]
    msgs = a.readings(10)
    pipe.submit(msgs[:3] + msgs[6:8])
    res = pipe.commit()
    assert res is not None
    assert res.acks["d0"].upto == 2 and res.acks["d0"].seqs == [6, 7]
    # gaps are reported by the store
    assert store.gaps()["d0"] == [[3, 5]]
    # late readings fill the gap: accepted, the watermark jumps over the stored ones
    assert statuses(pipe.submit([msgs[4], msgs[3], msgs[5]])) == ["accepted"] * 3
    res = pipe.commit()
    assert res is not None and res.acks["d0"].upto == 7 and res.acks["d0"].seqs == []
    assert store.device("d0").upto == 7  # type: ignore[union-attr]
    assert store.gaps().get("d0", []) == []
    assert_audit_ok(store)


def test_equivocation_is_kept_first_and_recorded(store: Store, devices: list[Device],
                                                 pipe: Pipeline) -> None:
    a = devices[0]
    first = a.message(0, bytes(32), {"t": 1})
    second = a.message(0, bytes(32), {"t": 2})
    assert statuses(pipe.submit([first, second])) == ["accepted", "equivocation"]
    pipe.commit()
    third = a.message(0, bytes(32), {"t": 3})
    assert statuses(pipe.submit([third])) == ["equivocation"]
    pipe.commit()
    assert store.stored_cose("d0", 0) == first
    ev = store.query("SELECT kind, dev, seq, cose FROM events ORDER BY id")
    assert [(k, d, s, bytes(c)) for k, d, s, c in ev] == [
        ("equivocation", "d0", 0, second), ("equivocation", "d0", 0, third)]
    assert store.rejected_counts() == {"equivocation": 2}
    assert_audit_ok(store)


def test_chain_break_is_recorded_and_still_anchored(store: Store, devices: list[Device],
                                                    pipe: Pipeline) -> None:
    a = devices[0]
    m0 = a.message(0, bytes(32))
    m1 = a.message(1, hashlib.sha256(m0).digest())
    m2 = a.message(2, b"\x01" * 32)  # wrong prev
    m5 = a.message(5, b"\x02" * 32)  # after a gap: cannot be checked, no event
    assert statuses(pipe.submit([m0, m1, m2, m5])) == ["accepted"] * 4
    pipe.commit()
    ev = store.query("SELECT kind, dev, seq FROM events")
    assert ev == [("chain_break", "d0", 2)]
    # late seq 4 whose hash is not m5's prev: the break is recorded on seq 5
    m4 = a.message(4, b"\x03" * 32)
    pipe.submit([m4])
    pipe.commit()
    assert sorted(store.query("SELECT seq FROM events WHERE kind = 'chain_break'")) == [(2,), (5,)]
    assert_audit_ok(store)


def test_seq0_must_have_zero_prev(store: Store, devices: list[Device], pipe: Pipeline) -> None:
    pipe.submit([devices[0].message(0, b"\x09" * 32)])
    pipe.commit()
    assert store.query("SELECT kind, seq FROM events") == [("chain_break", 0)]
    assert_audit_ok(store)


def test_rejections_by_reason(store: Store, devices: list[Device], pipe: Pipeline) -> None:
    a, b, _ = devices
    stranger = Device("stranger")
    good = a.next()
    outs = pipe.submit([
        b"\x00\x01", stranger.next(), high_s_twin(good), (b.next(), "d0"),
        a.message(9, bytes(32), dev="d1"), good[:-1] + bytes([good[-1] ^ 1]),
        b"\xd2" + b"\x81" * 300, good,
    ])
    assert statuses(outs) == ["not_tag18", "unknown_device", "high_s", "topic_mismatch",
                              "dev_kid_mismatch", "bad_signature", "not_array4", "accepted"]
    assert all(o.reason in REASONS for o in outs if o.reason)
    pipe.commit()
    counts = store.rejected_counts()
    assert counts["unknown_device"] == 1 and counts["high_s"] == 1 and sum(counts.values()) == 7


def test_revoke_and_rotate_keep_old_readings_verifiable(store: Store, devices: list[Device],
                                                        pipe: Pipeline) -> None:
    a, b, _ = devices
    pipe.submit(a.readings(3) + b.readings(3))
    pipe.commit()
    # rotation by another connection (like the CLI in another process)
    other = Store.open(store.data_dir)
    new_key = Device("d0")
    registry.rotate(other, "d0", new_key.public_bytes)
    registry.revoke(other, "d1")
    other.close()
    new_key.seq, new_key.prev = a.seq, a.prev
    outs = pipe.submit([a.next(), new_key.next(), b.next()])
    assert statuses(outs) == ["bad_signature", "accepted", "revoked_device"]
    pipe.commit()
    assert_audit_ok(store)
    keys = store.query("SELECT dev, from_entry, until_entry FROM device_keys ORDER BY dev, "
                       "from_entry")
    assert [k[0] for k in keys] == ["d0", "d0", "d1", "d2"]
    assert keys[0][2] is not None and keys[1][2] is None


def test_batch_max_splits_into_entries(store: Store, devices: list[Device]) -> None:
    with Pipeline(store, batch_max=10, workers=2) as p:
        p.submit(devices[0].readings(25))
        res = p.commit()
    assert res is not None and len(res.entries) == 3 and res.readings == 25
    assert [n for (n,) in store.query("SELECT n FROM batches ORDER BY entry")] == [10, 10, 5]
    assert_audit_ok(store)


def test_commit_failure_acks_nothing_and_retries(store: Store, devices: list[Device],
                                                 tmp_path: Path) -> None:
    a = devices[0]
    p = Pipeline(store, batch_max=64, workers=1)
    p.submit(a.readings(5))
    p.commit()
    p.submit(a.readings(5))
    store.conn.execute("PRAGMA query_only=ON")  # every write now fails like a read-only disk
    with pytest.raises(StorageError) as info:
        p.commit()
    assert "ledger.db" in info.value.what and info.value.hint
    assert p.pending() == 5
    assert store.reading_count() == 5
    store.conn.execute("PRAGMA query_only=OFF")
    res = p.commit()
    assert res is not None and res.acks["d0"].upto == 9
    p.close()
    assert_audit_ok(store)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.binary(max_size=200), st.integers(0, 7)), max_size=20))
def test_pipeline_never_crashes_only_rejects(pipe: Pipeline, devices: list[Device],
                                             items: list) -> None:
    base = devices[2].message(3, bytes(32))
    msgs = []
    for x in items:
        if isinstance(x, int):  # a mutation of a valid message
            msgs.append(base[: len(base) - x * 7] + bytes(x))
        else:
            msgs.append(x)
    outs = pipe.submit(msgs)
    assert len(outs) == len(msgs)
    for o in outs:
        assert o.status in ("accepted", "duplicate", "rejected")
        assert o.status != "rejected" or o.reason in REASONS
    pipe.commit()


def test_disk_full_is_a_storage_error_and_recovers(store: Store, devices: list[Device]) -> None:
    a = devices[0]
    p = Pipeline(store, batch_max=4096, workers=1)
    p.submit(a.readings(3))
    p.commit()
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL on the next growth
    p.submit(a.readings(500))
    with pytest.raises(StorageError) as info:
        p.commit()
    assert "full" in info.value.what and "free space" in info.value.hint
    assert store.reading_count() == 3 and p.pending() == 500
    store.conn.execute("PRAGMA max_page_count = 1073741823")
    res = p.commit()
    assert res is not None and res.acks["d0"].upto == 502
    p.close()
    assert_audit_ok(store)


def test_reverse_order_in_one_batch_has_no_false_chain_break(store: Store,
                                                             devices: list[Device]) -> None:
    msgs = devices[0].readings(300)
    with Pipeline(store, batch_max=4096, workers=2) as p:
        assert statuses(p.submit(list(reversed(msgs)))) == ["accepted"] * 300
        res = p.commit()
    assert res is not None and res.acks["d0"].upto == 299 and res.acks["d0"].seqs == []
    assert store.query("SELECT COUNT(*) FROM events") == [(0,)]
    assert_audit_ok(store)


def test_feed_overlaps_commits_with_verification(store: Store, devices: list[Device]) -> None:
    from gateway.ingest.pipeline import feed

    a, b, _ = devices
    msgs = [m for pair in zip(a.readings(200), b.readings(200), strict=True) for m in pair]
    msgs.insert(50, b"junk")
    commits: list = []
    statuses_seen: list[str] = []
    with Pipeline(store, batch_max=64, workers=2) as p:
        feed(p, (msgs[i:i + 37] for i in range(0, len(msgs), 37)),
             lambda outs: statuses_seen.extend(o.status for o in outs), commits.append)
    assert statuses_seen.count("accepted") == 400 and statuses_seen.count("rejected") == 1
    assert sum(c.readings for c in commits) == 400
    # acks are monotonic and end at the last seq
    assert commits[-1].acks["d0"].upto == 199 and commits[-1].acks["d1"].upto == 199
    ups = [c.acks["d0"].upto for c in commits if "d0" in c.acks]
    assert ups == sorted(ups)
    assert store.rejected_counts() == {"not_tag18": 1}
    assert_audit_ok(store)


def test_two_processes_on_one_ledger(store: Store, devices: list[Device]) -> None:
    """Two pipelines on two connections (like `run` and an `ingest` at the same time) with
    overlapping readings: each commit re-checks its open batch, nothing is stored twice, the
    ledger stays consistent."""
    a, b, _ = devices
    msgs = a.readings(60) + b.readings(60)
    other = Store.open(store.data_dir)
    p1 = Pipeline(store, batch_max=4096, workers=1)
    p2 = Pipeline(other, batch_max=4096, workers=1)
    p1.submit(msgs[:80])
    p2.submit(msgs[40:])  # 40 of these are in p1's open batch too
    r2 = p2.commit()
    r1 = p1.commit()  # its batch is re-checked against what p2 stored
    assert r1 is not None and r2 is not None
    assert store.reading_count() == 120
    assert r1.acks["d0"].upto == 59 and r2.acks["d1"].upto == 59
    # afterwards each sees the other's readings as duplicates
    assert statuses(p1.submit(msgs[100:105])) == ["duplicate"] * 5
    p1.commit()
    p1.close()
    p2.close()
    other.close()
    assert_audit_ok(store)


def test_submit_again_after_a_storage_error(store: Store, devices: list[Device],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    a = devices[0]
    msgs = a.readings(10)
    with Pipeline(store, batch_max=4096, workers=1) as p:
        p.submit(msgs[5:8])
        p.commit()
        real = store.stored_cose
        calls = {"n": 0}

        def flaky(dev: str, seq: int) -> bytes | None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise StorageError("reading the database failed: disk I/O error", "retry")
            return real(dev, seq)

        monkeypatch.setattr(store, "stored_cose", flaky)
        batch = msgs[8:] + msgs[:5]  # seq 8, 9 are new; 0..4 are late and need lookups
        with pytest.raises(StorageError):
            p.submit(batch)
        outs = p.submit(batch)  # the same messages again
        assert [o.status for o in outs] == ["duplicate"] * 2 + ["accepted"] * 5
        res = p.commit()
    assert res is not None and res.acks["d0"].upto == 9
    assert store.reading_count() == 10
    assert_audit_ok(store)


def test_the_verifiers_send_values_only_when_asked(store: Store, devices: list[Device]) -> None:
    """check_chunk with values: each accepted reading's (ts, data) as the strict decoder gives
    them, on the fast path and on the strict decoder's (a layout the fast path leaves to it);
    without: the five fields alone. Refusals are the same either way."""
    from gateway.ingest.pipeline import check_chunk, prepare_keys
    from gateway.wire.cose import decode, fields

    a, b = devices[0], devices[1]
    fast = a.next({"t": 21.5, "h": 40}, ts=None)
    odd = b.message(0, bytes(32), {"t": 1.0}, extra={"zz": 1})  # not the firmware's layout
    bad = bytearray(a.next({"t": 3.0}))
    bad[-1] ^= 1
    assert fields(fast) is not None and fields(odd) is None
    sent = {row.id: (bytes(row.key), row.status) for row in store.devices()}
    items = [(fast, None), (odd, None), (bytes(bad), None), (b"\x00", None)]
    plain = check_chunk(prepare_keys((2048, sent, False)), items)
    with_values = check_chunk(prepare_keys((2048, sent, True)), items)
    assert [len(x) for x in plain[:2]] == [5, 5]
    assert with_values[:2] == [(*plain[0], (None, {"h": 40, "t": 21.5})),
                               (*plain[1], (1_700_000_000, {"t": 1.0}))]
    assert decode(odd).data == {"t": 1.0}
    assert with_values[2:] == plain[2:] == [("bad_signature", "d0"), "not_tag18"]


def test_a_rule_set_applied_while_running_reads_the_readings_of_both_kinds(
        store: Store, devices: list[Device]) -> None:
    """Readings verified before a rule set was applied carry no values (the commit decodes
    them); after the commit that sees the rules, the verifiers send them. Both fire alike."""
    import hashlib as h

    from gateway.audit.store_audit import audit as check

    a = devices[0]
    with Pipeline(store, batch_max=64, workers=1) as p:
        p.submit([a.next({"t": 40.0})])
        p.commit()  # no rules yet
        p.submit([a.next({"t": 41.0})])  # verified without values
        text = '[[rule]]\nname = "hot"\nwhen = "data.t > 30.0"\naction = { type = "alert" }\n'
        store.apply_rules(store.load_signer(), text, h.sha256(text.encode()).digest())
        p.commit()  # sees the rules: decodes this batch's reading, asks for values from now on
        p.submit([a.next({"t": 42.0}), a.next({"t": 1.0})])
        p.commit()
    fired = [r.fields["readings"][0][1] for r in store.records("action")]
    assert fired == [1, 2]
    assert check(store, store.vkey()).ok
