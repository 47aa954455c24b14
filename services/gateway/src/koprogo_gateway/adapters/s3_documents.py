"""Documents named by `input_data.document_url: s3://bucket/key`, read by the gateway from the
operator's S3-compatible store (S3_ENDPOINT_URL, S3_ACCESS_KEY_ID, ...): a port, its boto3
adapter and an in-memory fake.

The size is checked with a HEAD first, so an object over the limit is refused without being
downloaded; the GET then reads at most one byte more than the limit, in case the object was
replaced in between. boto3 blocks, so each call runs in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import abc
import asyncio
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

from koprogo_gateway.domain.errors import DocumentSourceUnavailableError, DocumentUrlError
from koprogo_gateway.domain.task_request import S3Location, document_too_large

_MISSING = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})
_REFUSED = frozenset({"403", "AccessDenied", "Forbidden"})


class DocumentSource(abc.ABC):
    """The operator's store; `allowed_buckets` are the only ones callers may name."""

    allowed_buckets: frozenset[str]

    @abc.abstractmethod
    async def read(self, location: S3Location, max_bytes: int) -> bytes:
        """The object's bytes; DocumentTooLargeError (413) over `max_bytes`, DocumentUrlError (422)
        when it is not there or not readable, DocumentSourceUnavailableError (503) when the store
        does not answer."""


class S3DocumentSource(DocumentSource):
    def __init__(
        self,
        *,
        endpoint_url: str | None,
        access_key_id: str | None,
        secret_access_key: str | None,
        region: str,
        allowed_buckets: frozenset[str],
        timeout_s: float = 30.0,
    ) -> None:
        self.allowed_buckets = allowed_buckets
        # Built once at start-up; a boto3 client is safe to share between threads.
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=region,
            config=Config(
                connect_timeout=min(timeout_s, 10.0),
                read_timeout=timeout_s,
                retries={"max_attempts": 2, "mode": "standard"},
            ),
        )

    async def read(self, location: S3Location, max_bytes: int) -> bytes:
        return await asyncio.to_thread(self._read, location, max_bytes)

    def _read(self, location: S3Location, max_bytes: int) -> bytes:
        try:
            head = self._client.head_object(Bucket=location.bucket, Key=location.key)
            if int(head.get("ContentLength", 0)) > max_bytes:
                raise document_too_large(max_bytes)
            got = self._client.get_object(Bucket=location.bucket, Key=location.key)
            with got["Body"] as body:
                data: bytes = body.read(max_bytes + 1)
        except botocore.exceptions.ClientError as exc:
            raise _refusal(location, exc) from None
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise DocumentSourceUnavailableError(
                f"the document store (S3_ENDPOINT_URL) did not answer ({type(exc).__name__}); retry later"
            ) from None
        if len(data) > max_bytes:
            raise document_too_large(max_bytes)
        return data


def _refusal(location: S3Location, exc: botocore.exceptions.ClientError) -> Exception:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    where = f"s3://{location.bucket}/{location.key}"
    if code in _MISSING:
        return DocumentUrlError("document_not_found", f"no document at {where}")
    if code in _REFUSED:
        return DocumentUrlError("document_url_not_allowed", f"the document store refused to read {where}")
    return DocumentSourceUnavailableError(f"the document store could not read {where} ({code or 'error'})")


class FakeDocumentSource(DocumentSource):
    """In memory: `objects[(bucket, key)]`; `reads` records what was downloaded (not just looked at)."""

    def __init__(
        self, allowed_buckets: frozenset[str], objects: dict[tuple[str, str], bytes] | None = None
    ) -> None:
        self.allowed_buckets = allowed_buckets
        self.objects = dict(objects or {})
        self.reads: list[S3Location] = []

    async def read(self, location: S3Location, max_bytes: int) -> bytes:
        await asyncio.sleep(0)
        data = self.objects.get((location.bucket, location.key))
        if data is None:
            raise DocumentUrlError(
                "document_not_found", f"no document at s3://{location.bucket}/{location.key}"
            )
        if len(data) > max_bytes:
            raise document_too_large(max_bytes)
        self.reads.append(location)
        return data
