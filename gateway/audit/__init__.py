"""Audits: checking stored data against what the gateway signed (`ledger verify`)."""
