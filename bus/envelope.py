"""The unit the bus carries: an ordered, timestamped event for one key."""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping, NamedTuple

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_new = tuple.__new__
#: the wire frame gives a key, a type and each header name and value 16 bits of length: every
#: backend refuses a longer one here, not only those that frame (the memory bus would carry it)
MAX_FIELD_BYTES = 0xFFFF
#: a str this long or shorter fits however it encodes (UTF-8: at most 4 bytes a character)
_SURELY_FITS = MAX_FIELD_BYTES // 4


def _check_fits(field: str, text: str) -> None:
    if len(text) <= _SURELY_FITS:
        return
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_FIELD_BYTES:
        raise ValueError(f"Envelope.{field} must be at most {MAX_FIELD_BYTES} bytes in UTF-8, got {size:,}")


class _Fields(NamedTuple):
    key: str
    type: str
    payload: bytes
    seq: int = 0
    ts_ns: int = 0
    headers: Mapping[str, str] = _NO_HEADERS


class Envelope(_Fields):
    """One event: ``Envelope(key=..., type=..., payload=...)``.

    ``key`` is the aggregate id that orders: every envelope with the same key is
    handled in order by one worker. ``seq`` is the per-key sequence number and
    ``ts_ns`` a monotonic timestamp; the bus stamps both at publish when they are
    left at 0, so end-to-end latency and the delivery audit are exact within one
    process.

    An immutable named tuple rather than a frozen dataclass: the bus copies one
    per publish, and a tuple copy costs a quarter of a frozen dataclass's.
    """

    __slots__ = ()

    def __new__(
        cls,
        key: str,
        type: str,  # noqa: A002 - the field is called "type" in the wire format and the design
        payload: bytes,
        seq: int = 0,
        ts_ns: int = 0,
        headers: Mapping[str, str] | None = None,
    ) -> Envelope:
        if key.__class__ is not str or not key:
            raise ValueError(f"Envelope.key must be a non-empty str, got {key!r}")
        if type.__class__ is not str or not type:
            raise ValueError(f"Envelope.type must be a non-empty str, got {type!r}")
        if len(key) > _SURELY_FITS or len(type) > _SURELY_FITS:  # only a long one is encoded to check
            _check_fits("key", key)
            _check_fits("type", type)
        if payload.__class__ is not bytes:
            if not isinstance(payload, (bytearray, memoryview)):
                raise ValueError(f"Envelope.payload must be bytes, got {payload.__class__.__name__}")
            payload = bytes(payload)
        if seq.__class__ is not int or seq < 0:
            raise ValueError(f"Envelope.seq must be an int >= 0, got {seq!r}")
        if ts_ns.__class__ is not int or ts_ns < 0:
            raise ValueError(f"Envelope.ts_ns must be an int >= 0, got {ts_ns!r}")
        if not headers:
            if headers is not None and not isinstance(headers, Mapping):
                raise ValueError("Envelope.headers must map str to str")
            headers = _NO_HEADERS
        else:
            if not isinstance(headers, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
            ):
                raise ValueError("Envelope.headers must map str to str")
            for name, value in headers.items():
                _check_fits(f"headers[{name[:40]!r}] name", name)
                _check_fits(f"headers[{name[:40]!r}]", value)
            headers = MappingProxyType(dict(headers))
        return _new(cls, (key, type, payload, seq, ts_ns, headers))

    def stamped(self, seq: int, ts_ns: int) -> Envelope:
        """A copy with the publish-time sequence number and timestamp filled in.

        Skips validation: every field comes from this already valid envelope.
        """
        return _new(Envelope, (self[0], self[1], self[2], self[3] or seq, self[4] or ts_ns, self[5]))

    def __reduce__(self):
        return (_rebuild, (self[0], self[1], self[2], self[3], self[4], dict(self[5])))

    def __repr__(self) -> str:
        return (f"Envelope(key={self.key!r}, type={self.type!r}, payload=<{len(self.payload)} bytes>, "
                f"seq={self.seq}, ts_ns={self.ts_ns})")


def _rebuild(key: str, type_: str, payload: bytes, seq: int, ts_ns: int, headers: dict) -> Envelope:
    return Envelope(key=key, type=type_, payload=payload, seq=seq, ts_ns=ts_ns, headers=headers)
