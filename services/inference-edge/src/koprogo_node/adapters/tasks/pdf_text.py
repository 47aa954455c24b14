"""A PDF's text layer, read with pdfplumber word by word (positions kept, so lines stay lines
and columns stay apart), and its pages rendered to images with pypdfium2 for OCR when it has
no text layer (a scanned invoice)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pdfplumber
import pypdfium2
from pdfminer.pdfparser import PDFSyntaxError
from PIL import Image

from koprogo_node.domain.tasks.page_layout import TextLine, Word, lines_from_words

# A page with fewer characters than this has no usable text layer (a scan, perhaps with a
# page number or a scanner's stamp as text).
MIN_TEXT_CHARACTERS = 20
# Pages are rendered at this resolution for OCR: enough for 9-point print, cheap enough for a Pi.
RENDER_DPI = 200


class UnreadablePdfError(Exception):
    """The bytes are not a PDF pdfplumber can open, or it has no page."""


@dataclass(frozen=True, slots=True)
class PdfText:
    pages: int
    # None when the PDF has no text layer worth reading: its pages must go through OCR.
    lines: list[TextLine] | None


def read_pdf_text(data: bytes) -> PdfText:
    """The PDF's lines, page by page, in layout order (rows top to bottom, words left to right)."""
    try:
        with pdfplumber.open(io.BytesIO(data)) as pdf:
            if not pdf.pages:
                raise UnreadablePdfError("the PDF has no page")
            lines: list[TextLine] = []
            characters = 0
            for number, page in enumerate(pdf.pages):
                words = page.extract_words(keep_blank_chars=False, use_text_flow=False)
                characters += sum(len(w["text"]) for w in words)
                lines.extend(
                    lines_from_words(
                        [Word(w["text"], w["x0"], w["top"], w["x1"], w["bottom"]) for w in words],
                        page=number,
                    )
                )
            return PdfText(len(pdf.pages), lines if characters >= MIN_TEXT_CHARACTERS else None)
    except UnreadablePdfError:
        raise
    except (PDFSyntaxError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UnreadablePdfError(f"the PDF cannot be opened: {exc}") from exc
    except Exception as exc:  # pdfminer raises many private types for a damaged file
        if type(exc).__module__.startswith(("pdfminer", "pdfplumber")):
            raise UnreadablePdfError(f"the PDF cannot be opened: {exc}") from exc
        raise


def render_pdf_pages(data: bytes, dpi: int = RENDER_DPI) -> list[Image.Image]:
    """Each page as an RGB image at `dpi`, for OCR."""
    try:
        document = pypdfium2.PdfDocument(data)
    except pypdfium2.PdfiumError as exc:
        raise UnreadablePdfError(f"the PDF cannot be rendered: {exc}") from exc
    try:
        return [page.render(scale=dpi / 72).to_pil().convert("RGB") for page in document]
    finally:
        document.close()
