"""A page's words put back into lines, rows and blocks, whatever read them (a PDF's text layer
or an OCR engine's boxes). Pure geometry, no I/O.

    Word       a word (text layer) or a box of words (OCR), with its position and score
    TextLine   words on one row that sit close together: a wide gap starts another line, so
               a header's two columns (supplier left, customer right) stay apart
    Row        the lines that share a row, left to right: where a label meets its value
               (`Total HTVA` ... `1 250,00 €`)
    Block      lines stacked one under the other, left-aligned: an address block
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median

# Two words farther apart than this many times the text's height are two lines (columns).
_COLUMN_GAP = 1.2
# Lines of one row: their vertical centres within this share of the text's height.
_ROW_TOLERANCE = 0.5
# Lines of one block: left edges within this many heights, and a gap under this many heights.
_BLOCK_ALIGN = 2.0
_BLOCK_GAP = 0.9
# Segments of one row are joined by a gap that no amount or date pattern crosses.
ROW_JOINER = "   "


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    x0: float
    top: float
    x1: float
    bottom: float
    confidence: float = 1.0

    @property
    def height(self) -> float:
        return max(self.bottom - self.top, 1e-6)

    @property
    def middle(self) -> float:
        return (self.top + self.bottom) / 2


@dataclass(frozen=True, slots=True)
class TextLine:
    text: str
    page: int
    x0: float
    top: float
    x1: float
    bottom: float
    confidence: float = 1.0

    @property
    def height(self) -> float:
        return max(self.bottom - self.top, 1e-6)


@dataclass(frozen=True, slots=True)
class Row:
    lines: tuple[TextLine, ...]

    @property
    def text(self) -> str:
        return ROW_JOINER.join(line.text for line in self.lines)

    @property
    def confidence(self) -> float:
        return min(line.confidence for line in self.lines)

    @property
    def page(self) -> int:
        return self.lines[0].page


def lines_from_words(words: list[Word], page: int) -> list[TextLine]:
    """Words grouped by row (vertical centre), sorted by x, cut where a gap is a column's."""
    if not words:
        return []
    height = median(w.height for w in words)
    rows: list[list[Word]] = []
    for word in sorted(words, key=lambda w: (w.middle, w.x0)):
        if rows and abs(word.middle - _row_middle(rows[-1])) <= _ROW_TOLERANCE * height:
            rows[-1].append(word)
        else:
            rows.append([word])
    lines: list[TextLine] = []
    for row in rows:
        run: list[Word] = []
        for word in sorted(row, key=lambda w: w.x0):
            if run and word.x0 - run[-1].x1 > _COLUMN_GAP * height:
                lines.append(_line_of(run, page))
                run = []
            run.append(word)
        lines.append(_line_of(run, page))
    return lines


def _row_middle(words: list[Word]) -> float:
    return sum(w.middle for w in words) / len(words)


def _line_of(words: list[Word], page: int) -> TextLine:
    return TextLine(
        text=" ".join(w.text for w in words),
        page=page,
        x0=min(w.x0 for w in words),
        top=min(w.top for w in words),
        x1=max(w.x1 for w in words),
        bottom=max(w.bottom for w in words),
        confidence=min(w.confidence for w in words),
    )


def rows_of(lines: list[TextLine]) -> list[Row]:
    """The lines of each row, rows in reading order (page, then top to bottom)."""
    rows: list[list[TextLine]] = []
    for line in sorted(lines, key=lambda ln: (ln.page, (ln.top + ln.bottom) / 2, ln.x0)):
        if rows:
            last = rows[-1]
            middle = sum((ln.top + ln.bottom) / 2 for ln in last) / len(last)
            height = min(line.height, *(ln.height for ln in last))
            if last[0].page == line.page and abs((line.top + line.bottom) / 2 - middle) <= (
                _ROW_TOLERANCE * height
            ):
                last.append(line)
                continue
        rows.append([line])
    return [Row(tuple(sorted(row, key=lambda ln: ln.x0))) for row in rows]


def blocks_of(lines: list[TextLine]) -> list[list[TextLine]]:
    """Lines stacked under one another with their left edges aligned, top to bottom."""
    blocks: list[list[TextLine]] = []
    for line in sorted(lines, key=lambda ln: (ln.page, ln.top, ln.x0)):
        home = None
        for block in blocks:
            last = block[-1]
            if (
                last.page == line.page
                and abs(last.x0 - line.x0) <= _BLOCK_ALIGN * line.height
                and -0.5 * line.height <= line.top - last.bottom <= _BLOCK_GAP * line.height
            ):
                home = block
                break
        if home is None:
            blocks.append([line])
        else:
            home.append(line)
    return blocks
