"""Training-data and model provenance: datasets exported from the ledger with everything an
offline verifier needs, and model fingerprints anchored as ledger entries (docs/provenance.md).

Pure formats: `dataset` (selection, rows, directory layout), `croissant` (the metadata),
`statement` (the model's in-toto statement and its signature). I/O: `export`, `verify`
(datasets), `model` (register, verify, history, who), `files`."""
