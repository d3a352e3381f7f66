"""`iot-anchor ingest FILE|-`: run recorded messages through the pipeline and commit them.

Input formats:
* default: one message per line in hex (blank lines and lines starting with '#' are skipped;
  surrounding white space is ignored);
* ``--binary``: a stream of records, each a 4-byte big-endian length followed by that many
  bytes of message. A length above 1 MiB means the stream is not in this format (ingest stops
  with an error); a record cut short at the end of the input is counted as rejected
  (``truncated_record``).

Lines that are not hex are counted as rejected (``not_hex``) here, outside the pipeline.
The summary: accepted, duplicate, rejected by reason, the entries written. Exit 0 unless the
input could not be read (or the database could not be written).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterator
from typing import BinaryIO

from gateway.cli import Subcommands, add_data_arg
from gateway.errors import ConfigError
from gateway.ingest.pipeline import CommitResult, Outcome, Pipeline, feed
from gateway.storage.store import Store
from gateway.wire.cose import MAX_MESSAGE

MAX_RECORD = 1 << 20
CHUNK = 1024


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "ingest",
        help="verify and anchor recorded messages (hex lines or --binary records)",
        description="Run messages through the same pipeline as the live service, commit them, "
        "and print accepted, duplicate and rejected counts by reason.",
    )
    p.add_argument("file", metavar="FILE|-", help="input file, or - for stdin")
    p.add_argument("--binary", action="store_true",
                   help="records of 4-byte big-endian length + message, instead of hex lines")
    p.add_argument("--batch-max", type=int, default=4096, metavar="N",
                   help="readings per batch / ledger entry (default 4096)")
    p.add_argument("--max-message", type=int, default=MAX_MESSAGE, metavar="BYTES",
                   help=f"message size limit (default {MAX_MESSAGE})")
    p.add_argument("--workers", type=int, default=2,
                   help="verifier processes (default 2; 1 verifies in the main process)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_data_arg(p)
    p.set_defaults(func=run)


def _hex_records(f: BinaryIO, bad: Counter[str]) -> Iterator[bytes]:
    for line in f:
        s = line.strip()
        if not s or s.startswith(b"#"):
            continue
        try:
            yield bytes.fromhex(s.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            bad["not_hex"] += 1


def _binary_records(f: BinaryIO, bad: Counter[str]) -> Iterator[bytes]:
    while True:
        head = f.read(4)
        if not head:
            return
        if len(head) < 4:
            bad["truncated_record"] += 1
            return
        n = int.from_bytes(head, "big")
        if n > MAX_RECORD:
            raise ConfigError(
                f"record length {n} is larger than {MAX_RECORD} bytes: the input is not "
                "length-prefixed binary", "for hex lines, drop --binary")
        body = f.read(n)
        if len(body) < n:
            bad["truncated_record"] += 1
            return
        yield body


def run(args: argparse.Namespace) -> int:
    if args.batch_max < 1:
        raise ConfigError("--batch-max must be at least 1", "e.g. --batch-max 4096")
    try:
        f: BinaryIO = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    except OSError as e:
        raise ConfigError(f"cannot read {args.file}: {e.strerror}", "check the path") from e
    bad: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    entries: list[int] = []
    actions: list[int] = []  # the rules' firings (docs/rules.md)
    size = 0

    def on_outcomes(outs: list[Outcome]) -> None:
        for o in outs:
            counts[o.status] += 1
            if o.status == "rejected":
                rejected[o.reason or "unknown"] += 1

    def on_commit(res: CommitResult) -> None:
        nonlocal size
        entries.extend(res.entries)
        actions.extend(res.actions)
        size = res.size

    with Store.open(args.data) as store, Pipeline(store, batch_max=args.batch_max,
                                                  max_message=args.max_message,
                                                  workers=args.workers) as pipe:
        records = _binary_records(f, bad) if args.binary else _hex_records(f, bad)
        try:
            feed(pipe, _chunks(records), on_outcomes, on_commit)
        except OSError as e:
            raise ConfigError(f"reading {args.file} failed: {e.strerror}", "check the input") from e
        finally:
            if f is not sys.stdin.buffer:
                f.close()
        if not entries:
            size = store.entry_count()
    rejected.update(bad)
    summary = {
        "accepted": counts["accepted"],
        "duplicate": counts["duplicate"],
        "rejected": dict(sorted(rejected.items())),
        "entries": entries,
        "ledger_size": size,
        "actions": actions,
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"accepted {summary['accepted']}, duplicate {summary['duplicate']}, "
          f"rejected {sum(rejected.values())}")
    for reason, n in sorted(rejected.items()):
        print(f"  rejected {reason}: {n}")
    if entries:
        span = f"{entries[0]}" if len(entries) == 1 else f"{entries[0]}..{entries[-1]}"
        print(f"anchored in ledger entries {span}; ledger size {size}")
    else:
        print(f"nothing new anchored; ledger size {size}")
    if actions:
        print(f"rules fired {len(actions)} times (action entries {actions[0]}..{actions[-1]}); "
              "their actions are carried out by 'iot-anchor run' (iot-anchor rules log)")
    return 0


def _chunks(records: Iterator[bytes]) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for rec in records:
        chunk.append(rec)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
