"""The wire encoding shared by the Kafka and NATS backends.

One compact, versioned binary frame per envelope, so that a consumer can tell
busmon's envelopes from garbage and an old reader can reject a newer frame
instead of misreading it::

    magic "BM" | version u8 | flags u8 | seq u64 | ts_ns u64
    | key_len u16 | type_len u16 | header_count u16
    | key | type | (name_len u16, name, value_len u16, value) * header_count
    | payload (the rest)

All integers are big-endian.
"""

from __future__ import annotations

import struct
import time
from types import MappingProxyType
from typing import Any, Mapping

from busmon.bus.envelope import _NO_HEADERS, Envelope

_new = tuple.__new__
_monotonic_ns = time.monotonic_ns

MAGIC = b"BM"
VERSION = 1
_FIXED = struct.Struct(">2sBBQQHHH")
_U16 = struct.Struct(">H")
_SIZE = _FIXED.size
#: a plain frame (no flags) of this version starts with these four bytes
_PREFIX = MAGIC + bytes((VERSION, 0))
# a plain frame's fixed header in two parts: what changes per envelope (after the prefix), and
# the lengths, the same for a (key, type) pair, kept encoded with the key and type that follow
# them (see Framer)
_pack_head = struct.Struct(">4sQQ").pack
_LENGTHS = struct.Struct(">HHH")
_LENGTHS_AT = _SIZE - _LENGTHS.size
# decoding: the fixed header with the prefix read as one field
_unpack_fast = struct.Struct(">4sQQHHH").unpack_from
#: the encoded lengths, key and type of frames seen → (key, type): decoding a known key costs
#: one lookup instead of two slices and two UTF-8 decodes
_names: dict[bytes, tuple[str, str]] = {}
#: entries in ``_names``; a full cache starts over, so that an unbounded key space does not
#: grow memory
MAX_NAMES = 100_000


class DecodeError(ValueError):
    """The bytes are not a busmon envelope this version can read."""


def encode(envelope: Envelope) -> bytes:
    """Encode an envelope into one frame."""
    return frame(*envelope)


def frame(key_s: str, type_s: str, payload: bytes, seq: int, ts_ns: int,
          headers: Mapping[str, str] = _NO_HEADERS) -> bytes:
    """Encode an envelope's fields into one frame."""
    parts = [_pack_head(_PREFIX, seq, ts_ns), _tail(key_s, type_s, len(headers))]
    for name, value in headers.items():
        name_b, value_b = name.encode(), value.encode()
        if len(name_b) > 0xFFFF or len(value_b) > 0xFFFF:
            raise ValueError(f"header {name!r} is longer than 65535 bytes")
        parts += [_U16.pack(len(name_b)), name_b, _U16.pack(len(value_b)), value_b]
    parts.append(payload)
    return b"".join(parts)


def _tail(key_s: str, type_s: str, n_headers: int = 0) -> bytes:
    """What follows a frame's stamp: the lengths and header count, the key and the type, encoded
    (a :class:`Framer` keeps a plain frame's per key)."""
    key = key_s.encode()
    type_ = type_s.encode()
    if len(key) > 0xFFFF or len(type_) > 0xFFFF:
        raise ValueError("envelope key and type must each fit in 65535 bytes")
    return _LENGTHS.pack(len(key), len(type_), n_headers) + key + type_


class Framer:
    """Stamps and frames one publisher's envelopes.

    Per key it keeps, in one entry, the last sequence number stamped and the key's last
    type with its encoded tail (lengths, key, type), so that publishing on a known key
    costs one lookup and one pack: this runs once per publish. The entries are the per-key
    state a publisher keeps anyway (sequence numbers go on from where they were), with the
    tail beside each.
    """

    __slots__ = ("keys",)

    def __init__(self) -> None:
        #: key → [last sequence number stamped, the key's last type, that type's tail]
        self.keys: dict[str, list[Any]] = {}

    def next_seq(self, key: str) -> int:
        """Stamp the next sequence number for ``key``."""
        entry = self.keys.get(key)
        if entry is None:
            entry = self.keys[key] = [0, None, b""]
        seq = entry[0] = entry[0] + 1
        return seq

    def frame(self, envelope: Envelope) -> bytes:
        """The envelope stamped (its ``seq`` and ``ts_ns`` where 0, as a publish stamps them)
        and framed, in one step, without a stamped copy."""
        key, type_, payload, seq, ts_ns, headers = envelope
        entry = self.keys.get(key)
        if entry is None:
            entry = self.keys[key] = [0, None, b""]
        if headers is _NO_HEADERS and entry[1] is not type_ and entry[1] != type_:
            entry[2] = _tail(key, type_)
            entry[1] = type_
        if not seq or not ts_ns:
            stamp = entry[0] = entry[0] + 1
            seq, ts_ns = seq or stamp, ts_ns or _monotonic_ns()
        if headers is _NO_HEADERS:
            return b"".join((_pack_head(_PREFIX, seq, ts_ns), entry[2], payload))
        return frame(key, type_, payload, seq, ts_ns, headers)


def decode(frame: bytes) -> Envelope:
    """Decode one frame; raise :class:`DecodeError` on anything malformed."""
    # the common case (a known key and type, no headers, well formed) in as few steps as
    # possible: this runs once per delivery. A remembered (lengths, key, type) also vouches
    # that the frame has no headers and is long enough: one cut short, or with headers,
    # cannot match one
    try:
        prefix, seq, ts_ns, key_len, type_len, _ = _unpack_fast(frame)
        if prefix == _PREFIX and frame.__class__ is bytes:
            end = _SIZE + key_len + type_len
            names = _names.get(frame[_LENGTHS_AT:end])
            if names is not None:
                return _new(Envelope, (names[0], names[1], frame[end:], seq, ts_ns, _NO_HEADERS))
    except (struct.error, TypeError):  # too short, or not bytes at all: said by the careful path
        pass
    return _decode_checked(frame)


def _decode_checked(frame: bytes) -> Envelope:
    """Decode with every check, saying what is wrong."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise DecodeError(f"no frame: {type(frame).__name__}")  # a Kafka tombstone has no value
    frame = bytes(frame)  # a memoryview has no decode(), and the payload is bytes in any case
    try:
        magic, version, _flags, seq, ts_ns, key_len, type_len, n_headers = _FIXED.unpack_from(frame)
    except struct.error as exc:
        raise DecodeError(f"frame too short ({len(frame)} bytes)") from exc
    if magic != MAGIC:
        raise DecodeError(f"bad magic {magic!r}")
    if version != VERSION:
        raise DecodeError(f"unsupported envelope version {version}")
    pos = _FIXED.size
    try:
        key = frame[pos : pos + key_len].decode()
        pos += key_len
        type_ = frame[pos : pos + type_len].decode()
        pos += type_len
        headers: dict[str, str] = {}
        for _ in range(n_headers):
            (n,) = _U16.unpack_from(frame, pos)
            pos += 2
            name = frame[pos : pos + n].decode()
            pos += n
            (n,) = _U16.unpack_from(frame, pos)
            pos += 2
            headers[name] = frame[pos : pos + n].decode()
            pos += n
    except (struct.error, UnicodeDecodeError) as exc:
        raise DecodeError(f"malformed frame: {exc}") from exc
    if pos > len(frame):
        raise DecodeError("frame truncated")
    if not key or not type_:
        raise DecodeError("envelope key and type must be non-empty")
    if not headers:  # the next frame with this key and type takes the fast path
        if len(_names) >= MAX_NAMES:
            _names.clear()
        _names[frame[_LENGTHS_AT:_SIZE + key_len + type_len]] = (key, type_)
    # every field is checked above: build the envelope without validating twice
    return _new(Envelope, (key, type_, frame[pos:], seq, ts_ns,
                           _NO_HEADERS if not headers else MappingProxyType(headers)))
