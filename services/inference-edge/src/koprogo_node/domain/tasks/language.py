"""Which of the grid's languages (French, Dutch, English) a document is written in. Pure rules.

Counting frequent function words is enough to tell these three apart on a page of minutes or a
letter, and it runs on a Raspberry Pi in microseconds; no model, no dictionary.
"""

from __future__ import annotations

import re
from typing import Literal, cast, get_args

Language = Literal["fr", "nl", "en"]
LANGUAGES: tuple[Language, ...] = get_args(Language)
DEFAULT_LANGUAGE: Language = "fr"
LANGUAGE_NAMES: dict[Language, str] = {"fr": "French", "nl": "Dutch", "en": "English"}

# Short words frequent in each language and rare in the other two (no "de", "in", "is" or "van",
# shared by two of them). Minutes vocabulary is added for short texts.
_MARKERS: dict[Language, frozenset[str]] = {
    "fr": frozenset(
        "le la les des du et est une un pour par au aux que qui sur dans pas sont avec "
        "assemblée voix contre approuvé approuvée adopté décision syndic copropriétaires".split()
    ),
    "nl": frozenset(
        "het een en van voor met zijn niet wordt worden op aan bij ook dat die te "
        "vergadering stemmen tegen goedgekeurd besluit syndicus mede-eigenaars".split()
    ),
    "en": frozenset(
        "the and of to is are for with by on was were be that this not which "
        "meeting votes against approved resolution owners".split()
    ),
}
_WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*", re.UNICODE)


def language_scores(text: str) -> dict[Language, int]:
    """How many words of `text` mark each language."""
    scores: dict[Language, int] = dict.fromkeys(LANGUAGES, 0)
    for word in _WORD.findall(text.lower()):
        for language, markers in _MARKERS.items():
            if word in markers:
                scores[language] += 1
    return scores


def detect_language(text: str, default: Language = DEFAULT_LANGUAGE) -> Language:
    """The language with the most marker words; `default` when none is found (or on a tie with it)."""
    scores = language_scores(text)
    best = max(scores.values())
    if best == 0:
        return default
    leaders = [lang for lang in LANGUAGES if scores[lang] == best]
    return default if default in leaders else leaders[0]


def as_language(value: object) -> Language | None:
    """`value` as a language code ("fr", "NL ", ...), or None when it is not one of ours."""
    if not isinstance(value, str):
        return None
    code = value.strip().lower()
    return cast(Language, code) if code in LANGUAGES else None
