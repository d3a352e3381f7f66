"""Rule conditions in CEL (the Common Expression Language), through cel-expr-python, the
CEL project's own Python binding of its C++ runtime: parsed, type-checked against the
declared variables, and evaluated without any access to Python (never `eval`).

What a condition sees (docs/rules.md, "Conditions")::

    device  string          the reading's device id
    seq     int             its seq
    ts      int             the device clock (unix seconds); unbound when the reading has none
    data    map(string, dyn)  sensor name -> int or double
    state   map(string, int)  the rule's own state for this device: "count" (consecutive
                              matching readings before this one), "fired" (firings so far),
                              "last_fired" (gateway ms of the last firing, 0: never)

A condition must have type bool. Evaluating one never raises: an error value (a sensor absent
from `data`, an unbound `ts`, a division by zero) counts as "does not match", so an unknown
sensor is "absent". CEL's `has(data.x)` tests for a sensor.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cel_expr_python import cel
from cel_expr_python.ext.ext_bindings import ExtBindings

from gateway.rules.cel_ast import needed_sensors

MAX_CONDITION = 4096  # characters
_ERROR_RX = re.compile(r"ERROR: <input>:(\d+):(\d+): (.*?)(?:\n|$)")

_T = cel.Type
_BASE = {"device": _T.STRING, "seq": _T.INT, "ts": _T.INT, "data": _T.Map(_T.STRING, _T.DYN)}
_ENV = cel.NewEnv(variables=_BASE)
_STATE_ENV = cel.NewEnv(variables={**_BASE, "state": _T.Map(_T.STRING, _T.INT)})
# `Batched` programs: a list of readings in, each bound to the names above with cel.bind
_ROWS_ENV = cel.NewEnv(variables={"rows": _T.List(_T.DYN)}, extensions=[ExtBindings()])
BATCH = 48  # readings per `Batched` evaluation (CEL's map copies its list as it grows)


class ConditionError(Exception):
    """A condition that does not compile: `problems` are (line, column, message) inside the
    condition's text, 1-based."""

    def __init__(self, problems: list[tuple[int, int, str]]) -> None:
        super().__init__("; ".join(f"{ln}:{col}: {msg}" for ln, col, msg in problems))
        self.problems = problems


_SENSOR_RX = re.compile(
    r"""\bdata\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*["']([^"']*)["']\s*\])""")


@dataclass(frozen=True, slots=True)
class Condition:
    text: str
    program: Any  # cel.Expression
    uses_state: bool
    sensors: frozenset[str] = frozenset()  # the data.NAME it names (a hint for `batched`)
    needs: frozenset[str] = frozenset()  # without any of these it cannot be true: no match

    def matches(self, bound: Mapping[str, Any]) -> bool:
        """True only for a bool true; false and every error value are "no match". `bound`:
        the variables, as `bindings` makes them."""
        return self.program.eval(data=bound).value() is True


_UNDECLARED = re.compile(r"undeclared reference to '([\w.]+)'(?: \(in container '[^']*'\))?")


def _explain(text: str, line: int, col: int, msg: str) -> str:
    """CEL's "undeclared reference" said as an unknown function or an unknown name."""
    m = _UNDECLARED.fullmatch(msg)
    if not m:
        return msg
    name = m.group(1)
    lines = text.split("\n")
    rest = lines[line - 1][col - 1:] if 0 < line <= len(lines) else ""
    tail = rest[len(name.rsplit(".", 1)[-1]):] if rest.startswith(name.rsplit(".", 1)[-1]) \
        else rest
    if tail.lstrip().startswith("("):
        return (f"unknown function {name.rsplit('.', 1)[-1]!r} (conditions have CEL's standard "
                "functions and has())")
    return f"unknown name {name!r} (a condition sees device, seq, ts, data and state)"


def _problems(text: str, e: Exception) -> list[tuple[int, int, str]]:
    found = [(int(a), int(b), _explain(text, int(a), int(b), msg.strip()))
             for a, b, msg in _ERROR_RX.findall(str(e))]
    return found or [(1, 1, str(e).strip())]


def compile_condition(text: str) -> Condition:
    """Parse and type-check `text`; raises ConditionError."""
    if len(text) > MAX_CONDITION:
        raise ConditionError([(1, 1, f"the condition has {len(text)} characters, more than "
                                     f"{MAX_CONDITION}")])
    if not text.strip():
        raise ConditionError([(1, 1, "the condition is empty")])
    uses_state = False
    try:
        program = _ENV.compile(text)
    except RuntimeError as e:
        first = str(e)
        if "undeclared reference to 'state" not in first:
            raise ConditionError(_problems(text, e)) from None
        try:
            program = _STATE_ENV.compile(text)
        except RuntimeError as e2:
            raise ConditionError(_problems(text, e2)) from None
        uses_state = True
    rtype = program.return_type()
    if rtype != _T.BOOL:
        raise ConditionError([(1, 1, f"the condition has type {rtype.name().lower()}, not bool "
                                     "(compare it, e.g. data.temp > 30.0)")])
    sensors = frozenset(a or b for a, b in _SENSOR_RX.findall(text))
    try:
        needs = needed_sensors(program.serialize())
    except (ValueError, IndexError, UnicodeDecodeError):  # not the form read: assume nothing
        needs = frozenset()
    return Condition(text, program, uses_state, sensors, needs)


def bindings(dev: str, seq: int, ts: int | None, data: Mapping[str, Any],
             state: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The variables of one reading (and, for conditions that use it, one rule's state); an
    absent ts stays unbound."""
    bound: dict[str, Any] = {"device": dev, "seq": seq, "data": data}
    if ts is not None:
        bound["ts"] = ts
    if state is not None:
        bound["state"] = state
    return bound


_VARIABLE_RX = {n: re.compile(rf"\b{n}\b") for n in ("device", "seq", "ts")}


@dataclass(frozen=True, slots=True)
class Batched:
    """Several conditions evaluated over many readings in one CEL call: one call per `BATCH`
    readings instead of one per reading and condition. Each row holds the variables the
    conditions name, in the order device, seq, ts, data (a row is the data map itself when
    that is all they name; a rule's state, for its own condition, is the three ints count,
    fired, last_fired after them), each bound to its name by cel.bind around the conditions'
    own text: a variable no condition names is not converted for CEL at all. `row` makes one
    (ts: not None when it is a column).
    When any answer is an error value the whole list is one too: `results` then halves the
    rows until it has the answers of every row without an error, and gives None for each row
    with one, which the caller evaluates condition by condition; so the answers are those of
    `Condition.matches`."""

    program: Any
    row: Callable[..., Any]  # (dev, seq, ts, data[, (count, fired, last_fired)]) -> a row

    def _eval(self, rows: list[Any]) -> list[list[bool] | None]:
        try:
            r = self.program.eval(data={"rows": rows}).plain_value()
        except (RuntimeError, TypeError, ValueError, OverflowError):  # a value CEL cannot hold
            r = None
        if type(r) is list:
            return r
        if len(rows) == 1:
            return [None]
        half = len(rows) // 2
        return self._eval(rows[:half]) + self._eval(rows[half:])

    def results(self, rows: list[Any]) -> list[list[bool] | None]:
        """Per row: each condition's answer, or None (evaluate that row's conditions alone)."""
        return self._eval(rows) if rows else []


def batched(conditions: list[Condition | None], with_ts: bool) -> Batched | None:
    """One program for `conditions` (None: a constant false in its place) over rows with a
    ts, or without one; None if it does not compile (over a size limit of the CEL runtime,
    or, for rows without a ts, a condition names ts: such rows are evaluated condition by
    condition, where ts is unbound).
    A variable is a column when a condition's text has its name as a word (a string or a
    comment with it only adds the column: CEL names a variable only by its plain name).
    Conditions that use state take it from the row's last three columns (one rule's state: a
    program of them all then holds only conditions of one rule)."""
    if not any(conditions):
        return None
    texts = [c.text for c in conditions if c is not None]
    names = [n for n, rx in _VARIABLE_RX.items()
             if (with_ts or n != "ts") and any(rx.search(t) for t in texts)]
    names.append("data")
    inner = "[" + ",\n".join("false" if c is None else f"({c.text}\n)" for c in conditions) + "]"
    if any(c is not None and c.uses_state for c in conditions):
        k = len(names)
        inner = (f"cel.bind(state, {{'count': r[{k}], 'fired': r[{k + 1}], "
                 f"'last_fired': r[{k + 2}]}}, {inner})")
        names.append("state")
    if names == ["data"]:
        inner = f"cel.bind(data, r, {inner})"
    else:
        for k in reversed(range(len(names))):  # a condition's text ends with a newline: a //
            if names[k] != "state":  # comment in it stops there
                inner = f"cel.bind({names[k]}, r[{k}], {inner})"
    try:
        program = _ROWS_ENV.compile(f"rows.map(r, {inner})")
    except RuntimeError:
        return None
    return Batched(program, _row_maker(tuple(names)))


def _row_maker(columns: tuple[str, ...]) -> Callable[..., Any]:
    """The row of `Batched` with these columns, from (dev, seq, ts, data[, state])."""
    if columns == ("data",):
        return lambda dev, seq, ts, data: data
    if columns == ("data", "state"):
        return lambda dev, seq, ts, data, st: [data, *st]
    pick = tuple(("device", "seq", "ts", "data").index(n) for n in columns if n != "state")

    def row(*values: Any) -> list[Any]:
        out = [values[i] for i in pick]
        if len(values) > 4:
            out.extend(values[4])
        return out
    return row
