"""The deterministic rule engine (pure): readings in ledger order, and gateway times, in;
firings out. The gateway runs it at each commit; `ledger verify` runs it again over the stored
readings and compares (docs/rules.md, "Audit").

Inputs, all recorded in the ledger or in the firing itself:

* `batch(readings, t)`: the readings of one batch entry, in leaf order, with the batch entry's
  gateway time t (its "t" field). Each reading is (dev, seq, leaf hash, ts, data).
* `tick(now)`: silence rules at gateway time `now`; the gateway ticks after every batch (with
  the batch's t) and about once a second between batches (the firing records its `now`).
* `rejected(dev, reason, now)`: one refusal, for rejection rules (rejections are not stored
  in the ledger; a firing records the refusal times it used).

State per (rule, device), kept in an overlay during a commit: `begin()`, then `commit()` once
the transaction is durable or `rollback()` when it failed, so a retried commit sees the same
state. `pending()` lists the states the open transaction wrote, for the store.

  readings rule: (fired, last_fired, run) with run = the consecutive matching readings that
                 have not fired yet ([dev, seq, leaf], fewer than `for`)
  silence rule:  (fired, last_fired, seen, armed): seen = gateway time of the device's last
                 batch; armed = no silence firing since then
  rejections:    (fired, last_fired, times): refusal times within the window, oldest first
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.rules.condition import Combined, Condition, activation, combine
from gateway.rules.model import Rule, RuleSet

Reading = tuple[str, int, bytes, "int | None", dict[str, Any]]  # dev, seq, leaf, ts, data
State = tuple[Any, ...]
Key = tuple[int, str]  # (rule index, device)
MAX_SPLITS = 4096  # cached (rules, sensor names) -> how they are evaluated
MAX_PROGRAMS = 256  # combined CEL programs


@dataclass(frozen=True)
class Firing:
    """One firing: `record(...)` gives its action entry's fields."""

    rule: int
    trigger: str
    now: int
    readings: tuple[tuple[str, int, bytes], ...] = ()
    device: str | None = None
    since: int | None = None
    reason: str | None = None
    times: tuple[int, ...] = field(default=())

    def record(self, rs: RuleSet, version: int, set_index: int, batch: int) -> dict[str, Any]:
        r = rs.rules[self.rule]
        out: dict[str, Any] = {
            "rule": r.name, "version": version, "set": set_index, "batch": batch,
            "trigger": self.trigger, "readings": [list(x) for x in self.readings],
            "now": self.now, "action": dict(r.action.fields),
        }
        if self.device is not None:
            out["device"] = self.device
        if self.since is not None:
            out["since"] = self.since
        if self.reason is not None:
            out["reason"] = self.reason
            out["times"] = list(self.times)
        return out


@dataclass(frozen=True, slots=True)
class _Plan:
    """The reading rules of one device: stateless (their indexes in `ids`; `runs`: the
    positions of those with `for` > 1) and stateful."""

    stateless: list[tuple[int, Rule]]
    ids: tuple[int, ...]
    runs: list[int]
    stateful: list[tuple[int, Rule]]


class Engine:
    """See the module docstring. `set_t`: the gateway time of the rules entry (a silence rule
    with a device list counts its devices as seen then)."""

    def __init__(self, rs: RuleSet, set_t: int,
                 states: Iterable[tuple[Key, State]] = ()) -> None:
        self.rs = rs
        self.set_t = set_t
        self._base: dict[Key, State] = dict(states)
        self._tx: dict[Key, State] = {}
        self._reading_rules = rs.by_trigger("readings")
        self._silence_rules = rs.by_trigger("silence")
        self._reject_rules = rs.by_trigger("rejections")
        self.active = bool(rs.rules)
        # per silence rule, the devices it has a committed state for (tick's candidates)
        silence = {k for k, _ in self._silence_rules}
        self._silence_base: dict[int, set[str]] = {k: set() for k in silence}
        for k, d in self._base:
            if k in silence:
                self._silence_base[k].add(d)
        self._plans: dict[str, _Plan] = {}
        # (stateless rules, the reading's sensor names) -> (rules evaluated together, program)
        self._splits: dict[tuple[tuple[int, ...], tuple[str, ...]],
                           tuple[list[int], list[tuple[int, Condition]], Combined | None]] = {}
        # (stateless rules, the ones evaluated together) -> their program; bounded: a set of
        # rules whose sensors come and go in every combination is evaluated rule by rule
        self._programs: dict[tuple[tuple[int, ...], tuple[int, ...]], Combined | None] = {}

    # --- state overlay -------------------------------------------------------------------------

    def _get(self, key: Key) -> State | None:
        st = self._tx.get(key)
        return st if st is not None else self._base.get(key)

    def begin(self) -> None:
        self._tx = {}

    def commit(self) -> None:
        self._base.update(self._tx)
        for k, d in self._tx:
            seen = self._silence_base.get(k)
            if seen is not None:
                seen.add(d)
        self._tx = {}

    def rollback(self) -> None:
        self._tx = {}

    def pending(self) -> dict[Key, State]:
        """The states the open transaction wrote (the store saves them with it)."""
        return self._tx

    # --- inputs ------------------------------------------------------------------------------

    def _plan(self, dev: str) -> _Plan:
        """The reading rules that watch `dev` (cached per device)."""
        plan = self._plans.get(dev)
        if plan is None:
            mine = [(k, r) for k, r in self._reading_rules if r.watches(dev)]
            stateless = [(k, r) for k, r in mine if r.when is not None and not r.when.uses_state]
            plan = self._plans[dev] = _Plan(
                stateless, tuple(k for k, _ in stateless),
                [j for j, (_, r) in enumerate(stateless) if r.count > 1],
                [(k, r) for k, r in mine if r.when is not None and r.when.uses_state])
        return plan

    def _stateless(self, plan: _Plan, keys: tuple[str, ...], act: Any) -> list[bool]:
        """Each stateless rule's answer, as `Condition.matches` gives it. The rules whose
        named sensors are all in the reading are evaluated together (`combine`), the others
        alone; a combined result with an error in it is redone rule by rule."""
        rules = plan.stateless
        ck = (plan.ids, keys)
        split = self._splits.get(ck)
        if split is None:
            have = set(keys)
            together = [j for j, (_, r) in enumerate(rules)
                        if r.when is not None and r.when.sensors <= have]
            pk = (plan.ids, tuple(together))
            comb = self._programs.get(pk)
            if comb is None and pk not in self._programs and len(together) > 1 \
                    and len(self._programs) < MAX_PROGRAMS:
                conds = [c for c in (rules[j][1].when for j in together) if c is not None]
                comb = self._programs[pk] = combine(conds)
            if comb is None:
                together = []
            alone = [(j, r.when) for j, (_, r) in enumerate(rules)
                     if j not in set(together) and r.when is not None]
            if len(self._splits) >= MAX_SPLITS:  # devices with ever new sensor names
                self._splits.clear()
            split = self._splits[ck] = (together, alone, comb)
        together, alone, comb = split
        res = comb.results(act) if comb is not None else None
        if res is None:  # no program, or an error value in its list: rule by rule
            return [r.when.matches(act) for _, r in rules]  # type: ignore[union-attr]
        if not alone:
            return res
        out = [False] * len(rules)
        for j, hit in zip(together, res, strict=True):
            out[j] = hit
        for j, cond in alone:
            out[j] = cond.matches(act)
        return out

    def _matched(self, key: Key, rule: Rule, reading: tuple[str, int, bytes], t: int,
                 out: list[Firing]) -> None:
        st = self._get(key)
        fired, last, run = st if st is not None else (0, 0, ())
        run = (*run, reading)
        if len(run) < rule.count:
            self._tx[key] = (fired, last, run)
        elif rule.cooldown_ms and fired and t - last < rule.cooldown_ms:
            self._tx[key] = (fired, last, ())  # matched during the cooldown: dropped
        else:
            self._tx[key] = (fired + 1, t, ())
            out.append(Firing(key[0], "readings", t, run))

    def batch(self, readings: Sequence[Reading], t: int) -> list[Firing]:
        out: list[Firing] = []
        silence = self._silence_rules
        for dev, seq, leaf, ts, data in readings:
            n0 = len(out)
            plan = self._plan(dev)
            stateless = plan.stateless
            if stateless:
                act = activation(dev, seq, ts, data)
                res = self._stateless(plan, tuple(data), act)
                if True in res:
                    for (k, rule), hit in zip(stateless, res, strict=True):
                        if hit:
                            self._matched((k, dev), rule, (dev, seq, leaf), t, out)
                for j in plan.runs:  # only a `for` rule has a run to break
                    if not res[j]:
                        key = (stateless[j][0], dev)
                        st = self._tx.get(key) or self._base.get(key)
                        if st is not None and st[2]:
                            self._tx[key] = (st[0], st[1], ())
            for k, rule in plan.stateful:
                key = (k, dev)
                st = self._get(key)
                fired, last, run = st if st is not None else (0, 0, ())
                assert rule.when is not None
                act = activation(dev, seq, ts, data,
                                 {"count": len(run), "fired": fired, "last_fired": last})
                if rule.when.matches(act):
                    self._matched(key, rule, (dev, seq, leaf), t, out)
                elif run:
                    self._tx[key] = (fired, last, ())
            if len(out) - n0 > 1:  # one reading's firings in rule order
                out[n0:] = sorted(out[n0:], key=lambda f: f.rule)
            for k, rule in silence:
                if rule.devices is None or dev in rule.devices:
                    key = (k, dev)
                    st = self._get(key)
                    fired, last = (st[0], st[1]) if st is not None else (0, 0)
                    if st is None or st[2] != t or not st[3]:
                        self._tx[key] = (fired, last, t, True)
        return out

    def tick(self, now: int) -> list[Firing]:
        """Silence rules at gateway time `now`, in rule order, devices sorted."""
        out: list[Firing] = []
        for k, rule in self._silence_rules:
            devs = set(self._silence_base[k])
            devs.update(d for (kk, d) in self._tx if kk == k)
            if rule.devices is not None:
                devs.update(rule.devices)
            for dev in sorted(devs):
                key = (k, dev)
                st = self._get(key)
                fired, last, seen, armed = st if st is not None else (0, 0, self.set_t, True)
                if not armed or now - seen < rule.silence_ms:
                    continue
                if rule.cooldown_ms and fired and now - last < rule.cooldown_ms:
                    continue
                self._tx[key] = (fired + 1, now, seen, False)
                out.append(Firing(k, "silence", now, device=dev, since=seen))
        return out

    def rejected(self, dev: str, reason: str, now: int) -> list[Firing]:
        out: list[Firing] = []
        for k, rule in self._reject_rules:
            if rule.reason != reason or not rule.watches(dev):
                continue
            key = (k, dev)
            st = self._get(key)
            fired, last, times = st if st is not None else (0, 0, ())
            times = tuple(x for x in times if now - x < rule.window_ms) + (now,)
            if len(times) >= rule.count and not (
                    rule.cooldown_ms and fired and now - last < rule.cooldown_ms):
                self._tx[key] = (fired + 1, now, ())
                out.append(Firing(k, "rejections", now, device=dev, reason=reason,
                                  times=times))
            else:
                self._tx[key] = (fired, last, times)
        return out

    # --- audit of the firings whose inputs are not in the ledger ------------------------------

    def replay_recorded(self, f: dict[str, Any]) -> str | None:
        """A silence firing from a tick between batches, or a rejections firing: check it
        against the state and apply it. Returns what is wrong, or None."""
        k = next((k for k, r in enumerate(self.rs.rules) if r.name == f.get("rule")), None)
        if k is None:
            return f"rule {f.get('rule')!r} is not in the applied rule set"
        rule: Rule = self.rs.rules[k]
        now, dev = f.get("now"), f.get("device")
        if f.get("trigger") != rule.trigger or type(now) is not int or type(dev) is not str:
            return f"its trigger or inputs do not fit rule {rule.name!r}"
        if dict(f.get("action", {})) != rule.action.fields:
            return f"its action differs from rule {rule.name!r}'s"
        if f.get("readings"):
            return "it names readings, but the rule does not fire on readings"
        if rule.trigger == "silence":
            self.begin()
            mine = [x for x in self.tick(now) if x.device == dev]
            if not mine or mine[0].since != f.get("since"):
                self.rollback()
                return (f"rule {rule.name!r} does not fire for {dev} at {now}: the device's "
                        "last reading or an earlier firing says otherwise")
            # only this device's firing happened at this tick: keep the others' state
            keep = {key: st for key, st in self._tx.items() if key == (k, dev)}
            self._tx = keep
            self.commit()
            return None
        times = f.get("times")
        if rule.trigger != "rejections" or type(times) is not list or not times \
                or f.get("reason") != rule.reason or not rule.watches(dev):
            return f"its inputs do not fit rule {rule.name!r}"
        if times != sorted(times) or times[-1] != now or len(times) < rule.count \
                or now - times[0] >= rule.window_ms:
            return (f"its {len(times)} refusal times do not make {rule.count} within "
                    f"{rule.window_ms} ms")
        st = self._get((k, dev))
        fired, last = (st[0], st[1]) if st is not None else (0, 0)
        if rule.cooldown_ms and fired and now - last < rule.cooldown_ms:
            return f"it fires during rule {rule.name!r}'s cooldown"
        self.begin()
        self._tx[(k, dev)] = (fired + 1, now, ())
        self.commit()
        return None
