# CBOR's types beyond Python's plain ones: Tag (a tagged item, both ways) and CBORError (what
# the encoder and the decoder raise), with the encoder's paths for them: encoding a Tag, and the
# errors for what it cannot encode. A cold companion of cbor.py (cbor.COLD): signing a reading
# needs none of it, so the device loop does not keep it in RAM.

from anchor import Error
from anchor.cbor import _head, encode_into


class CBORError(Error):
    pass


class Tag:
    __slots__ = ("tag", "value")

    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and self.tag == other.tag and self.value == other.value

    def __repr__(self):
        return "Tag(%d, %r)" % (self.tag, self.value)


def encode_error(*key):
    """cbor.py's errors: a duplicate map key (the key given), or an integer beyond 64 bits."""
    if key:
        return CBORError("duplicate map key %r" % (key[0],))
    return CBORError("integer too large for CBOR without bignums")


def encode_other(buf, obj):
    """cbor.encode_into for what is not a plain type: a Tag, else CBORError."""
    if not isinstance(obj, Tag):
        raise CBORError("cannot encode %s in CBOR" % type(obj).__name__)
    _head(buf, 6, obj.tag)
    encode_into(buf, obj.value)
