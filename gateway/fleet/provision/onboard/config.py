# On the board: the config that provisioning wrote, read by the firmware's own config module.

from anchor import config


def check(path):
    """Parse the config at path as the board will at boot: a bad key raises here."""
    config.load(path)


def wifi_ssid(path):
    """Print the Wi-Fi network named in the config at path."""
    print(config.load(path)["wifi_ssid"])
