"""A JWKS client that keeps verifying tokens while the platform's key set cannot be fetched.

pyjwt's `PyJWKClient` caches the set for `JWKS_CACHE_S`; once that runs out, a failed fetch
leaves it without keys and every token is refused (a building whose uplink is down). This client
remembers the last set fetched and when it was fetched (in memory, and in `JWKS_CACHE_FILE` when
set, so a gateway started offline has it too) and serves it while fetching fails, until it is
`JWKS_OFFLINE_MAX_AGE_S` old. pyjwt still fetches, parses the keys and verifies the tokens: this
class records each fetched set (`fetch_data`) and answers with the last one when a fetch fails
(`get_jwk_set`), without putting it in pyjwt's cache, so its age is checked at each use.

A fetch fails when the server cannot be reached, times out, redirects or answers 5xx, or answers
a body that is not JSON (a captive portal's page). A 4xx is refused as before (the set is kept for
a later outage); a JSON answer without a usable key set (every key withdrawn) drops the set kept.
While fetching fails, one request per `retry_s` tries again; the others are served from the last
set without waiting on the network. A `kid` missing from that set is refused, as online.

    PyJWKClientConnectionError (pyjwt)   the set cannot be fetched and none is kept
      └── JwksTooOldError                the set cannot be fetched and the one kept is too old
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import threading
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt

log = logging.getLogger(__name__)

OUTAGE_RETRY_S = 30.0


class JwksTooOldError(jwt.PyJWKClientConnectionError):
    """The key set cannot be fetched, and the last one fetched is older than the maximum age."""

    def __init__(self, age_s: float, max_age_s: float) -> None:
        super().__init__(f"the last key set fetched is {age_s:.0f} s old, more than {max_age_s:.0f} s")
        self.age_s = age_s
        self.max_age_s = max_age_s


@dataclass(frozen=True)
class FetchedKeySet:
    """A JWKS document as the platform served it, and when (epoch seconds)."""

    document: dict[str, Any]
    fetched_at: float


class LastGoodJwksClient(jwt.PyJWKClient):
    """`PyJWKClient` falling back on the last key set it fetched, while that set is young enough."""

    def __init__(
        self,
        uri: str,
        *,
        lifespan: float,
        timeout: float,
        offline_max_age_s: float,
        cache_file: Path | None = None,
        retry_s: float = OUTAGE_RETRY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(uri, cache_jwk_set=True, lifespan=lifespan, timeout=timeout)
        self._max_age_s = offline_max_age_s
        self._cache_file = cache_file
        self._retry_s = retry_s
        self._clock = clock
        # The verifier calls in from worker threads (asyncio.to_thread).
        self._lock = threading.Lock()
        self._last_good = read_key_set_file(cache_file, uri) if cache_file is not None else None
        self._next_attempt = -math.inf
        # What was said about the current outage (None: no outage), so it is logged once, not per request.
        self._outage: Literal["stale", "too old"] | None = None

    def get_jwk_set(self, refresh: bool = False) -> jwt.PyJWKSet:
        now = self._clock()
        with self._lock:
            last_good, outage = self._last_good, self._outage is not None
            between_tries = outage and now < self._next_attempt
            if outage and not between_tries:
                # This request tries again; those meanwhile are served without waiting on the network.
                self._next_attempt = now + self._retry_s
        if between_tries and last_good is not None:
            return self._serve(last_good, now, failure=None)
        try:
            # The set served while fetching fails is not handed to pyjwt's cache (it is returned
            # here, not by fetch_data), so its age is checked again at each use.
            return super().get_jwk_set(refresh)
        except jwt.PyJWKClientConnectionError as exc:
            with self._lock:
                last_good = self._last_good
                self._next_attempt = now + self._retry_s
            if last_good is None or _is_refusal(exc):
                raise
            return self._serve(last_good, now, failure=str(exc))

    def fetch_data(self) -> Any:
        now = self._clock()
        try:
            document = super().fetch_data()
        except jwt.PyJWKClientConnectionError as exc:
            if _is_refusal(exc):
                self._answered()
            raise
        except (jwt.PyJWKSetError, jwt.PyJWKClientError):
            # The platform answered a JSON document without a usable key set (every key withdrawn):
            # the set kept until now is not to be trusted offline either.
            self._forget()
            raise
        except ValueError as exc:  # json.JSONDecodeError: a captive portal's page, not the platform
            raise jwt.PyJWKClientConnectionError(f"the JWKS URL answered no JSON ({exc})") from exc
        self._keep(FetchedKeySet(document, now))
        return document

    def _serve(self, last_good: FetchedKeySet, now: float, *, failure: str | None) -> jwt.PyJWKSet:
        """The last key set while fetching fails, or `JwksTooOldError` once it is too old."""
        age = now - last_good.fetched_at
        too_old = age > self._max_age_s
        with self._lock:
            said, self._outage = self._outage, "too old" if too_old else "stale"
        cause = f" ({failure})" if failure else ""
        if too_old:
            if said != "too old":
                log.error(
                    "JWKS %s cannot be fetched%s and the last key set, fetched %.0f s ago, is older than "
                    "JWKS_OFFLINE_MAX_AGE_S (%.0f s): tokens are refused until it can be fetched",
                    self.uri,
                    cause,
                    age,
                    self._max_age_s,
                )
            raise JwksTooOldError(age, self._max_age_s)
        if said is None:
            log.warning(
                "JWKS %s cannot be fetched%s: serving the key set fetched %.0f s ago, until it is "
                "JWKS_OFFLINE_MAX_AGE_S (%.0f s) old",
                self.uri,
                cause,
                age,
                self._max_age_s,
            )
        return jwt.PyJWKSet.from_dict(last_good.document)

    def _keep(self, fetched: FetchedKeySet) -> None:
        with self._lock:
            self._last_good = fetched
        self._answered()
        if self._cache_file is not None:
            write_key_set_file(self._cache_file, self.uri, fetched)

    def _forget(self) -> None:
        with self._lock:
            kept, self._last_good = self._last_good, None
        self._answered()
        if kept is not None:
            log.warning("JWKS %s answered no usable key set: the one kept for outages is dropped", self.uri)
        if self._cache_file is not None:
            try:
                self._cache_file.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("JWKS_CACHE_FILE %s cannot be removed (%s)", self._cache_file, exc)

    def _answered(self) -> None:
        """The JWKS URL answered: no outage (any more)."""
        with self._lock:
            said, self._outage = self._outage, None
        if said is not None:
            log.info("JWKS %s answers again", self.uri)


def _is_refusal(exc: jwt.PyJWKClientConnectionError) -> bool:
    """An HTTP 4xx: the server was reached and said no (no answer, a redirect or a 5xx is an outage)."""
    cause = exc.__cause__
    return isinstance(cause, urllib.error.HTTPError) and 400 <= cause.code < 500


def read_key_set_file(path: Path, uri: str) -> FetchedKeySet | None:
    """The key set kept in `path` for `uri`; None (and a warning) when there is none to trust."""
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("JWKS_CACHE_FILE %s cannot be read (%s): ignored", path, exc)
        return None
    if not (
        isinstance(stored, dict)
        and isinstance(stored.get("jwks"), dict)
        and isinstance(stored.get("fetched_at"), int | float)
    ):
        log.warning("JWKS_CACHE_FILE %s holds no key set: ignored", path)
        return None
    if stored.get("url") != uri:
        log.warning("JWKS_CACHE_FILE %s holds the key set of another JWKS_URL: ignored", path)
        return None
    return FetchedKeySet(stored["jwks"], float(stored["fetched_at"]))


def write_key_set_file(path: Path, uri: str, fetched: FetchedKeySet) -> None:
    """Replace `path` at once (a temporary file renamed over it); a failure is logged, not raised."""
    body = json.dumps({"url": uri, "fetched_at": fetched.fetched_at, "jwks": fetched.document})
    temporary: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as out:
            temporary = out.name
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
        temporary = None
    except OSError as exc:
        log.warning(
            "JWKS_CACHE_FILE %s cannot be written (%s): the key set is kept in memory only", path, exc
        )
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
