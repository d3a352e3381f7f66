"""What the service needs of the pipeline: `gateway.ingest.pipeline.Pipeline` provides it, and
so does the stand-in of tests/integration/test_service.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.ingest.pipeline import CommitResult, Outcome, Submission


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
