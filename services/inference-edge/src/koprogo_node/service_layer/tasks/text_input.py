"""The text a document task works on: the `text` parameter, or the task's text/plain document."""

from __future__ import annotations

from koprogo_node.service_layer.tasks.executor import TEXT, TaskInputError, TaskRun


def task_text(run: TaskRun) -> str:
    """The task's text, line endings normalised. Raises TaskInputError when there is none to read."""
    value = run.parameters.get("text")
    if value is not None:
        if not isinstance(value, str) or not value.strip():
            raise TaskInputError("`text` must be a non-empty string", field="text")
        return _normalised(value)
    document = run.document
    if document is None:
        raise TaskInputError(
            "give the text as the `text` parameter or as a text/plain document", field="text"
        )
    if document.content_type != TEXT:
        raise TaskInputError(
            f"this task reads text/plain documents, not {document.content_type}", field="document"
        )
    try:
        text = document.data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TaskInputError(f"the document is not UTF-8 text (byte {exc.start})", field="document") from None
    if not text.strip():
        raise TaskInputError("the document holds no text", field="document")
    return _normalised(text)


def _normalised(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")
