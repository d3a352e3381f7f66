"""The ledger's pure data structures. Importing the package registers the record kinds
declared in its modules (gateway.ledger.provenance: dataset, model)."""

from gateway.ledger import provenance as provenance  # noqa: F401  (registers its kinds)
