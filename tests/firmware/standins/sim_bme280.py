# A BME280 on the stand-in I2C bus (tests only): chip id, soft reset, control registers,
# calibration registers and raw ADC values, laid out as in the Bosch datasheet (BST-BME280-DS002,
# section 5.3 memory map). Tests set the calibration words and raw readings.
import struct

CHIP_ID = 0x60


class BME280:
    def __init__(self, calib, adc_t, adc_p, adc_h, chip_id=CHIP_ID):
        """calib: dict with T1..T3, P1..P9, H1..H6 (the datasheet's dig_* words)."""
        self.regs = bytearray(256)
        self.regs[0xD0] = chip_id
        c = calib
        struct.pack_into("<HhhHhhhhhhhh", self.regs, 0x88, c["T1"], c["T2"], c["T3"],
                         c["P1"], c["P2"], c["P3"], c["P4"], c["P5"], c["P6"], c["P7"],
                         c["P8"], c["P9"])
        self.regs[0xA1] = c["H1"]
        struct.pack_into("<hB", self.regs, 0xE1, c["H2"], c["H3"])
        h4 = c["H4"] & 0xFFF
        h5 = c["H5"] & 0xFFF
        self.regs[0xE4] = h4 >> 4
        self.regs[0xE5] = (h4 & 0x0F) | ((h5 & 0x0F) << 4)
        self.regs[0xE6] = h5 >> 4
        struct.pack_into("<b", self.regs, 0xE7, c["H6"])
        self.set_raw(adc_t, adc_p, adc_h)
        self.writes = []
        self.measurements = 0

    def set_raw(self, adc_t, adc_p, adc_h):
        r = self.regs
        r[0xF7] = (adc_p >> 12) & 0xFF
        r[0xF8] = (adc_p >> 4) & 0xFF
        r[0xF9] = (adc_p & 0x0F) << 4
        r[0xFA] = (adc_t >> 12) & 0xFF
        r[0xFB] = (adc_t >> 4) & 0xFF
        r[0xFC] = (adc_t & 0x0F) << 4
        r[0xFD] = (adc_h >> 8) & 0xFF
        r[0xFE] = adc_h & 0xFF

    def read(self, reg, n):
        return bytes(self.regs[reg:reg + n])

    def write(self, reg, data):
        self.writes.append((reg, bytes(data)))
        for i, b in enumerate(data):
            if reg + i == 0xE0:
                if b == 0xB6:  # soft reset: control registers back to 0
                    self.regs[0xF2] = self.regs[0xF4] = self.regs[0xF5] = 0
                continue
            self.regs[reg + i] = b
        if reg <= 0xF4 < reg + len(data) and self.regs[0xF4] & 0x03 == 0x01:
            self.measurements += 1  # forced mode: one measurement, then back to sleep
            self.regs[0xF4] &= 0xFC
