"""The ledger's pure data structures. Importing the package registers the record kinds
declared in its modules (gateway.ledger.provenance: dataset, model; gateway.ledger.rule_records:
rules, action, outcome)."""

from gateway.ledger import provenance as provenance  # noqa: F401  (registers its kinds)
from gateway.ledger import rule_records as rule_records  # noqa: F401  (registers its kinds)
