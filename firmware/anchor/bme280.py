# BME280 temperature / humidity / pressure sensor on I2C, written from the Bosch datasheet
# (BST-BME280-DS002): forced-mode measurements with 1x oversampling, and the datasheet's integer
# compensation formulas (section 4.2.3), which keep full precision on ports whose floats are
# single precision (ESP32, RP2). MicroPython's integers grow as needed, so the 64-bit pressure
# formula needs no special care.
import struct
import time

from micropython import const

_REG_CALIB_A = const(0x88)  # 26 bytes: dig_T1..dig_P9, (0xA0 unused), dig_H1
_REG_CHIP_ID = const(0xD0)
_REG_RESET = const(0xE0)
_REG_CALIB_B = const(0xE1)  # 7 bytes: dig_H2..dig_H6
_REG_CTRL_HUM = const(0xF2)
_REG_STATUS = const(0xF3)
_REG_CTRL_MEAS = const(0xF4)
_REG_CONFIG = const(0xF5)
_REG_DATA = const(0xF7)  # 8 bytes: press[3], temp[3], hum[2]
_CHIP_ID = const(0x60)
_FORCED_X1 = const(0x25)  # osrs_t = x1 (001), osrs_p = x1 (001), mode = forced (01)
_MEAS_MS = const(10)  # t_measure,max with all three at x1 is 9.3 ms (datasheet 9.1)

ADDRESSES = (0x76, 0x77)  # SDO to GND / SDO to VDDIO


class BME280:
    def __init__(self, i2c, addr=0x76):
        self.i2c = i2c
        self.addr = addr
        chip = i2c.readfrom_mem(addr, _REG_CHIP_ID, 1)[0]
        if chip != _CHIP_ID:
            raise OSError("I2C device 0x%02x is not a BME280 (chip id 0x%02x)" % (addr, chip))
        i2c.writeto_mem(addr, _REG_RESET, b"\xb6")
        time.sleep_ms(3)  # start-up time after reset, 2 ms
        a = i2c.readfrom_mem(addr, _REG_CALIB_A, 26)
        b = i2c.readfrom_mem(addr, _REG_CALIB_B, 7)
        (self.t1, self.t2, self.t3, self.p1, self.p2, self.p3, self.p4, self.p5, self.p6,
         self.p7, self.p8, self.p9) = struct.unpack("<HhhHhhhhhhhh", a)
        self.h1 = a[25]
        self.h2, self.h3 = struct.unpack("<hB", b)
        h4 = (b[3] << 4) | (b[4] & 0x0F)  # 12-bit signed, split across 0xE4/0xE5
        h5 = (b[5] << 4) | (b[4] >> 4)
        self.h4 = h4 - 4096 if h4 & 0x800 else h4
        self.h5 = h5 - 4096 if h5 & 0x800 else h5
        self.h6 = b[6] - 256 if b[6] & 0x80 else b[6]
        i2c.writeto_mem(addr, _REG_CONFIG, b"\x00")  # filter off, standby irrelevant in forced mode
        self._buf = bytearray(8)

    def read_raw(self):
        """One forced measurement; returns (adc_T, adc_P, adc_H)."""
        i2c = self.i2c
        i2c.writeto_mem(self.addr, _REG_CTRL_HUM, b"\x01")  # applies at the next ctrl_meas write
        i2c.writeto_mem(self.addr, _REG_CTRL_MEAS, bytes((_FORCED_X1,)))
        time.sleep_ms(_MEAS_MS)
        for _ in range(10):
            if not i2c.readfrom_mem(self.addr, _REG_STATUS, 1)[0] & 0x08:  # measuring bit
                break
            time.sleep_ms(2)
        d = self._buf
        i2c.readfrom_mem_into(self.addr, _REG_DATA, d)
        adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        adc_h = (d[6] << 8) | d[7]
        return adc_t, adc_p, adc_h

    def compensate(self, adc_t, adc_p, adc_h):
        """Datasheet integer compensation. Returns (T in 0.01 degC, P in Pa/256, H in %RH/1024)."""
        # temperature (datasheet BME280_compensate_T_int32)
        v1 = (((adc_t >> 3) - (self.t1 << 1)) * self.t2) >> 11
        d = (adc_t >> 4) - self.t1
        v2 = (((d * d) >> 12) * self.t3) >> 14
        t_fine = v1 + v2
        t = (t_fine * 5 + 128) >> 8
        # pressure (BME280_compensate_P_int64)
        v1 = t_fine - 128000
        v2 = v1 * v1 * self.p6 + ((v1 * self.p5) << 17) + (self.p4 << 35)
        v1 = ((v1 * v1 * self.p3) >> 8) + ((v1 * self.p2) << 12)
        v1 = (((1 << 47) + v1) * self.p1) >> 33
        if v1 == 0:
            p = 0  # avoid a division by zero, as the datasheet does
        else:
            p = 1048576 - adc_p
            p = _cdiv(((p << 31) - v2) * 3125, v1)
            v1 = (self.p9 * (p >> 13) * (p >> 13)) >> 25
            v2 = (self.p8 * p) >> 19
            p = ((p + v1 + v2) >> 8) + (self.p7 << 4)
        # humidity (bme280_compensate_H_int32)
        v = t_fine - 76800
        v = ((((adc_h << 14) - (self.h4 << 20) - (self.h5 * v)) + 16384) >> 15) * (
            ((((((v * self.h6) >> 10) * (((v * self.h3) >> 11) + 32768)) >> 10) + 2097152)
             * self.h2 + 8192) >> 14)
        v = v - (((((v >> 15) * (v >> 15)) >> 7) * self.h1) >> 4)
        v = 0 if v < 0 else (419430400 if v > 419430400 else v)
        return t, p, v >> 12

    def read(self):
        """(temperature degC, pressure hPa, relative humidity %) from one forced measurement."""
        t, p, h = self.compensate(*self.read_raw())
        return t / 100, round(p / 25600, 2), round(h / 1024, 1)


def _cdiv(a, b):
    # C's integer division truncates toward zero; Python's // floors.
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q
