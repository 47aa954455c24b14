"""The OCR port, and its engine: rapidocr-onnxruntime (PP-OCRv4 detection and recognition,
ONNX models shipped inside the package: nothing is downloaded at run time).

The engine is built once, on first use, under a lock, and its calls are serialised: one
onnxruntime session pair per node, which already uses the machine's cores. Callers run
`read_page` in a worker thread (`asyncio.to_thread`), never on the event loop.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any

from PIL import Image

from koprogo_node.adapters.tasks.scan_cleanup import cleaned_scan
from koprogo_node.domain.tasks.ocr_text import repaired_ocr_text
from koprogo_node.domain.tasks.page_layout import TextLine, Word, lines_from_words


class OcrEngine(ABC):
    """Reads the text of one page image."""

    @abstractmethod
    def read_page(self, image: Image.Image, page: int) -> list[TextLine]:
        """The page's lines in layout order, each with the engine's confidence. Blocking."""


class RapidOcrEngine(OcrEngine):
    """rapidocr-onnxruntime, after `cleaned_scan` (specks, skew, binarisation)."""

    def __init__(self, min_score: float = 0.5) -> None:
        self._min_score = min_score
        self._engine: Any = None
        self._build_lock = threading.Lock()
        self._run_lock = threading.Lock()

    def _built(self) -> Any:
        if self._engine is None:
            with self._build_lock:
                if self._engine is None:
                    # Imported here: loading onnxruntime and the models costs ~0.5 s and memory
                    # that a node which never runs an OCR task should not pay.
                    from rapidocr_onnxruntime import RapidOCR

                    self._engine = RapidOCR()
        return self._engine

    def read_page(self, image: Image.Image, page: int) -> list[TextLine]:
        engine = self._built()
        pixels = cleaned_scan(image)
        with self._run_lock:
            # No angle classifier: pages are upright once straightened, and it costs time.
            boxes, _ = engine(pixels, use_cls=False)
        words = [
            Word(
                text=repaired_ocr_text(str(text)),
                x0=min(float(x) for x, _ in box),
                top=min(float(y) for _, y in box),
                x1=max(float(x) for x, _ in box),
                bottom=max(float(y) for _, y in box),
                confidence=float(score),
            )
            for box, text, score in boxes or []
            if repaired_ocr_text(str(text)) and float(score) >= self._min_score
        ]
        return lines_from_words(words, page)
