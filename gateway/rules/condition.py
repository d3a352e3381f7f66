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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cel_expr_python import cel

MAX_CONDITION = 4096  # characters
_ERROR_RX = re.compile(r"ERROR: <input>:(\d+):(\d+): (.*?)(?:\n|$)")

_T = cel.Type
_BASE = {"device": _T.STRING, "seq": _T.INT, "ts": _T.INT, "data": _T.Map(_T.STRING, _T.DYN)}
_ENV = cel.NewEnv(variables=_BASE)
_STATE_ENV = cel.NewEnv(variables={**_BASE, "state": _T.Map(_T.STRING, _T.INT)})


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
    sensors: frozenset[str] = frozenset()  # the data.NAME it names (a hint for `combine`)

    def matches(self, activation: Any) -> bool:
        """True only for a bool true; false and every error value are "no match"."""
        return self.program.eval(activation).value() is True


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
    return Condition(text, program, uses_state, sensors)


def activation(dev: str, seq: int, ts: int | None, data: Mapping[str, Any],
               state: Mapping[str, int] | None = None) -> Any:
    """The variables of one reading (and, for conditions that use it, one rule's state)."""
    bound: dict[str, Any] = {"device": dev, "seq": seq, "data": data}
    if ts is not None:
        bound["ts"] = ts
    if state is None:
        return _ENV.Activation(bound)
    bound["state"] = state
    return _STATE_ENV.Activation(bound)


@dataclass(frozen=True, slots=True)
class Combined:
    """Several stateless conditions evaluated as one CEL list: one evaluation instead of one
    per rule (a list of n comparisons costs about a third of n evaluations). When any of them
    is an error value the list is one too; `results` then returns None and the caller
    evaluates each condition alone, so the answers are those of `Condition.matches`."""

    program: Any

    def results(self, activation: Any) -> list[bool] | None:
        r = self.program.eval(activation).plain_value()
        return r if type(r) is list else None


def combine(conditions: list[Condition]) -> Combined | None:
    """One program for `conditions` (none of which uses state), or None if it does not
    compile (it would be over a size limit of the CEL runtime)."""
    if not conditions or any(c.uses_state for c in conditions):
        return None
    try:
        return Combined(_ENV.compile("[" + ", ".join(f"({c.text})" for c in conditions) + "]"))
    except RuntimeError:
        return None
