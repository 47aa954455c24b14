"""The text a document task works on: the `text` parameter, or the task's document (text/plain,
text/csv, or a PDF's text layer)."""

from __future__ import annotations

import asyncio

from koprogo_node.adapters.tasks.pdf_text import UnreadablePdfError, read_pdf_text
from koprogo_node.domain.tasks.document_text import text_from_lines
from koprogo_node.service_layer.tasks.executor import CSV, PDF, TEXT, TaskInputError, TaskRun


async def read_task_text(run: TaskRun) -> str:
    """The task's text, line endings normalised. Raises TaskInputError when there is none to read."""
    value = run.parameters.get("text")
    if value is not None:
        if not isinstance(value, str) or not value.strip():
            raise TaskInputError("`text` must be a non-empty string", field="text")
        return _normalised(value)
    document = run.document
    if document is None:
        raise TaskInputError("give the text as the `text` parameter or as a document", field="text")
    if document.content_type == PDF:
        text = await _pdf_text(document.data)
    elif document.content_type in (TEXT, CSV):
        try:
            text = document.data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise TaskInputError(
                f"the document is not UTF-8 text (byte {exc.start})", field="document"
            ) from None
    else:
        raise TaskInputError(
            f"this task reads text, CSV or PDF documents, not {document.content_type}", field="document"
        )
    if not text.strip():
        raise TaskInputError("the document holds no text", field="document")
    return _normalised(text)


async def _pdf_text(data: bytes) -> str:
    try:
        pdf = await asyncio.to_thread(read_pdf_text, data)
    except UnreadablePdfError as exc:
        raise TaskInputError(str(exc), field="document") from None
    if pdf.lines is None:
        # Scanned minutes: OCR is the ocr_invoice task's, tuned for invoices, not run here.
        raise TaskInputError("the PDF has no text layer (a scan): send its text", field="document")
    return text_from_lines(pdf.lines)


def _normalised(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")
