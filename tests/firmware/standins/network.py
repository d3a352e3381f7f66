# Stand-in for MicroPython's `network` module (WLAN station) on ESP32 / RP2 (tests only).
# Status values follow ports/esp32/modnetwork_globals.h (ESP-IDF reason codes) and
# extmod/network_cyw43.c (CYW43_LINK_*). See README.md here.
import time

STA_IF = 0
AP_IF = 1

# ESP32 values until sim.flavour("rp2") rebinds them
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_CONNECT_FAIL = 203
STAT_BEACON_TIMEOUT = 200

_CONSTANTS = {
    # name: (esp32, rp2)
    "STAT_IDLE": (1000, 0),
    "STAT_CONNECTING": (1001, 1),
    "STAT_GOT_IP": (1010, 3),
    "STAT_NO_AP_FOUND": (201, -2),
    "STAT_WRONG_PASSWORD": (202, -3),
    "STAT_CONNECT_FAIL": (203, -1),
    "STAT_BEACON_TIMEOUT": (200, None),
}


class _Sim:
    def __init__(self):
        self.ap = {"anchor-lab": "correct horse"}  # ssid -> password
        self.ap_up = True
        self.join_ms = 30  # time a join takes
        self.fail_joins = 0  # the next n joins end in STAT_CONNECT_FAIL
        self.joins = 0
        self.drops = 0  # drop() calls; a station that came up before the last one has lost its link
        self.flavour("esp32")

    def flavour(self, name):
        self.name = name
        col = 1 if name == "rp2" else 0
        g = globals()
        for k, v in _CONSTANTS.items():
            if v[col] is None:
                g.pop(k, None)
            else:
                g[k] = v[col]

    def drop(self):
        """The access point goes away under a connected station (link lost)."""
        self.drops += 1


sim = _Sim()
_ifaces = {}
_hostname = ["mpy-anchor"]


def hostname(name=None):
    if name is None:
        return _hostname[0]
    _hostname[0] = name


class WLAN:
    IF_STA = STA_IF
    IF_AP = AP_IF

    def __new__(cls, interface=STA_IF):
        w = _ifaces.get(interface)
        if w is None:  # one object per interface, as on the real ports
            w = object.__new__(cls)
            w._if = interface
            w._active = False
            w._state = "idle"
            w._ssid = None
            w._key = None
            w._t0 = 0
            w._outcome = None
            w._drops = 0  # sim.drops when the join ended
            _ifaces[interface] = w
        return w

    def __init__(self, interface=STA_IF):
        pass

    def active(self, is_active=None):
        if is_active is None:
            return self._active
        self._active = bool(is_active)
        if not self._active:
            self._state = "idle"
        return None

    def connect(self, ssid=None, key=None, *, bssid=None):
        if not self._active:
            raise OSError("Wifi Not Started")  # ESP32: connect() before active(True)
        sim.joins += 1
        self._ssid = ssid
        self._key = key
        self._t0 = time.ticks_ms()
        self._state = "joining"
        if sim.fail_joins > 0:
            sim.fail_joins -= 1
            self._outcome = "fail"
        elif not sim.ap_up or ssid not in sim.ap:
            self._outcome = "noap"
        elif sim.ap[ssid] != key:
            self._outcome = "badauth"
        else:
            self._outcome = "up"

    def disconnect(self):
        self._state = "idle"

    def _settle(self):
        if self._state == "joining" and time.ticks_diff(time.ticks_ms(), self._t0) >= sim.join_ms:
            self._state = self._outcome
            self._drops = sim.drops
        if self._state == "up" and (not sim.ap_up or self._drops != sim.drops):
            self._state = "lost"

    def isconnected(self):
        self._settle()
        return self._active and self._state == "up"

    def status(self, param=None):
        if param == "rssi":
            if not self.isconnected():
                raise OSError("STA not connected")
            return -58
        if param is not None:
            raise ValueError("unknown status param")
        self._settle()
        s = self._state
        if s == "up":
            return STAT_GOT_IP
        if s == "joining":
            return STAT_CONNECTING
        if s == "noap":
            return STAT_NO_AP_FOUND
        if s == "badauth":
            return STAT_WRONG_PASSWORD
        if s == "fail":
            return STAT_CONNECT_FAIL
        if s == "lost":
            return STAT_BEACON_TIMEOUT if sim.name == "esp32" else STAT_CONNECT_FAIL
        return STAT_IDLE

    def ifconfig(self, cfg=None):
        if cfg is not None:
            return None
        if self.isconnected():
            return ("192.168.4.23", "255.255.255.0", "192.168.4.1", "192.168.4.1")
        return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")

    def config(self, *args, **kw):
        if args == ("mac",):
            import machine

            return machine.unique_id()[:6]
        if args:
            raise ValueError("unknown config param")
        return None
