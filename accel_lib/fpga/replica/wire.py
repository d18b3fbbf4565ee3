"""A protobuf message judged on the wire, before it is decoded: its fields' occurrences counted against limits, and
one field read alone.

Decoding costs about 20x the wire bytes when a message holds many tiny elements (2 bytes on the wire, a string view
and its slot once decoded), so a budget counted after decoding comes too late. Wire format facts from
https://protobuf.dev/programming-guides/encoding/ (varints, the four wire types in use, packed repeated fields).
"""
from __future__ import annotations

# What decoding costs at most, measured with protobuf's upb decoder (peak resident memory, tests/test_wire.py):
OCCURRENCE_BYTES = 64        # one string or scalar occurrence beyond its payload (measured 15-46: slot, view, growth)
MESSAGE_BYTES = 192          # one nested message or map entry (measured 89 and 129)
GROWTH = 4                   # repeated values whose count is not on the wire: the array doubles, and every smaller
                             # copy stays in the arena (measured 2.0x at 2^20 values, 2.9x at 2^20 + 1)
OTHERS = 1024                # occurrences of fields with no cap of their own, in one whole message
MAX_DEPTH = 16               # nested messages deeper than this are refused (the protocols here nest 4 deep)


class WireError(ValueError):
    """A message refused on the wire; ``code`` is its gRPC status name."""

    def __init__(self, message, code="INVALID_ARGUMENT"):
        super().__init__(message)
        self.code = code


def _varint(buf, pos, end):
    value = shift = 0
    while pos < end and shift < 64:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
    raise WireError("the message is malformed: a varint runs past its field.")


def _field(buf, pos, end):
    """(number, wire type, tag start, value start, value end) of the field occurrence at buf[pos:end]."""
    start = pos
    key, pos = _varint(buf, pos, end)
    number, kind = key >> 3, key & 7
    if number == 0:
        raise WireError("the message is malformed: field number 0.")
    if kind == 0:
        a = pos
        _, pos = _varint(buf, pos, end)
    elif kind in (1, 5):
        a, pos = pos, pos + (8 if kind == 1 else 4)
    elif kind == 2:
        n, a = _varint(buf, pos, end)
        pos = a + n
    else:
        raise WireError(f"the message is malformed or uses groups (wire type {kind}), which this protocol does not.")
    if pos > end:
        raise WireError("the message is malformed: a field runs past its end.")
    return number, kind, start, a, pos


class _Census:
    """One walk of a message: occurrences counted per field and in all, the decoded size estimated as it goes."""

    def __init__(self, caps, budget):
        self.caps, self.budget, self.others, self.decoded = caps, budget, 0, 0

    def walk(self, buf, pos, end, desc, depth):
        if depth > MAX_DEPTH:
            raise WireError(f"the message nests deeper than {MAX_DEPTH} levels.")
        counts = {}
        while pos < end:
            number, kind, start, a, b = _field(buf, pos, end)
            pos = b
            fd = desc.fields_by_number.get(number) if desc is not None else None
            name = f"{desc.name}.{fd.name}" if fd is not None else None
            repeated = fd is not None and fd.is_repeated
            if repeated and kind in (1, 5) and fd.message_type is None:
                pos = self._run(buf, start, b, end)         # an unpacked run of fixed-width values, one count
                self._spend(GROWTH * (b - a) * (pos - start) // (b - start))
                continue
            cap = self.caps.get(name)
            if cap is not None:
                counts[name] = counts.get(name, 0) + 1
                if counts[name] > cap[0]:
                    raise WireError(f"the request holds more than {cap[0]:,} {fd.name} ({cap[1]}).",
                                    "RESOURCE_EXHAUSTED")
            else:
                self.others += 1
                if self.others > OTHERS:
                    raise WireError(f"the message holds more than {OTHERS:,} field occurrences outside its "
                                    "values; no request of this protocol needs as many.", "RESOURCE_EXHAUSTED")
            if kind == 2 and fd is not None and fd.message_type is not None:
                self._spend(MESSAGE_BYTES)
                self.walk(buf, a, b, fd.message_type, depth + 1)
            elif kind == 2 and repeated and _varint_width(fd):      # packed varints: at least a byte each on the wire
                self._spend(OCCURRENCE_BYTES + GROWTH * _varint_width(fd) * _count_varints(buf, a, b))
            else:
                self._spend(OCCURRENCE_BYTES + (b - a if kind == 2 else 0))

    @staticmethod
    def _run(buf, start, b, end):
        """The end of the run of identical tags (each followed by a value as wide as the first) from ``start``."""
        import numpy as np
        step = b - start
        tag = bytes(buf[start:b - (8 if buf[start] & 7 == 1 else 4)])
        k = (end - start) // step
        rows = np.frombuffer(buf, np.uint8, count=k * step, offset=start).reshape(k, step)[:, :len(tag)]
        same = (rows == np.frombuffer(tag, np.uint8)).all(axis=1)
        n = k if same.all() else int(np.argmin(same))
        return start + n * step

    def _spend(self, n):
        self.decoded += n
        if self.decoded > self.budget:
            raise WireError(f"the request would decode to more than {self.budget / 2**20:,.1f} MB "
                            "(max_request_mb); it was refused before decoding.", "RESOURCE_EXHAUSTED")


def _varint_width(fd) -> int:
    """The bytes one decoded value of a varint field takes (0 for other types)."""
    return {fd.TYPE_INT64: 8, fd.TYPE_UINT64: 8, fd.TYPE_SINT64: 8, fd.TYPE_INT32: 4, fd.TYPE_UINT32: 4,
            fd.TYPE_SINT32: 4, fd.TYPE_ENUM: 4, fd.TYPE_BOOL: 1}.get(fd.type, 0)


def _count_varints(buf, a, b) -> int:
    import numpy as np
    return int(np.count_nonzero(np.frombuffer(buf, np.uint8, count=b - a, offset=a) < 0x80))


def check(buf: bytes, descriptor, caps=None, budget=1 << 62) -> int:
    """Judge a serialized message of type ``descriptor`` before decoding it: each field named in ``caps``
    ({"Message.field": (most occurrences in one message, why)}) within its cap, all other occurrences together
    within OTHERS, and what it decodes to within ``budget`` bytes. Returns that estimate; raises WireError."""
    census = _Census(caps or {}, budget)
    census.walk(buf, 0, len(buf), descriptor, 0)
    return census.decoded


def only(buf: bytes, descriptor, field: str) -> bytes:
    """The occurrences of one top-level field of a serialized message, as a message of its own (the same type):
    decoding it reads that field as decoding the whole would, and nothing else."""
    number = descriptor.fields_by_name[field].number
    parts, seen = [], 0
    pos = 0
    while pos < len(buf):
        n, _, start, _, pos = _field(buf, pos, len(buf))
        seen += 1
        if seen > OTHERS:
            raise WireError(f"the message holds more than {OTHERS:,} top-level fields; no request of this protocol "
                            "needs as many.", "RESOURCE_EXHAUSTED")
        if n == number:
            parts.append(buf[start:pos])
    return b"".join(parts)
