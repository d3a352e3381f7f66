# Stand-in for MicroPython's `esp32` module (tests only). The classic ESP32 offers only
# raw_temperature() (an uncalibrated reading in degrees Fahrenheit); ESP32-S2/S3/C3/C6 offer only
# mcu_temperature() (calibrated, int degrees Celsius). See ports/esp32/modesp32.c.


class _Sim:
    def __init__(self):
        self.temp_c = 41  # die temperature
        self.variant("esp32s3")

    def variant(self, name):
        self.name = name
        g = globals()
        g.pop("raw_temperature", None)
        g.pop("mcu_temperature", None)
        if name == "esp32":
            g["raw_temperature"] = _raw_temperature
        else:
            g["mcu_temperature"] = _mcu_temperature


def _raw_temperature():
    return int(sim.temp_c * 9 / 5 + 32)


def _mcu_temperature():
    if not -10 <= sim.temp_c <= 80:
        raise OSError(-1)  # out of the configured sensor range (ESP_ERROR_CHECK)
    return int(sim.temp_c + 0.5)


sim = _Sim()
