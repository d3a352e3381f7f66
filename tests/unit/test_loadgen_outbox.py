"""The load engine's outbox republishes as the firmware's does (firmware/anchor/device.py,
Loop.publish_due and Loop.ack_wait): after a wait that follows the acks' delay, backing off
when even that wait passes without an ack, and everything after a reconnect."""

from __future__ import annotations

from gateway.sim.loadgen import ACK_SPAN, SimDevice, ack_wait, smoothed


def _device(published: dict[int, float]) -> SimDevice:
    d = SimDevice("load-0000", [])
    for seq, t in published.items():
        d.sent_at[seq] = d.last_sent[seq] = t
        d.waiting[seq] = None
    return d


def test_ack_wait_bounds() -> None:
    assert ack_wait(-1.0, 30.0) == 30.0           # nothing measured yet
    assert ack_wait(10.0, 30.0) == 30.0           # fast acks: the configured timeout
    assert ack_wait(20.0, 30.0) == 40.0           # twice the delay
    assert ack_wait(1e6, 30.0) == 30.0 * ACK_SPAN  # at most ACK_SPAN times the timeout


def test_smoothed_takes_the_first_sample_then_an_eighth() -> None:
    assert smoothed(-1.0, 40.0) == 40.0
    assert smoothed(40.0, 0.0) == 35.0


def test_due_backs_off_when_no_ack_came_within_the_wait() -> None:
    d = _device({0: 0.0, 1: 5.0, 2: 29.0})
    assert d.due(29.9, 30.0, reconnected=False) == []
    assert d.ack_delay == -1.0
    assert d.due(35.0, 30.0, reconnected=False) == [0, 1]   # 30 s old and more
    assert d.ack_delay == 30.0 and ack_wait(d.ack_delay, 30.0) == 60.0
    d.last_sent[0] = d.last_sent[1] = 35.0                  # published again (the caller)
    assert d.due(80.0, 30.0, reconnected=False) == []       # 2 is 51 s old: within 60
    assert d.due(89.0, 30.0, reconnected=False) == [2]
    assert d.ack_delay == 60.0                              # next wait 120 s
    for _ in range(4):                                      # and on: at most the cap
        d.due(d.last_sent[2] + 1e4, 30.0, reconnected=False)
    assert ack_wait(d.ack_delay, 30.0) == 30.0 * ACK_SPAN


def test_due_after_a_reconnect_is_everything_waiting_without_backing_off() -> None:
    d = _device({3: 0.0, 1: 100.0, 2: 100.0})
    assert d.due(100.0, 30.0, reconnected=True) == [1, 2, 3]
    assert d.ack_delay == -1.0
