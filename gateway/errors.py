"""One exception hierarchy: every error says what was wrong and what to do next."""

from __future__ import annotations


class AnchorError(Exception):
    """Base error. `what` says what went wrong, `hint` what to do about it.

    The CLI catches only this class and prints `error: <what>; <hint>`.
    """

    def __init__(self, what: str, hint: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.hint = hint

    def explain(self) -> str:
        return f"{self.what}; {self.hint}" if self.hint else self.what


class ConfigError(AnchorError):
    """Bad command-line input, environment or data directory."""


class StorageError(AnchorError):
    """The database or the data directory cannot be read or written."""


class IntegrityError(AnchorError):
    """Stored data does not match what it claims (found by an audit)."""


class BrokerError(AnchorError):
    """The MQTT broker cannot be reached, refused us, or broke the protocol."""


class ReceiptError(AnchorError):
    """A receipt does not verify."""
