"""`iot-anchor rules check|apply|show|log`: rule sets and their firings (docs/rules.md)."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from gateway.cli import Subcommands, add_data_arg
from gateway.errors import ConfigError
from gateway.ledger.entry import RecordEntry, decode_entry
from gateway.rules.model import RuleSet
from gateway.rules.parse import RuleFileError, parse_rules
from gateway.storage.store import DB_NAME, Store


def register(sub: Subcommands) -> None:
    p = sub.add_parser("rules", help="check, apply and show rule sets; list their firings",
                       description="Rules that act on verified readings (docs/rules.md). Every "
                       "applied set and every firing is a ledger entry.")
    rsub = p.add_subparsers(dest="rules_command", metavar="ACTION")
    rsub.required = True

    c = rsub.add_parser("check", help="check a rule file without applying it (exit 2 on "
                                      "errors, each with its line and column)")
    c.add_argument("file", metavar="FILE", help="the rule file (TOML)")
    add_data_arg(c)
    c.set_defaults(func=_check)

    a = rsub.add_parser("apply", help="check a rule file and append it as a `rules` entry "
                                      "(the same text again is a no-op)")
    a.add_argument("file", metavar="FILE")
    add_data_arg(a)
    a.set_defaults(func=_apply)

    s = rsub.add_parser("show", help="print the applied rule set")
    s.add_argument("--json", action="store_true", help="print JSON")
    add_data_arg(s)
    s.set_defaults(func=_show)

    lg = rsub.add_parser("log", help="list the firings (action entries) and their outcomes")
    lg.add_argument("--rule", metavar="NAME", help="only this rule's firings")
    lg.add_argument("--json", action="store_true", help="print JSON")
    add_data_arg(lg)
    lg.set_defaults(func=_log)


def _read(path: str) -> str:
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the rule file {path}: {e.strerror}",
                          "check the path") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start})",
                          "save the rule file as UTF-8") from None


def _devices(data: str) -> set[str] | None:
    if not (Path(data) / DB_NAME).is_file():
        return None
    with Store.open(data, readonly=True) as store:
        return {d.id for d in store.devices()}


def _parse(path: str, text: str, known: set[str] | None) -> RuleSet | None:
    try:
        return parse_rules(text, known)
    except RuleFileError as e:
        for err in e.errors:
            print(f"{path}:{err.pos.line}:{err.pos.column}: {err.message}", file=sys.stderr)
        print(f"{path}: {len(e.errors)} error{'s' * (len(e.errors) != 1)}; nothing applied",
              file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    text = _read(args.file)
    known = _devices(args.data)
    rs = _parse(args.file, text, known)
    if rs is None:
        return 2
    note = "" if known is not None else (f" (command devices not checked: no ledger in "
                                         f"{args.data})")
    print(f"{args.file}: {len(rs.rules)} rule{'s' * (len(rs.rules) != 1)}, no errors{note}")
    return 0


def _apply(args: argparse.Namespace) -> int:
    text = _read(args.file)
    with Store.open(args.data) as store:
        rs = _parse(args.file, text, {d.id for d in store.devices()})
        if rs is None:
            return 2
        digest = hashlib.sha256(text.encode()).digest()
        i, version, appended = store.apply_rules(store.load_signer(), text, digest)
    if appended:
        print(f"rules version {version} applied as ledger entry {i}: {len(rs.rules)} rules, "
              f"sha256 {digest.hex()}")
    else:
        print(f"rules version {version} (entry {i}) already has this text: nothing to do")
    return 0


def _show(args: argparse.Namespace) -> int:
    with Store.open(args.data, readonly=True) as store:
        e = store.latest_rules()
    if e is None:
        if args.json:
            print(json.dumps(None))
            return 0
        raise ConfigError("no rule set is applied", "apply one: iot-anchor rules apply FILE")
    rs = parse_rules(e.fields["text"])
    if args.json:
        print(json.dumps({"entry": e.i, "version": e.fields["version"],
                          "digest": e.fields["digest"].hex(), "t": e.t,
                          "rules": [_rule_json(r) for r in rs.rules],
                          "text": e.fields["text"]}, indent=2))
        return 0
    print(f"# rules version {e.fields['version']}, ledger entry {e.i}, "
          f"sha256 {e.fields['digest'].hex()}")
    sys.stdout.write(e.fields["text"] if e.fields["text"].endswith("\n")
                     else e.fields["text"] + "\n")
    return 0


def _rule_json(r: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": r.name, "line": r.pos.line, "trigger": r.trigger,
                           "action": r.action.fields}
    if r.when is not None:
        out["when"] = r.when.text
        out["for"] = r.count
    if r.devices is not None:
        out["devices"] = sorted(r.devices)
    if r.cooldown_ms:
        out["cooldown_ms"] = r.cooldown_ms
    if r.trigger == "silence":
        out["silence_ms"] = r.silence_ms
    if r.trigger == "rejections":
        out.update(reason=r.reason, count=r.count, window_ms=r.window_ms)
    return out


def action_json(e: RecordEntry, status: str, outcome: int | None) -> dict[str, Any]:
    f = e.fields
    out: dict[str, Any] = {
        "entry": e.i, "t": e.t, "rule": f["rule"], "version": f["version"],
        "trigger": f["trigger"], "batch": f["batch"], "now": f["now"],
        "readings": [{"dev": d, "seq": s, "leaf": h.hex()} for d, s, h in f["readings"]],
        "action": f["action"], "status": status, "outcome": outcome,
    }
    for k in ("device", "since", "reason", "times"):
        if k in f:
            out[k] = f[k]
    return out


def _log(args: argparse.Namespace) -> int:
    with Store.open(args.data, readonly=True) as store:
        rows = store.action_log(args.rule)
        reasons: dict[int, Any] = {}
        for e, status, outcome in rows:
            if status == "failed" and outcome is not None:
                body = store.entry_body(outcome)
                oe = decode_entry(body) if body is not None else None
                if isinstance(oe, RecordEntry):
                    reasons[e.i] = oe.fields.get("reason")
    items = []
    for e, status, outcome in rows:
        j = action_json(e, status, outcome)
        if e.i in reasons:
            j["reason_failed"] = reasons[e.i]
        items.append(j)
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        print("no firings" + (f" of rule {args.rule!r}" if args.rule else ""))
        return 0
    for j in items:
        what = ", ".join(f"{r['dev']}#{r['seq']}" for r in j["readings"]) or j.get("device", "")
        a = j["action"]
        target = {"alert": "alert", "webhook": f"webhook {a.get('url')}",
                  "command": f"command {a.get('op')} -> {a.get('device')}"}[a["type"]]
        extra = f" ({j['reason_failed']})" if "reason_failed" in j else ""
        print(f"entry {j['entry']}: rule {j['rule']} v{j['version']} {j['trigger']} [{what}] "
              f"-> {target}: {j['status']}{extra}")
    return 0
