"""asyncpg's errors, translated for the ledger's service layer: values PostgreSQL can never store
become `InvalidEventError`; a database that is down or restarting becomes `StoreUnavailableError`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from koprogo_ledger.domain.errors import InvalidEventError, StoreUnavailableError

# The same values fail the same way on every retry.
NEVER_STORABLE = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.CheckViolationError,
    asyncpg.exceptions.NotNullViolationError,
)
# The server is unreachable, shutting down or starting up (OSError covers refused connections and timeouts).
UNAVAILABLE = (
    OSError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
)


@contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except NEVER_STORABLE as exc:
        # The class and SQLSTATE only: asyncpg's messages can quote the offending value.
        sqlstate = getattr(exc, "sqlstate", None) or "client-side"
        raise InvalidEventError(f"PostgreSQL refused a value ({type(exc).__name__}, {sqlstate})") from None
    except UNAVAILABLE as exc:
        raise StoreUnavailableError(f"PostgreSQL unavailable ({type(exc).__name__})") from exc
