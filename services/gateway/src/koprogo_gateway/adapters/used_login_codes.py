"""Which login codes were exchanged already: each code opens one session, on any gateway replica.

The real store is the idempotency keys' bucket (`KOPROGO_IDEMPOTENCY`: file storage, entries
kept 24 h, longer than a code may live), under keys `login.<sha256 of the code's jti>`, apart
from the users' `u<hash>.` keys. `create` is checked on the bucket's leader: of two exchanges
of one code, exactly one finds the key absent.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from koprogo_gateway.domain.errors import LoginLinksUnavailableError

_UNAVAILABLE = (nats.errors.Error, TimeoutError, OSError)


def used_code_key(code_id: str) -> str:
    """The store key of a code: hashed, so any `jti` is a valid key and none is stored as sent."""
    return "login." + hashlib.sha256(code_id.encode()).hexdigest()


class UsedLoginCodes(abc.ABC):
    @abc.abstractmethod
    async def use(self, code_id: str) -> bool:
        """Record the code as exchanged: True the first time, False when it already was.

        LoginLinksUnavailableError when the store cannot say."""


class NatsKvUsedLoginCodes(UsedLoginCodes):
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def use(self, code_id: str) -> bool:
        try:
            await self.kv.create(used_code_key(code_id), b"used")
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        except _UNAVAILABLE as exc:
            raise LoginLinksUnavailableError(
                f"the used login codes' store cannot answer ({type(exc).__name__}): try again in a moment"
            ) from None
        return True


class FakeUsedLoginCodes(UsedLoginCodes):
    """In memory; `unavailable` makes every call fail, as an unreachable bucket does."""

    def __init__(self) -> None:
        self.used: set[str] = set()
        self.unavailable = False

    async def use(self, code_id: str) -> bool:
        await asyncio.sleep(0)
        if self.unavailable:
            raise LoginLinksUnavailableError("fake store is down")
        if code_id in self.used:
            return False
        self.used.add(code_id)
        return True
