"""A rule file (TOML, docs/rules.md) -> `RuleSet`, or every problem with its line and column.

tomllib gives values but no positions, so `_Locator` scans the text once for the position of
each `[[rule]]` header and each `key = value` under it; problems are reported at the value
they are about, and a condition's own CEL errors at their place inside the condition's string.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from gateway.ledger.rule_records import MAX_RULES_TEXT
from gateway.rules.condition import ConditionError, compile_condition
from gateway.rules.model import (
    ACTION_TYPES,
    Action,
    Position,
    Rule,
    RuleError,
    RuleSet,
    validate_command,
)

NAME_RX = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_RULES = 256
MAX_DURATION_S = 366 * 86400
_TOML_POS = re.compile(r"\(at line (\d+), column (\d+)\)")
_HEADER = re.compile(r"\s*\[\[\s*rule\s*\]\]")
_TABLE = re.compile(r"\s*\[\s*rule\s*\.\s*([A-Za-z0-9_-]+)\s*\]")
_KEY = re.compile(r"\s*([A-Za-z0-9_-]+|\"[^\"]*\")\s*=\s*")
_RULE_KEYS = {"name", "when", "silence", "rejections", "devices", "for", "cooldown", "action"}


class RuleFileError(Exception):
    def __init__(self, errors: list[RuleError]) -> None:
        super().__init__("\n".join(map(str, errors)))
        self.errors = errors


@dataclass
class _Locator:
    """Positions of the values of each rule's keys (`rule.key` or `rule.table.key`)."""

    lines: list[str]
    headers: list[Position] = field(default_factory=list)
    values: dict[tuple[int, str], Position] = field(default_factory=dict)

    @classmethod
    def scan(cls, text: str) -> _Locator:
        loc = cls(text.splitlines())
        idx, prefix = -1, ""
        for n, line in enumerate(loc.lines, 1):
            if _HEADER.match(line):
                idx, prefix = idx + 1, ""
                loc.headers.append(Position(n, line.index("[") + 1))
                continue
            m = _TABLE.match(line)
            if m:
                prefix = m.group(1) + "."
                loc.values.setdefault((idx, m.group(1)), Position(n, line.index("[") + 1))
                continue
            if line.lstrip().startswith("["):
                idx, prefix = -2, ""  # another table: not a rule
                continue
            m = _KEY.match(line)
            if m and idx >= 0:
                loc.values.setdefault((idx, prefix + m.group(1).strip('"')),
                                      Position(n, m.end() + 1))
        return loc

    def at(self, idx: int, key: str) -> Position:
        """The value of `key` in rule `idx`, else of its table, else the rule's header."""
        pos = self.values.get((idx, key))
        if pos is not None:
            return pos
        head, _, sub = key.rpartition(".")
        if head:
            outer = self.values.get((idx, head))
            if outer is not None:  # inside an inline table on one line: find the key there
                line = self.lines[outer.line - 1]
                m = re.compile(rf"\b{re.escape(sub)}\s*=\s*").search(line, outer.column - 1)
                return Position(outer.line, m.end() + 1) if m else outer
            return self.at(idx, head)
        return self.headers[idx] if 0 <= idx < len(self.headers) else Position(1, 1)

    def in_string(self, pos: Position, line: int, column: int) -> Position:
        """Position in the file of (line, column) inside the string value starting at `pos`."""
        raw = self.lines[pos.line - 1] if pos.line <= len(self.lines) else ""
        start = pos.column - 1
        for quote in ('"""', "'''"):
            if raw.startswith(quote, start):
                trimmed = raw[start + 3:].strip() == ""  # a newline right after is dropped
                if trimmed:
                    return Position(pos.line + line, column)
                if line == 1:
                    return Position(pos.line, pos.column + 3 + column - 1)
                return Position(pos.line + line - 1, column)
        if raw.startswith("'", start):
            return Position(pos.line, pos.column + column)
        # basic string: walk its escapes so the column counts characters of the file
        k, seen = start + 1, 1
        while k < len(raw) and seen < column:
            if raw[k] == "\\" and k + 1 < len(raw):
                k += {"u": 6, "U": 10}.get(raw[k + 1], 2)
            else:
                k += 1
            seen += 1
        return Position(pos.line, k + 1)


def _toml_error(e: tomllib.TOMLDecodeError, text: str) -> RuleError:
    msg = str(e)
    m = _TOML_POS.search(msg)
    if m:
        return RuleError(Position(int(m.group(1)), int(m.group(2))),
                         "TOML syntax: " + msg[:m.start()].strip())
    lines = text.splitlines() or [""]
    return RuleError(Position(len(lines), len(lines[-1]) + 1), "TOML syntax: " + msg)


def _seconds_ms(v: Any) -> int | None:
    if type(v) in (int, float) and 0 < v <= MAX_DURATION_S:
        return round(v * 1000)
    return None


class _Parser:
    def __init__(self, text: str, known_devices: Collection[str] | None) -> None:
        self.loc = _Locator.scan(text)
        self.known = known_devices
        self.errors: list[RuleError] = []

    def error(self, idx: int, key: str, message: str) -> None:
        self.errors.append(RuleError(self.loc.at(idx, key), message))

    def rule(self, idx: int, t: dict[str, Any]) -> Rule | None:
        n0 = len(self.errors)
        for k in sorted(set(t) - _RULE_KEYS):
            self.error(idx, k, f"unknown key {k!r} in a rule "
                               f"(known: {', '.join(sorted(_RULE_KEYS))})")
        name = t.get("name")
        if type(name) is not str or not NAME_RX.fullmatch(name):
            self.error(idx, "name", "every rule needs a name of 1 to 64 characters from "
                                    "A-Z a-z 0-9 . _ - (it is an MQTT topic level)")
            name = f"#{idx + 1}"
        triggers = [k for k in ("when", "silence", "rejections") if k in t]
        if len(triggers) != 1:
            self.error(idx, triggers[1] if len(triggers) > 1 else "name",
                       f"rule {name!r} needs exactly one of when, silence, rejections")
        action = self.action(idx, t.get("action"))
        devices = t.get("devices")
        if devices is not None and (type(devices) is not list or not devices or not all(
                type(d) is str and d for d in devices)):
            self.error(idx, "devices", "devices must be a non-empty list of device ids")
            devices = None
        count = t.get("for", 1)
        if type(count) is not int or not 1 <= count <= 1000:
            self.error(idx, "for", "for must be an integer from 1 to 1000 (consecutive readings)")
            count = 1
        cooldown = 0
        if "cooldown" in t:
            cooldown = _seconds_ms(t["cooldown"]) or 0
            if not cooldown:
                self.error(idx, "cooldown", "cooldown is a number of seconds, > 0")
        kw: dict[str, Any] = {}
        trigger = triggers[0] if triggers else "readings"
        if trigger == "when":
            trigger = "readings"
            when = t["when"]
            if type(when) is not str:
                self.error(idx, "when", "when must be a string holding a CEL condition")
            else:
                try:
                    kw["when"] = compile_condition(when)
                except ConditionError as e:
                    vpos = self.loc.at(idx, "when")
                    for ln, col, msg in e.problems:
                        self.errors.append(RuleError(self.loc.in_string(vpos, ln, col),
                                                     f"condition: {msg}"))
        elif trigger == "silence":
            kw["silence_ms"] = _seconds_ms(t["silence"]) or 0
            if not kw["silence_ms"]:
                self.error(idx, "silence", "silence is a number of seconds, > 0")
            if "for" in t:
                self.error(idx, "for", "for applies to when rules only")
        else:
            rj = t["rejections"]
            if type(rj) is not dict or set(rj) != {"reason", "count", "within"}:
                self.error(idx, "rejections",
                           "rejections = { reason = NAME, count = N, within = SECONDS }")
            else:
                from gateway.ingest.pipeline import REASONS  # (the pipeline imports us)
                if rj["reason"] not in REASONS:
                    self.error(idx, "rejections.reason", f"unknown rejection reason "
                               f"{rj['reason']!r} (known: {', '.join(REASONS)})")
                if type(rj["count"]) is not int or not 1 <= rj["count"] <= 10000:
                    self.error(idx, "rejections.count", "count must be an integer 1..10000")
                else:
                    kw["count"] = rj["count"]
                kw["window_ms"] = _seconds_ms(rj["within"]) or 0
                if not kw["window_ms"]:
                    self.error(idx, "rejections.within", "within is a number of seconds, > 0")
                kw["reason"] = rj["reason"]
            if "for" in t:
                self.error(idx, "for", "for applies to when rules only")
        if len(self.errors) > n0 or action is None:
            return None
        if trigger == "readings":
            kw["count"] = count
        return Rule(name=name, trigger=trigger, action=action,
                    devices=frozenset(devices) if devices else None, cooldown_ms=cooldown,
                    pos=self.loc.headers[idx] if idx < len(self.loc.headers) else Position(1, 1),
                    **kw)

    def action(self, idx: int, a: Any) -> Action | None:
        if a is None:
            self.error(idx, "name", "the rule has no action (action = { type = \"alert\" })")
            return None
        if type(a) is not dict:
            self.error(idx, "action", "action must be a table with a type")
            return None
        kind = a.get("type")
        if kind not in ACTION_TYPES:
            self.error(idx, "action.type" if "type" in a else "action",
                       f"unknown action {kind!r} (known: {', '.join(ACTION_TYPES)})")
            return None
        allowed = {"alert": {"type", "message"}, "webhook": {"type", "url", "timeout", "retries"},
                   "command": {"type", "device", "op", "args"}}[kind]
        bad = sorted(set(a) - allowed)
        if bad:
            self.error(idx, f"action.{bad[0]}", f"unknown key {bad[0]!r} in a {kind} action "
                                               f"(known: {', '.join(sorted(allowed))})")
            return None
        n0 = len(self.errors)
        fields: dict[str, Any] = {"type": kind}
        if kind == "alert":
            msg = a.get("message")
            if msg is not None:
                if type(msg) is not str or len(msg) > 512:
                    self.error(idx, "action.message", "message must be text of at most 512 "
                                                      "characters")
                fields["message"] = msg
        elif kind == "webhook":
            url = a.get("url")
            if type(url) is not str or not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url) \
                    or len(url) > 1024:
                self.error(idx, "action.url", "url must be an http:// or https:// URL")
            timeout = _seconds_ms(a.get("timeout", 5))
            if timeout is None or timeout > 60_000:
                self.error(idx, "action.timeout", "timeout is a number of seconds, 0 < t <= 60")
            retries = a.get("retries", 3)
            if type(retries) is not int or not 0 <= retries <= 10:
                self.error(idx, "action.retries", "retries must be an integer 0..10")
            fields.update(url=url, timeout=timeout, retries=retries)
        else:
            dev = a.get("device")
            if type(dev) is not str or not dev:
                self.error(idx, "action.device", "a command action names its device")
            elif self.known is not None and dev not in self.known:
                self.error(idx, "action.device", f"command to an unknown device {dev!r}: it is "
                           "not in the registry (iot-anchor device add)")
            op, args = a.get("op"), a.get("args", {})
            try:
                validate_command(op, args)
            except ValueError as e:
                self.error(idx, "action.args" if op in ("interval", "output", "ping")
                           else "action.op", str(e))
            fields.update(device=dev, op=op, args=args)
        return Action(kind, fields) if len(self.errors) == n0 else None


def parse_rules(text: str, known_devices: Collection[str] | None = None) -> RuleSet:
    """Parse and check a rule file. `known_devices`: the registry's ids, for the devices that
    command actions name (None: not checked). Raises RuleFileError with every problem found."""
    size = len(text.encode())
    if size > MAX_RULES_TEXT:
        raise RuleFileError([RuleError(Position(1, 1), f"the file is {size} bytes, more "
                                       f"than {MAX_RULES_TEXT} (a rules entry's limit)")])
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RuleFileError([_toml_error(e, text)]) from None
    p = _Parser(text, known_devices)
    for k in sorted(set(doc) - {"rule"}):
        p.errors.append(RuleError(Position(1, 1), f"unknown top-level key {k!r}: a rule file "
                                                  "holds [[rule]] tables only"))
    rules_doc = doc.get("rule", [])
    if type(rules_doc) is not list or not all(type(r) is dict for r in rules_doc):
        raise RuleFileError([RuleError(Position(1, 1), "rules are [[rule]] tables")])
    if len(rules_doc) > MAX_RULES:
        p.errors.append(RuleError(p.loc.at(MAX_RULES, "name"),
                                  f"more than {MAX_RULES} rules"))
    rules: list[Rule] = []
    names: set[str] = set()
    for idx, t in enumerate(rules_doc):
        r = p.rule(idx, t)
        if r is None:
            continue
        if r.name in names:
            p.error(idx, "name", f"a second rule named {r.name!r}")
        names.add(r.name)
        rules.append(r)
    if p.errors:
        raise RuleFileError(sorted(p.errors, key=lambda e: (e.pos.line, e.pos.column)))
    return RuleSet(tuple(rules))
