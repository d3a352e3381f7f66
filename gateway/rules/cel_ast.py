"""What a compiled condition's syntax tree says about it (pure): the sensors without which it
cannot be true, whatever the other values are.

The tree is read from `cel.Expression.serialize()`, the package's public form of a checked
expression: a protobuf `google.protobuf.Any` holding a `cel.expr.CheckedExpr`, whose `expr`
field (4) is a `cel.expr.Expr` (cel-spec proto/cel/expr/syntax.proto and checked.proto). Only
the wire format is read here, with the field numbers of those files:

    Any          type_url 1, value 2
    CheckedExpr  expr 4
    Expr         const_expr 3, ident_expr 4, select_expr 5, call_expr 6 (others: not read)
    Ident        name 1
    Select       operand 1, field 2, test_only 3
    Call         target 1, function 2, args 3
    Constant     string_value 6

CEL's functions are strict: an error value in an argument makes the call an error, except for
the logical operators and the conditional (cel-spec doc/langdef.md, "Runtime Errors" and
"Logical Operators"): `a && b` and `a || b` are errors only when both sides are, and
`c ? x : y` when c is, or when both branches are. `data.NAME` and `data["NAME"]` are errors
when the reading has no sensor NAME; `has(data.NAME)` is not. So, with sensor NAME missing:

    _errs(e)     e is an error value
    _not_true(e) e is not the value true (an error, false, or not a bool):
                 a && b: either side is not true; a || b: both are not;
                 c ? x : y: c is an error, or neither branch is true;
                 !a: a is an error; anything else: it is an error

Calls outside `_STRICT`, literals and comprehensions are taken to need nothing (so an answer
may be too small, never too large).
"""

from __future__ import annotations

from typing import Any

# Standard functions that are strict in every argument (and their receiver).
_STRICT = frozenset({
    "_==_", "_!=_", "_<_", "_<=_", "_>_", "_>=_", "_+_", "_-_", "_*_", "_/_", "_%_", "-_", "!_",
    "_[_]", "@in", "size", "int", "uint", "double", "string", "contains", "startsWith",
    "endsWith", "matches",
})
_Fields = dict[int, list[Any]]  # field number -> its values, in order


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, i
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")


def _message(buf: bytes) -> _Fields:
    """One protobuf message's fields: varints as ints, length-delimited ones as bytes."""
    out: _Fields = {}
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        v: Any
        if wire == 0:
            v, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ValueError("a field runs past the end of its message")
            v, i = buf[i:i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            v, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"wire type {wire} is not read here")
        out.setdefault(num, []).append(v)
    return out


def _one(f: _Fields, num: int) -> Any:
    v = f.get(num)
    return v[-1] if v else None


def _is_data(expr: bytes | None) -> bool:
    if expr is None:
        return False
    ident = _one(_message(expr), 4)
    return ident is not None and _one(_message(ident), 1) == b"data"


def _errs(expr: bytes) -> frozenset[str]:
    f = _message(expr)
    sel = _one(f, 5)
    if sel is not None:
        s = _message(sel)
        operand = _one(s, 1)
        inner = _errs(operand) if operand is not None else frozenset()
        if not _one(s, 3) and _is_data(operand):
            return inner | {bytes(_one(s, 2) or b"").decode()}
        return inner
    call = _one(f, 6)
    if call is None:
        return frozenset()  # a constant, a name, a literal list or map, a comprehension
    c = _message(call)
    fn = bytes(_one(c, 2) or b"").decode()
    args = [bytes(a) for a in c.get(3, [])]
    if fn in ("_&&_", "_||_") and len(args) == 2:
        return _errs(args[0]) & _errs(args[1])
    if fn == "_?_:_" and len(args) == 3:
        return _errs(args[0]) | (_errs(args[1]) & _errs(args[2]))
    if fn not in _STRICT:
        return frozenset()
    target = _one(c, 1)
    out = _errs(target) if target is not None else frozenset()
    for a in args:
        out |= _errs(a)
    if fn == "_[_]" and len(args) == 2 and target is None and _is_data(args[0]):
        const = _one(_message(args[1]), 3)
        key = _one(_message(const), 6) if const is not None else None
        if key is not None:
            out |= {bytes(key).decode()}
    return out


def _not_true(expr: bytes) -> frozenset[str]:
    call = _one(_message(expr), 6)
    if call is not None:
        c = _message(call)
        fn = bytes(_one(c, 2) or b"").decode()
        args = [bytes(a) for a in c.get(3, [])]
        if fn == "_&&_" and len(args) == 2:
            return _not_true(args[0]) | _not_true(args[1])
        if fn == "_||_" and len(args) == 2:
            return _not_true(args[0]) & _not_true(args[1])
        if fn == "_?_:_" and len(args) == 3:
            return _errs(args[0]) | (_not_true(args[1]) & _not_true(args[2]))
    return _errs(expr)


def needed_sensors(serialized: bytes) -> frozenset[str]:
    """The sensors without which the expression `serialized` (`cel.Expression.serialize()`)
    is not true. Raises ValueError if it is not a checked expression."""
    anyf = _message(serialized)
    if not bytes(_one(anyf, 1) or b"").endswith(b"/cel.expr.CheckedExpr"):
        raise ValueError("not a serialized cel.expr.CheckedExpr")
    expr = _one(_message(bytes(_one(anyf, 2) or b"")), 4)
    return _not_true(bytes(expr)) if expr is not None else frozenset()
