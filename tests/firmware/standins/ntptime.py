# Stand-in for micropython-lib's `ntptime` (tests only). Same surface: `host`, `timeout`,
# time() -> seconds since the port's epoch, settime() sets the RTC from it. A lost reply
# raises OSError(ETIMEDOUT), as the real socket timeout does.
import errno
import time as _time

import machine

host = "pool.ntp.org"
timeout = 1


class _Sim:
    def __init__(self):
        self.fail_next = 0
        self.fail_always = False
        self.requests = 0
        self.offset = 0  # seconds added to the true time (a wrong server)


sim = _Sim()


def time():
    sim.requests += 1
    if sim.fail_always or sim.fail_next > 0:
        if sim.fail_next > 0:
            sim.fail_next -= 1
        raise OSError(errno.ETIMEDOUT)
    unix = int(_time.time()) + sim.offset
    return unix - (946684800 if machine.sim.epoch_year == 2000 else 0)


def settime():
    t = time()
    tm = _time.gmtime(t + (946684800 if machine.sim.epoch_year == 2000 else 0))
    machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6] + 1, tm[3], tm[4], tm[5], 0))
