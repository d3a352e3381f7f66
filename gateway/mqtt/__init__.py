"""The MQTT connection layer: our own asyncio client (`client.py`) over `gateway.wire.mqtt`."""
