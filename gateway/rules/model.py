"""A rule set as data (pure): what `gateway.rules.parse` makes of a TOML file.

docs/rules.md is the reference for the file format and the meaning of each field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.rules.condition import Condition

TRIGGERS = ("readings", "silence", "rejections")
ACTION_TYPES = ("alert", "webhook", "command")
COMMAND_OPS = ("interval", "output", "ping")


@dataclass(frozen=True, slots=True)
class Position:
    """1-based line and column in the rule file."""

    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class RuleError:
    """One problem in a rule file, at its position."""

    pos: Position
    message: str

    def __str__(self) -> str:
        return f"{self.pos}: {self.message}"


@dataclass(frozen=True)
class Action:
    """What a firing does. `fields` is the action exactly as it is recorded in the ledger:
    alert {"type", ? "message"}; webhook {"type", "url", "timeout" (ms), "retries"};
    command {"type", "device", "op", "args"}."""

    type: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Rule:
    name: str
    trigger: str  # "readings" | "silence" | "rejections"
    action: Action
    when: Condition | None = None  # the CEL condition ("readings")
    devices: frozenset[str] | None = None  # None: every device
    count: int = 1  # "readings": `for`; "rejections": the refusals needed
    cooldown_ms: int = 0
    silence_ms: int = 0  # "silence": no reading for this long
    reason: str | None = None  # "rejections": the rejection reason
    window_ms: int = 0  # "rejections": within this long
    pos: Position = field(default=Position(1, 1), compare=False)

    def watches(self, dev: str) -> bool:
        return self.devices is None or dev in self.devices


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]

    def by_trigger(self, trigger: str) -> list[tuple[int, Rule]]:
        return [(k, r) for k, r in enumerate(self.rules) if r.trigger == trigger]


def validate_command(op: Any, args: Any) -> None:
    """The commands a device carries out (docs/rules.md, and the downlink's contract): raises
    ValueError naming what is wrong. interval {"seconds": int >= 1}; output {"name": str,
    "on": bool}; ping {}."""
    if op not in COMMAND_OPS:
        raise ValueError(f"unknown command op {op!r} (known: {', '.join(COMMAND_OPS)})")
    if not isinstance(args, dict):
        raise ValueError("command args must be a table")
    want = {"interval": {"seconds"}, "output": {"name", "on"}, "ping": set()}[op]
    if set(args) != want:
        raise ValueError(f"{op} command args are {sorted(args)}, expected {sorted(want)}")
    if op == "interval" and (type(args["seconds"]) is not int or args["seconds"] < 1):
        raise ValueError("interval command: seconds must be an integer >= 1")
    if op == "output":
        if type(args["name"]) is not str or not args["name"] or len(args["name"]) > 32:
            raise ValueError("output command: name must be 1..32 characters")
        if type(args["on"]) is not bool:
            raise ValueError("output command: on must be true or false")
