"""iot-anchor gateway: verify signed sensor readings and anchor them in a Merkle-tree ledger."""

__version__ = "0.1.0"
