"""The ledger's pure data structures. Importing the package registers the record kinds that
are declared in their own modules (gateway.ledger.entry.RECORD_KINDS)."""

from gateway.ledger import rule_records  # noqa: F401  (registers rules, action, outcome)
