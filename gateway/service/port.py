"""What the service needs of the pipeline: `gateway.ingest.pipeline.Pipeline` provides it, and
so does the stand-in of tests/integration/test_service.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from gateway.ingest.pipeline import CommitResult, Outcome, Submission
from gateway.ledger.entry import RecordEntry


class ReadingPipeline(Protocol):
    """Every method runs on the service's one pipeline thread (SQLite handles belong to the
    thread that opened them)."""

    def start(self, messages: Sequence[tuple[bytes, str | None]]) -> Submission:
        """Hand (message, device id from the topic) pairs to the verifiers; returns at once."""

    def finish(self, submission: Submission) -> list[Outcome]:
        """Classify a started submission into the open batch (in start order)."""

    def pending(self) -> int:
        """Readings in the open batch."""

    def commit(self) -> CommitResult | None:
        """One transaction for the open batch; None when nothing happened since the last."""

    def gateway_key_id(self) -> str:
        """The gateway key's id (16 hex digits): the service's stable MQTT client id."""

    def latest_checkpoint(self) -> str | None:
        """The newest signed checkpoint note, if any."""

    def close(self) -> None:
        """Stop the verifiers and close the store."""


@runtime_checkable
class RuleActions(Protocol):
    """What the service's action loop needs of the pipeline (docs/rules.md); a pipeline
    without it (a test's stand-in) runs no actions. Called on the pipeline thread."""

    def pending_actions(self, after: int = -1) -> list[RecordEntry]:
        """Action entries above index `after` with no outcome yet, oldest first."""

    def record_outcomes(self, outcomes: Sequence[tuple[int, str, str | None, bytes | None]]
                        ) -> list[int]:
        """Outcome entries for (action entry, status, reason, confirmation), one transaction."""

    def tick_rules(self) -> list[int]:
        """Silence rules at the gateway's time now; the action entries written."""

    def confirm_command(self, device: str, command_id: int, ok: bool, reason: str | None,
                        cose: bytes) -> int | None:
        """A verified confirmation: the command's outcome entry, or None (not sent, closed)."""
