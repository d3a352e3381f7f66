"""The errors of provisioning: each names the step that failed and the way out."""

from __future__ import annotations

from gateway.errors import AnchorError


class ProvisionError(AnchorError):
    """A provisioning step failed; `what` names the step's failure, `hint` the way out."""


class BoardError(ProvisionError):
    """Code run on the board raised; `what` holds the board's last traceback line."""
