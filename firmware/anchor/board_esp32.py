# ESP32 board layer (sys.platform == "esp32"): the shared Wi-Fi/NTP/watchdog/LED/BME280 part
# from board_net.py, plus the ESP32's own clock epoch and internal temperature sensor.
#
# Clock: time.time() on the ESP32 port counts seconds from 2000-01-01, so unix = t + 946684800
# (board_net finds the epoch with time.gmtime(0)[0], as the MicroPython docs advise).
# Internal temperature:
# - ESP32-S2/S3/C3/C6: esp32.mcu_temperature(), calibrated, integer degrees C.
# - classic ESP32: only esp32.raw_temperature(), an uncalibrated die reading in degrees F that
#   runs well above ambient, differs between chips by several degrees, and on chips without a
#   working sensor always returns 128. We report it converted to degrees C, to one decimal, and
#   leave it out when it reads 128 (see docs/boards.md).
import esp32

from anchor.board_net import NetBoard

_ABSENT_F = 128


class Board(NetBoard):
    name = "esp32"
    WDT_MAX_MS = 0

    def _mcu_temp(self):
        if hasattr(esp32, "mcu_temperature"):
            try:
                return esp32.mcu_temperature()
            except OSError:  # sensor out of its configured range
                self.sensor_errors += 1
                return None
        f = esp32.raw_temperature()
        if f == _ABSENT_F:
            return None
        return round((f - 32) / 1.8, 1)
