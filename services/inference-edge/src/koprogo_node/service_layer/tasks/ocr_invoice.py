"""`ocr_invoice`: the fields a syndic needs from a supplier's invoice (PDF or scan).

    PDF with a text layer   pdfplumber's words, in layout order           text_source "pdf_text"
    PDF without one (scan)  pages rendered by pypdfium2, then OCR          text_source "ocr"
    PNG / JPEG / TIFF       OCR (rapidocr), after cleanup                   text_source "ocr"

Fields come from rules (`domain.tasks.invoice_fields`); the node's model, when given, is asked
only for the fields the rules missed, and only what it says that is found in the document is
kept (`domain.tasks.invoice_model`). Checks (IBAN checksum, totals, VAT rate) are reported,
never used to change a value. When the model answered, the result names its file
(`model_sha256`, when the node knows it). See docs/tasks/ocr_invoice.md.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Literal

from PIL import Image, ImageSequence, UnidentifiedImageError

from koprogo_node.adapters.inference import InferenceEngine
from koprogo_node.adapters.tasks.ocr_engine import OcrEngine
from koprogo_node.adapters.tasks.pdf_text import UnreadablePdfError, read_pdf_text, render_pdf_pages
from koprogo_node.domain.controls import OutputConstraint, Sampling
from koprogo_node.domain.errors import NodeError
from koprogo_node.domain.tasks.invoice_checks import invoice_result
from koprogo_node.domain.tasks.invoice_fields import FIELD_NAMES, FoundField, extract_fields
from koprogo_node.domain.tasks.invoice_model import model_messages, model_schema, read_model_answer
from koprogo_node.domain.tasks.page_layout import TextLine, rows_of
from koprogo_node.service_layer.tasks.executor import (
    JPEG,
    PDF,
    PNG,
    TIFF,
    TaskCancelledError,
    TaskExecutor,
    TaskInputError,
    TaskOutput,
    TaskRun,
)

log = logging.getLogger(__name__)

ACCEPTED = (PDF, PNG, JPEG, TIFF)
# A decompression bomb is refused by Pillow above this many pixels; an A4 page at 600 dpi is ~35 M.
MAX_IMAGE_PIXELS = 60_000_000
# The model reads at most this much of the document; a small model's context is short.
MODEL_DOCUMENT_CHARS = 3000
MODEL_ANSWER_TOKENS = 200

TextSource = Literal["pdf_text", "ocr"]


class OcrInvoiceExecutor(TaskExecutor):
    task_type = "ocr_invoice"

    def __init__(
        self, ocr: OcrEngine, engine: InferenceEngine | None = None, model_sha256: str | None = None
    ) -> None:
        self._ocr = ocr
        self._engine = engine
        self.model_sha256 = model_sha256

    async def run(self, run: TaskRun) -> TaskOutput:
        document = run.document
        if document is None:
            raise TaskInputError(
                "ocr_invoice needs a document (a PDF, PNG, JPEG or TIFF invoice)", field="document"
            )
        if document.content_type not in ACCEPTED:
            raise TaskInputError(
                f"ocr_invoice reads {', '.join(ACCEPTED)}; got {document.content_type!r}", field="document"
            )
        if document.content_type == PDF:
            lines, source, pages = await self._read_pdf(document.data, run)
        else:
            lines, source, pages = await self._read_image(document.data, run)
        fields = extract_fields(lines, source)
        prompt_tokens = completion_tokens = 0
        missing = [name for name in FIELD_NAMES if name not in fields]
        if missing and self._engine is not None:
            found, prompt_tokens, completion_tokens = await self._ask_model(self._engine, missing, lines)
            fields = {**fields, **found}
        result = invoice_result(fields, source, pages)
        if completion_tokens and self.model_sha256 is not None:
            result["model_sha256"] = self.model_sha256
        return TaskOutput(result, prompt_tokens, completion_tokens)

    async def _read_pdf(self, data: bytes, run: TaskRun) -> tuple[list[TextLine], TextSource, int]:
        try:
            pdf = await asyncio.to_thread(read_pdf_text, data)
            if pdf.lines is not None:
                return pdf.lines, "pdf_text", pdf.pages
            images = await asyncio.to_thread(render_pdf_pages, data)
        except UnreadablePdfError as exc:
            raise TaskInputError(f"the document is not a readable PDF: {exc}", field="document") from None
        return await self._ocr_pages(images, run), "ocr", len(images)

    async def _read_image(self, data: bytes, run: TaskRun) -> tuple[list[TextLine], TextSource, int]:
        images = await asyncio.to_thread(_open_pages, data)
        return await self._ocr_pages(images, run), "ocr", len(images)

    async def _ocr_pages(self, images: list[Image.Image], run: TaskRun) -> list[TextLine]:
        lines: list[TextLine] = []
        for number, image in enumerate(images):
            if run.cancelled.is_set():
                raise TaskCancelledError("ocr_invoice cancelled between pages")
            lines.extend(await asyncio.to_thread(self._ocr.read_page, image, number))
        return lines

    async def _ask_model(
        self, engine: InferenceEngine, missing: list[str], lines: list[TextLine]
    ) -> tuple[dict[str, FoundField], int, int]:
        """The missing fields the model finds in the document; its failure costs only those."""
        document = "\n".join(row.text for row in rows_of(lines))
        excerpt = document[:MODEL_DOCUMENT_CHARS]
        sampling = Sampling(temperature=0.0, seed=0, constraint=OutputConstraint(model_schema(missing)))
        try:
            if not engine.loaded:
                await engine.load()
            messages = model_messages(missing, excerpt)
            # Shorten the excerpt until the prompt and the answer fit the model's context.
            while (
                await engine.count_tokens(messages) + MODEL_ANSWER_TOKENS > engine.context_length
                and len(excerpt) > 200
            ):
                excerpt = excerpt[: len(excerpt) * 2 // 3]
                messages = model_messages(missing, excerpt)
            answer = await engine.chat(messages, sampling, MODEL_ANSWER_TOKENS)
        except NodeError as exc:
            log.warning("ocr_invoice: the model fallback failed (%s); rules' fields only", exc)
            return {}, 0, 0
        found = read_model_answer(answer.content, missing, document)
        return found, answer.prompt_tokens, answer.completion_tokens


def _open_pages(data: bytes) -> list[Image.Image]:
    """Every frame of the image (a TIFF may hold several pages), loaded and RGB."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise TaskInputError(
                    f"the image is {image.width}x{image.height} pixels; at most {MAX_IMAGE_PIXELS} are read",
                    field="document",
                )
            return [frame.convert("RGB") for frame in ImageSequence.Iterator(image)]
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise TaskInputError(f"the document is not a readable image: {exc}", field="document") from None
