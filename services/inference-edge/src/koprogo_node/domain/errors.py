"""The node's domain errors. Each carries the HTTP status and error code the caller gets.

NodeError
├── InferenceError            a request this node cannot answer (-> ChatFailed 4xx)
│   ├── ContextOverflowError  the prompt does not fit in the model's context
│   └── ModelNotServedError   the work names a model this node does not hold
├── InferenceCancelledError   generation stopped because the node is shutting down
├── InvalidCommandError       a work item that can never be handled (dead-lettered)
└── ModelFileError            the model to load cannot be found (start-up, not per request)
"""

from __future__ import annotations


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


class InferenceCancelledError(NodeError):
    """Generation was abandoned (shutdown); the work item goes back to the queue."""


class ModelFileError(NodeError):
    """The model file is missing or unusable; the message says which file was expected."""


class InvalidCommandError(NodeError):
    """The work item can never be handled (e.g. ids that are not UUIDs): dead-letter it."""
