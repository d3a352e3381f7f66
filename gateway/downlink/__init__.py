"""The authenticated downlink on the gateway's side: acks and commands sealed for each device,
the devices' confirmations verified. `gateway/wire/downlink.py` holds the formats; this package
holds the keys and the counters (`channel.Downlink`)."""

from gateway.downlink.channel import Downlink

__all__ = ["Downlink"]
