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

from gateway.rules.condition import BATCH, Batched, Condition, batched, bindings
from gateway.rules.model import Rule, RuleSet

Reading = tuple[str, int, bytes, "int | None", dict[str, Any]]  # dev, seq, leaf, ts, data
State = tuple[Any, ...]
Key = tuple[int, str]  # (rule index, device)
MAX_SPLITS = 4096  # cached (rules, sensor names) -> how they are evaluated
MAX_PROGRAMS = 256  # batched CEL programs


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
    """The rules of one device: stateless reading rules (their indexes in `ids`; `runs`: the
    positions of those with `for` > 1, with their state keys), stateful ones, and the state
    keys of the silence rules that watch it."""

    stateless: list[tuple[int, Rule]]
    ids: tuple[int, ...]
    runs: list[tuple[int, Key]]
    stateful: list[tuple[int, Rule]]
    silence: list[Key]


@dataclass(frozen=True, slots=True)
class _Split:
    """The stateless rules of a plan for one set of sensor names: `together` (positions in
    the plan) evaluated by `programs` (for readings without a ts, with one), `alone` each by
    itself; the others need a sensor that is missing (`Condition.needs`): no match."""

    together: list[int]
    alone: list[tuple[int, Condition]]
    programs: tuple[Batched | None, Batched | None]


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
        self._reading_ids = {k for k, _ in self._reading_rules}
        self._with_state = any(r.when is not None and r.when.uses_state
                               for _, r in self._reading_rules)
        self._open = self._open_runs()  # reading rules' keys with a run (overlay included)
        # per silence rule, the devices it has a committed state for (tick's candidates)
        silence = {k for k, _ in self._silence_rules}
        self._silence_base: dict[int, set[str]] = {k: set() for k in silence}
        for k, d in self._base:
            if k in silence:
                self._silence_base[k].add(d)
        self._plans: dict[str, _Plan] = {}
        # (stateless rules, the reading's sensor names) -> the split (see _split)
        self._splits: dict[tuple[tuple[int, ...], tuple[str, ...]], _Split] = {}
        # (stateless rules, the ones evaluated together, with ts) -> their program; bounded: a
        # set of rules whose sensors come and go in every combination is evaluated rule by rule
        self._programs: dict[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], bool],
                             Batched | None] = {}
        # (rule on state, with ts) -> its program
        self._state_programs: dict[tuple[int, bool], Batched | None] = {}

    # --- state overlay -------------------------------------------------------------------------

    def _get(self, key: Key) -> State | None:
        st = self._tx.get(key)
        return st if st is not None else self._base.get(key)

    def begin(self) -> None:
        if self._tx:  # a transaction that neither committed nor rolled back
            self.rollback()

    def commit(self) -> None:
        self._base.update(self._tx)
        for k, d in self._tx:
            seen = self._silence_base.get(k)
            if seen is not None:
                seen.add(d)
        self._tx = {}

    def rollback(self) -> None:
        self._tx = {}
        self._open = self._open_runs()

    def _open_runs(self) -> set[Key]:
        return {key for key, st in self._base.items() if key[0] in self._reading_ids and st[2]}

    def pending(self) -> dict[Key, State]:
        """The states the open transaction changed (the store saves them with it): those it
        wrote with the value they already had are left out (a match in a cooldown, a run
        broken that was empty in the store)."""
        base = self._base
        return {k: st for k, st in self._tx.items() if base.get(k) != st}

    # --- inputs ------------------------------------------------------------------------------

    def _plan(self, dev: str) -> _Plan:
        """The reading rules that watch `dev` (cached per device)."""
        plan = self._plans.get(dev)
        if plan is None:
            mine = [(k, r) for k, r in self._reading_rules if r.watches(dev)]
            stateless = [(k, r) for k, r in mine if r.when is not None and not r.when.uses_state]
            plan = self._plans[dev] = _Plan(
                stateless, tuple(k for k, _ in stateless),
                [(j, (k, dev)) for j, (k, r) in enumerate(stateless) if r.count > 1],
                [(k, r) for k, r in mine if r.when is not None and r.when.uses_state],
                [(k, dev) for k, r in self._silence_rules
                 if r.devices is None or dev in r.devices])
        return plan

    def _program(self, plan: _Plan, together: list[int], never: list[int],
                 with_ts: bool) -> Batched | None:
        """The program of the conditions at plan positions `together`, with a constant false
        at those in `never` (in plan order: the positions of both, sorted)."""
        pk = (plan.ids, tuple(together), tuple(never), with_ts)
        if pk in self._programs:
            return self._programs[pk]
        if not together or len(self._programs) >= MAX_PROGRAMS:
            return None
        conds = [None if j in never else plan.stateless[j][1].when
                 for j in sorted(together + never)]
        prog = self._programs[pk] = batched(conds, with_ts)
        return prog

    def _split(self, plan: _Plan, keys: tuple[str, ...]) -> _Split:
        """How the stateless rules are evaluated for readings with sensor names `keys`: not at
        all when a sensor they need is missing (no match), together when the sensors they
        name are all there (a `Batched` program each for readings with and without a ts),
        the others alone."""
        ck = (plan.ids, keys)
        split = self._splits.get(ck)
        if split is None:
            have = set(keys)
            rules = plan.stateless
            never = [j for j, (_, r) in enumerate(rules)
                     if r.when is not None and not r.when.needs <= have]
            together = [j for j, (_, r) in enumerate(rules) if j not in never
                        and r.when is not None and r.when.sensors <= have]
            alone = [(j, r.when) for j, (_, r) in enumerate(rules)
                     if j not in set(together) and j not in never and r.when is not None]
            # with nothing alone, the program answers for every position (false where never)
            fill = never if not alone else []
            progs = (self._program(plan, together, fill, False),
                     self._program(plan, together, fill, True))
            together = sorted(together + fill) if progs != (None, None) else []
            if len(self._splits) >= MAX_SPLITS:  # devices with ever new sensor names
                self._splits.clear()
            split = self._splits[ck] = _Split(together, alone, progs)
        return split

    def _stateless(self, readings: Sequence[Reading],
                   plans: Sequence[_Plan]) -> list[list[bool] | None]:
        """Per reading, the answers of its device's stateless rules in plan order, as
        `Condition.matches` gives them (None: the device has none). Readings with the same
        rules and sensor names are evaluated together, `BATCH` at a time."""
        out: list[list[bool] | None] = [None] * len(readings)
        groups: dict[tuple[tuple[int, ...], tuple[str, ...]], tuple[_Plan, list[int]]] = {}
        for i, (r, plan) in enumerate(zip(readings, plans, strict=True)):
            if plan.stateless:
                ck = (plan.ids, tuple(r[4]))
                g = groups.get(ck)
                if g is None:
                    g = groups[ck] = (plan, [])
                g[1].append(i)
        for (_, keys), (plan, idx) in groups.items():
            split = self._split(plan, keys)
            rules = plan.stateless
            for with_ts in (False, True):
                prog = split.programs[with_ts]
                mine = [i for i in idx if (readings[i][3] is not None) is with_ts]
                for k in range(0, len(mine), BATCH):
                    part = mine[k:k + BATCH]
                    if prog is not None:
                        row = prog.row
                        res = prog.results([row(d, s, ts, data) for d, s, _, ts, data
                                            in (readings[i] for i in part)])
                    else:
                        res = [None] * len(part)
                    for i, hits in zip(part, res, strict=True):
                        d, s, _, ts, data = readings[i]
                        if hits is not None and len(hits) == len(rules):
                            out[i] = hits
                            continue
                        got = [False] * len(rules)
                        bound = bindings(d, s, ts, data) if hits is None or split.alone \
                            else None
                        if hits is None:  # an error value among them: each alone
                            for j in split.together:
                                got[j] = rules[j][1].when.matches(bound)  # type: ignore
                        else:
                            for j, hit in zip(split.together, hits, strict=True):
                                got[j] = hit
                        for j, cond in split.alone:
                            got[j] = cond.matches(bound)  # type: ignore[arg-type]
                        out[i] = got
        return out

    def _matched(self, key: Key, rule: Rule, reading: tuple[str, int, bytes], t: int,
                 out: list[Firing]) -> None:
        st = self._get(key)
        fired, last, run = st if st is not None else (0, 0, ())
        run = (*run, reading)
        if len(run) < rule.count:
            self._tx[key] = (fired, last, run)
            self._open.add(key)
            return
        self._open.discard(key)
        if rule.cooldown_ms and fired and t - last < rule.cooldown_ms:
            self._tx[key] = (fired, last, ())  # matched during the cooldown: dropped
        else:
            self._tx[key] = (fired + 1, t, ())
            out.append(Firing(key[0], "readings", t, run))

    def _stateful(self, chunk: Sequence[Reading],
                  plans: Sequence[_Plan]) -> dict[tuple[int, int], bool]:
        """(rule, position in `chunk`) -> the answer of the rule's condition (on its state),
        for the readings of `chunk` its rule watches, with the states as they are now. A
        reading after an earlier one of the same device in the chunk changed that state is
        evaluated again by the caller."""
        todo: dict[tuple[int, bool], list[tuple[int, tuple[Any, ...]]]] = {}
        for pos, ((dev, seq, _, ts, data), plan) in enumerate(zip(chunk, plans, strict=True)):
            for k, rule in plan.stateful:
                when = rule.when
                assert when is not None
                if when.needs and not data.keys() >= when.needs:
                    continue  # the caller's no match
                st = self._get((k, dev))
                state = (0, 0, 0) if st is None else (len(st[2]), st[0], st[1])
                todo.setdefault((k, ts is not None), []).append((pos, (dev, seq, ts, data,
                                                                        state)))
        out: dict[tuple[int, int], bool] = {}
        for (k, with_ts), rows in todo.items():
            if (k, with_ts) not in self._state_programs:
                when = self.rs.rules[k].when
                assert when is not None
                self._state_programs[(k, with_ts)] = batched([when], with_ts)
            prog = self._state_programs[(k, with_ts)]
            if prog is None:
                continue
            row = prog.row
            for (pos, _), hits in zip(rows, prog.results([row(*r) for _, r in rows]),
                                      strict=True):
                if hits is not None:
                    out[(k, pos)] = hits[0] is True
        return out

    def batch(self, readings: Sequence[Reading], t: int) -> list[Firing]:
        out: list[Firing] = []
        seen: set[Key] = set()  # silence rules' keys marked as seen at t
        plans = [self._plan(r[0]) for r in readings]
        answers = self._stateless(readings, plans)
        stateful: dict[tuple[int, int], bool] = {}
        changed: set[Key] = set()  # stateful rules' states written in this chunk
        for n, (dev, seq, leaf, ts, data) in enumerate(readings):
            if self._with_state and n % BATCH == 0:
                stateful = self._stateful(readings[n:n + BATCH], plans[n:n + BATCH])
                changed = set()
            n0 = len(out)
            plan = plans[n]
            stateless = plan.stateless
            res = answers[n]
            if res is not None:
                if True in res:
                    for (k, rule), yes in zip(stateless, res, strict=True):
                        if yes:
                            self._matched((k, dev), rule, (dev, seq, leaf), t, out)
                for j, key in plan.runs:  # only a `for` rule has a run to break
                    if not res[j] and key in self._open:
                        cur = self._tx.get(key) or self._base[key]
                        self._tx[key] = (cur[0], cur[1], ())
                        self._open.discard(key)
            for k, rule in plan.stateful:
                key = (k, dev)
                st = self._get(key)
                fired, last, run = st if st is not None else (0, 0, ())
                when = rule.when
                assert when is not None
                hit = stateful.get((k, n % BATCH)) if key not in changed else None
                if hit is None:
                    hit = (not when.needs or data.keys() >= when.needs) and when.matches(bindings(
                        dev, seq, ts, data, {"count": len(run), "fired": fired,
                                             "last_fired": last}))
                if hit:
                    self._matched(key, rule, (dev, seq, leaf), t, out)
                    changed.add(key)
                elif run:
                    self._tx[key] = (fired, last, ())
                    self._open.discard(key)
                    changed.add(key)
            if len(out) - n0 > 1:  # one reading's firings in rule order
                out[n0:] = sorted(out[n0:], key=lambda f: f.rule)
            for key in plan.silence:
                if key not in seen:
                    seen.add(key)
                    was = self._get(key)
                    if was is None or was[2] != t or not was[3]:
                        self._tx[key] = (was[0], was[1], t, True) if was else (0, 0, t, True)
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
