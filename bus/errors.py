"""Errors the bus raises, so callers can tell a broker problem from a bug."""


class BusError(Exception):
    """Base class of everything the bus raises on purpose."""


class BusConnectError(BusError):
    """The broker could not be reached within the connect timeout."""


class BusClosedError(BusError):
    """The bus was used after ``close()`` (or before ``start()``)."""


class BusConfigError(BusError, ValueError):
    """A bus URL, option or factory path is wrong."""
