# On the board: its key. Generated here (os.urandom on the board); the private key never leaves
# it, only the public key is printed.

from anchor import Error, state, state_create


def ensure_key(d, new_key, dev_id, downlink_hex=None):
    """The device state in directory d: kept if there is one, unless new_key; else created for
    dev_id; with downlink_hex (the gateway's downlink key, 130 hex digits) also d/gateway.json
    (the device's MAC key for acks and commands, from ECDH on the board). Print repr((whether
    the key is new, the state's device id, the public key in hex, the next seq the board
    signs))."""
    try:
        dev = state.Device.load(d)
    except Error:
        dev = None
    first_seq = 0
    if dev is not None and new_key:
        # a new key continues the old seq numbers: a seq is never reused by a device id
        first_seq = max(dev.seq, dev.reserved_upto)
        state_create.remove(d)
        dev = None
    fresh = dev is None
    if fresh:
        dev = state.Device.create(d, dev_id=dev_id, first_seq=first_seq)
    if downlink_hex and dev.dev_id == dev_id:
        from anchor import downlink_setup

        downlink_setup.trust(dev, downlink_hex)
    print(repr((fresh, dev.dev_id, "".join("%02x" % b for b in dev.public_key), dev.seq)))
