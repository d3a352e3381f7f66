# Raspberry Pi Pico W board layer (sys.platform == "rp2"): the shared Wi-Fi/NTP/watchdog/LED/
# BME280 part from board_net.py, plus the RP2040's clock epoch (1970, as on the Unix port), its
# watchdog limit and its internal temperature sensor on ADC channel 4:
#   v = read_u16() * 3.3 / 65535;  T = 27 - (v - 0.706) / 0.001721   (RP2040 datasheet 4.9.5)
# The reading depends on the 3.3 V reference: expect a few degrees of error.
import machine

from anchor.board_net import NetBoard

_ADC_TEMP = 4


class Board(NetBoard):
    name = "rp2"
    WDT_MAX_MS = 8388  # ports/rp2/machine_wdt.c: larger timeouts raise ValueError

    def __init__(self, cfg):
        NetBoard.__init__(self, cfg)
        self._adc = machine.ADC(_ADC_TEMP)

    def _mcu_temp(self):
        v = self._adc.read_u16() * 3.3 / 65535
        return round(27 - (v - 0.706) / 0.001721, 2)
