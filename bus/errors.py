"""Errors the bus raises, so callers can tell a broker problem from a bug."""


class BusError(Exception):
    """Base class of everything the bus raises on purpose."""


class BusConnectError(BusError):
    """The broker could not be reached within the connect timeout."""


class BusRefusedError(BusConnectError):
    """The broker answered and refused us: wrong credentials, or a TLS handshake that failed
    (an untrusted certificate). Retrying with the same settings cannot help."""


class BusClosedError(BusError):
    """The bus was used after ``close()`` (or before ``start()``)."""


class BusConfigError(BusError, ValueError):
    """A bus URL, option or factory path is wrong; ``option`` names the option at fault, if one."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class BusCloseError(BusError):
    """``close()`` finished, but not cleanly: a shutdown call timed out or failed, or a task
    ignored cancellation. Everything that could be closed was closed first."""


class BusFault(BusError):
    """A failure noticed outside any call: a consumer loop or worker died, a connection was
    lost. Recorded on the bus (``bus.fault``, ``bus.faulted``) so a caller can react at once."""
