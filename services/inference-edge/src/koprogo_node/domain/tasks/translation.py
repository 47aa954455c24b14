"""A document's layout for translation: which lines are translated, which are kept. Pure rules.

A document is translated paragraph by paragraph, so that a small model keeps each one whole and
the layout survives: blank lines and whitespace-only lines are kept as they are, each other
line (a heading, a paragraph) is one paragraph, its indentation kept. Lines wrapped by hand (a
line without final punctuation followed by one that starts in lower case) are joined into one
paragraph first, so that a sentence is never translated in halves; the translation then holds
that paragraph on one line. A paragraph without a letter (`2025`, `-----`) is kept as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ENDS_A_SENTENCE = re.compile(r"[.!?:;)\]»”\"]\s*$")
_STARTS_IN_LOWER_CASE = re.compile(r"^\s*[a-zà-ÿ]")
_LETTER = re.compile(r"[^\W\d_]")
_LABEL = re.compile(
    r"^\s*(?:translation|traduction|vertaling|here is the translation|voici la traduction)\s*:?\s*",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Line:
    """One line of the translated document: `text` as it is, or a paragraph to translate
    (`translate`), written after `indent`."""

    text: str
    translate: bool = False
    indent: str = ""


def layout(text: str) -> list[Line]:
    """The document's lines, hand-wrapped ones joined, each marked to translate or to keep."""
    lines: list[Line] = []
    raw = text.split("\n")
    index = 0
    while index < len(raw):
        line = raw[index]
        if not _LETTER.search(line):
            lines.append(Line(line))
            index += 1
            continue
        paragraph = [line.strip()]
        while index + 1 < len(raw) and _continues(raw[index], raw[index + 1]):
            index += 1
            paragraph.append(raw[index].strip())
        indent = line[: len(line) - len(line.lstrip())]
        lines.append(Line(" ".join(paragraph), translate=True, indent=indent))
        index += 1
    return lines


def _continues(line: str, following: str) -> bool:
    return (
        bool(following.strip())
        and not _ENDS_A_SENTENCE.search(line)
        and bool(_STARTS_IN_LOWER_CASE.match(following))
    )


def assemble(lines: list[Line], translations: list[str]) -> str:
    """The translated document: `translations` in the order of the lines to translate."""
    pending = iter(translations)
    out = [f"{line.indent}{next(pending)}" if line.translate else line.text for line in lines]
    return "\n".join(out)


def clean_translation(answer: str) -> str:
    """A model's translation of one paragraph, as one paragraph: without a label ("Translation:"),
    without quotes it added around it, cut at a blank line (what follows is commentary), on one line."""
    text = _LABEL.sub("", answer.strip(), count=1)
    text = re.split(r"\n\s*\n", text, maxsplit=1)[0]
    text = " ".join(text.split())
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'«“":
        text = text[1:-1].strip()
    return text
