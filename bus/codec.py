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
from types import MappingProxyType
from typing import Mapping

from bus.envelope import _NO_HEADERS, Envelope

_new = tuple.__new__

MAGIC = b"BM"
VERSION = 1
_FIXED = struct.Struct(">2sBBQQHHH")
_U16 = struct.Struct(">H")
_unpack = _FIXED.unpack_from
_SIZE = _FIXED.size
# the fixed header in two parts: what changes per envelope, and what is the same for a
# (key, type) pair, kept encoded with the key and type that follow it (per key, with its
# last type: a key's envelopes mostly share one)
_pack_head = struct.Struct(">2sBBQQ").pack
_LENGTHS = struct.Struct(">HHH")
_tails: dict[str, tuple[str, bytes]] = {}
MAX_TAILS = 100_000


class DecodeError(ValueError):
    """The bytes are not a busmon envelope this version can read."""


def encode(envelope: Envelope) -> bytes:
    """Encode an envelope into one frame."""
    return frame(*envelope)


def frame(key_s: str, type_s: str, payload: bytes, seq: int, ts_ns: int,
          headers: Mapping[str, str] = _NO_HEADERS) -> bytes:
    """Encode an envelope's fields into one frame (a publish stamps and frames in one go)."""
    if headers is _NO_HEADERS:
        cached = _tails.get(key_s)
        if cached is not None and (cached[0] is type_s or cached[0] == type_s):
            return b"".join((_pack_head(MAGIC, VERSION, 0, seq, ts_ns), cached[1], payload))
    key = key_s.encode()
    type_ = type_s.encode()
    if not headers and len(key) <= 0xFFFF and len(type_) <= 0xFFFF:  # the common case
        if len(_tails) >= MAX_TAILS:  # an unbounded key space must not grow memory
            _tails.clear()
        tail = _LENGTHS.pack(len(key), len(type_), 0) + key + type_
        _tails[key_s] = (type_s, tail)
        return b"".join((_pack_head(MAGIC, VERSION, 0, seq, ts_ns), tail, payload))
    if len(key) > 0xFFFF or len(type_) > 0xFFFF:
        raise ValueError("envelope key and type must each fit in 65535 bytes")
    parts = [_FIXED.pack(MAGIC, VERSION, 0, seq, ts_ns, len(key), len(type_), len(headers)), key, type_]
    for name, value in headers.items():
        name_b, value_b = name.encode(), value.encode()
        if len(name_b) > 0xFFFF or len(value_b) > 0xFFFF:
            raise ValueError(f"header {name!r} is longer than 65535 bytes")
        parts += [_U16.pack(len(name_b)), name_b, _U16.pack(len(value_b)), value_b]
    parts.append(payload)
    return b"".join(parts)


def decode(frame: bytes) -> Envelope:
    """Decode one frame; raise :class:`DecodeError` on anything malformed."""
    # the common case (no headers, well formed) in as few steps as possible: once per delivery
    try:
        magic, version, _flags, seq, ts_ns, key_len, type_len, n_headers = _unpack(frame)
        end = _SIZE + key_len + type_len
        if magic == MAGIC and version == VERSION and not n_headers and key_len and type_len \
                and end <= len(frame) and frame.__class__ is bytes:
            return _new(Envelope, (frame[_SIZE:_SIZE + key_len].decode(), frame[_SIZE + key_len:end].decode(),
                                   frame[end:], seq, ts_ns, _NO_HEADERS))
    except (struct.error, UnicodeDecodeError, TypeError):
        pass
    return _decode_checked(frame)


def _decode_checked(frame: bytes) -> Envelope:
    """Decode with every check, saying what is wrong."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise DecodeError(f"no frame: {type(frame).__name__}")  # a Kafka tombstone has no value
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
    # every field is checked above: build the envelope without validating twice
    return _new(Envelope, (key, type_, bytes(frame[pos:]), seq, ts_ns,
                           _NO_HEADERS if not headers else MappingProxyType(headers)))
