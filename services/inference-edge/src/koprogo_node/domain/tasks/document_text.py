"""A PDF's text lines as plain text with its paragraphs: a pure rule, no I/O.

The summary and translation tasks read paragraphs (blank lines between them); a PDF's text
layer has lines with positions only. A blank line is put where a page ends and where the space
above a line is larger than most of a line's height: how a paragraph break looks on a page.
"""

from __future__ import annotations

from koprogo_node.domain.tasks.page_layout import TextLine

# Space above a line, in line heights, from which it starts a new paragraph.
PARAGRAPH_GAP = 0.8


def text_from_lines(lines: list[TextLine]) -> str:
    """The lines in reading order, one per text line, paragraphs apart by a blank line."""
    out: list[str] = []
    previous: TextLine | None = None
    for line in lines:
        if previous is not None and (
            line.page != previous.page or line.top - previous.bottom > PARAGRAPH_GAP * previous.height
        ):
            out.append("")
        out.append(line.text)
        previous = line
    return "\n".join(out) + "\n" if out else ""
