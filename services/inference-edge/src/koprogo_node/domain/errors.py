"""The node's domain errors. Each carries the HTTP status and error code the caller gets.

NodeError
├── InferenceError            a request this node cannot answer (-> ChatFailed 4xx)
│   ├── ContextOverflowError  the prompt does not fit in the model's context
│   ├── ModelNotServedError   the work names a model this node does not hold
│   ├── InvalidSchemaError    the request's JSON schema is not a schema
│   └── InvalidModelOutputError  an answer broke its schema on every try (-> 502, never passed on)
├── InferenceCancelledError   generation stopped because the node is shutting down
├── InvalidCommandError       a work item that can never be handled (dead-lettered)
├── ModelFileError            the model to load cannot be found (start-up, not per request)
└── ModelPullError            `models pull` refused or failed
    ├── UnknownModelError     not a pullable id nor a URL
    ├── NotEnoughDiskError    refused before downloading
    ├── NotEnoughMemoryError  refused before downloading (--force overrides)
    ├── DownloadFailedError   cut or refused transfer; the .part is kept for a resume
    ├── ChecksumMismatchError sha256 differs (or contradicts the pin); the .part is deleted
    ├── UnsafeSourceError     not https, or an internal/loopback host: refused before a byte is sent
    ├── UnpinnedModelError    no digest to check: refused unless --allow-unpinned or --sha256
    └── NotAGgufError         the file does not start with the GGUF magic number; nothing is kept
"""

from __future__ import annotations

from koprogo_shared.model_files import ModelFileError as SharedModelFileError


class NodeError(Exception):
    """Base of the edge node's errors."""


class InferenceError(NodeError):
    """A request this node cannot answer; translated into ChatFailed(status, error, message)."""

    status = 400
    error = "bad_request"


class ContextOverflowError(InferenceError):
    error = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, n_ctx: int) -> None:
        super().__init__(
            f"the prompt is {prompt_tokens} tokens but the model's context holds {n_ctx} "
            "(including the answer): shorten the conversation"
        )
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx


class ModelNotServedError(InferenceError):
    status = 404
    error = "model_not_served"

    def __init__(self, requested: str, served: str) -> None:
        super().__init__(f"this node serves {served!r}, not {requested!r}")


class InvalidSchemaError(InferenceError):
    error = "invalid_schema"


class InvalidModelOutputError(InferenceError):
    status = 502
    error = "invalid_model_output"


class InferenceCancelledError(NodeError):
    """Generation was abandoned (shutdown); the work item goes back to the queue."""


class ModelFileError(NodeError, SharedModelFileError):
    """The model file is missing or unusable; the message says which file was expected.

    The node's own kind of `koprogo_shared.model_files.ModelFileError` (what the shared
    resolver raises; `adapters.model_files` translates it), so `koprogo-node` reports it as
    a NodeError.
    """


class InvalidCommandError(NodeError):
    """The work item can never be handled (e.g. ids that are not UUIDs): dead-letter it."""


class ModelPullError(NodeError):
    """`koprogo-node models pull` cannot (or must not) fetch this model; nothing is left half-done."""


class UnknownModelError(ModelPullError):
    """Neither a pullable catalogue id nor an http(s) URL."""


class NotEnoughDiskError(ModelPullError):
    """The models folder's disk cannot hold the file: refused before downloading."""


class NotEnoughMemoryError(ModelPullError):
    """The host's RAM cannot serve the model: refused before downloading (`--force` overrides)."""


class DownloadFailedError(ModelPullError):
    """The transfer failed or was cut; the `.part` file is kept, so the same command resumes."""


class ChecksumMismatchError(ModelPullError):
    """The file's sha256 is not the expected one; its `.part` was deleted."""


class UnsafeSourceError(ModelPullError):
    """The URL (or a redirect, or the address it reached) is not https to a public host: refused
    before any request is sent to it (loopback is opened by `--allow-http-loopback` only)."""


class UnpinnedModelError(ModelPullError):
    """No digest is known for this file: refused before downloading unless `--allow-unpinned`
    (or `--sha256 <hex>` gives one)."""


class NotAGgufError(ModelPullError):
    """The file does not start with the GGUF magic number; its partial download was deleted."""
