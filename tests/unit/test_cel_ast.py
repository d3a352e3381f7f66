"""gateway/rules/cel_ast.py: the sensors a condition needs, read from its syntax tree, checked
against what the CEL package itself evaluates."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.rules.cel_ast import needed_sensors
from gateway.rules.condition import ConditionError, bindings, compile_condition

NAMES = ("a", "b", "c")


def _num() -> st.SearchStrategy[str]:
    leaf = st.one_of(st.sampled_from([f"data.{n}" for n in NAMES] + ['data["c"]']),
                     st.sampled_from(["1", "2.5", "0", "seq"]))
    return st.recursive(leaf, lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(_bool_leaf(), inner, inner).map(lambda t: f"({t[0]} ? {t[1]} : {t[2]})")),
        max_leaves=4)


def _bool_leaf() -> st.SearchStrategy[str]:
    return st.sampled_from([f"has(data.{n})" for n in NAMES]
                           + ["true", "false", "size(data) > 1", "device == 'd1'",
                              "data.exists(k, k == 'a')", "data.a > 1.0"])


def _bool() -> st.SearchStrategy[str]:
    cmp = st.tuples(_num(), st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), _num()).map(
        lambda t: f"({t[0]} {t[1]} {t[2]})")
    return st.recursive(st.one_of(_bool_leaf(), cmp), lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["&&", "||"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"),
        inner.map(lambda e: f"!{e}"),
        st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} ? {t[1]} : {t[2]})")),
        max_leaves=6)


VALUES = st.one_of(st.integers(-3, 3), st.sampled_from([0.0, 0.5, 1.5, 2.5, -1.0]))


@settings(max_examples=400, deadline=None)
@given(text=_bool(), data=st.dictionaries(st.sampled_from(NAMES), VALUES))
def test_a_condition_without_a_sensor_it_needs_is_never_true(text: str,
                                                             data: dict[str, Any]) -> None:
    try:
        cond = compile_condition(text)
    except ConditionError:
        return  # does not type-check (e.g. a number compared with a bool): not a condition
    missing = cond.needs - data.keys()
    if missing:
        assert not cond.matches(bindings("d1", 2, None, data)), (text, data, missing)


@pytest.mark.parametrize(("text", "needs"), [
    ("data.pressure > 1000.0", {"pressure"}),
    ('data["x y"] == 3', {"x y"}),
    ("has(data.p) && data.p > 1.0", {"p"}),
    ("data.a > 1.0 && data.b < 2", {"a", "b"}),
    ("data.a > 1.0 || data.b < 2", set()),
    ("!has(data.b)", set()),
    ("!(data.b > 1)", {"b"}),
    ("data.a > 1.0 ? data.b > 2 : data.b < 1", {"a", "b"}),
    ("(data.a > 1.0 ? data.b : data.c) > 2", {"a"}),
    ("data.exists(k, k == 'a') && data.q > 1", {"q"}),
    ("data.exists(k, data.z > 1)", set()),
    ("int(data.t) > 3 && state.fired < 1", {"t"}),
    ("has(data.p.q)", {"p"}),
    ("seq > 3", set()),
])
def test_needed_sensors_of_known_conditions(text: str, needs: set[str]) -> None:
    assert compile_condition(text).needs == needs


def test_anything_but_a_checked_expression_is_refused() -> None:
    with pytest.raises(ValueError, match="CheckedExpr"):
        needed_sensors(b"\x0a\x03abc")
    with pytest.raises((ValueError, IndexError)):
        needed_sensors(b"\x0a")
