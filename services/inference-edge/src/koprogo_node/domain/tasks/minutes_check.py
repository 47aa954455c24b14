"""A summary's sentences checked against the agenda item they speak of: pure rules, no I/O.

Every figure of a summary may be in the minutes and the summary still be wrong: a small model
joins the amount of one item to the majority of another ("the budget of €3,500.00 was approved
by a two-thirds majority"). Each sentence that carries figures is therefore placed: the items
(or the opening of the minutes) that hold all of its figures. The sentence is refused when no
single item holds them all, when it names a majority none of those items was voted by, or an
outcome (approved / rejected) none of them had. A sentence without figures cannot be placed and
is judged by its words only. Figures of the opening (the meeting's date, the attendance) may
appear in any sentence: a summary starts "At the meeting of 18 March 2025, ...".

Words too: at least half of a sentence's words (of 4 letters or more, compared on their first
5 letters, words any summary uses such as "meeting" or "approved" left out) must be words of the
item it was placed in, or of the minutes for a sentence without figures. A small model's
invented sentence ("the committee will oversee the annual budget") uses words the minutes do
not; a summary that says what the item says mostly uses the item's own.
"""

from __future__ import annotations

import re

from koprogo_node.domain.tasks import minutes_vocabulary as vocab
from koprogo_node.domain.tasks.minutes import AgendaItem, MinutesExtract, read_majority, split_sentences
from koprogo_node.domain.tasks.prose_check import FigureIndex, figures_in

MAX_QUOTED_CHARS = 80
MIN_SHARED_WORDS = 0.5
STEM_LETTERS = 5
# Words any summary of any minutes may use, in the three languages.
_SUMMARY_WORDS = frozenset(
    """
    avec dans pour sont sera seront était étaient être avoir cette ces leur leurs elle elles aussi plus
    tous tout toute toutes comme mais donc ainsi alors également ensuite enfin lors après avant
    assemblée générale copropriétaires copropriété réunion séance décide décidé décidée décision
    décisions approuve approuvé approuvée approuvés adopté adoptée rejeté rejetée vote votes voté
    point points ordre jour résumé majorité
    worden wordt werd werden zijn heeft hebben deze voor over naar ook maar zoals daarna tijdens
    vergadering algemene mede-eigenaars beslist besloten beslissing beslissingen goedgekeurd verworpen
    stemming stemmen punt punten agenda samenvatting meerderheid
    that this these those with from were have been will would also which their there then after
    before during meeting general owners co-owners decided decision decisions approved adopted
    rejected vote votes voted item items agenda summary majority
    absolue simple unanimité unanimement deux tiers quatre cinquièmes tweederde tweederdemeerderheid
    vier vijfde eenparigheid eenparig gewone volstrekte absolute two-thirds four-fifths unanimous
    unanimously unanimity
    montants échéances agendapunt agendapunten bedragen termijnen amounts deadlines
    """.split()
)
_WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")


def misplaced_sentences(prose: str, extract: MinutesExtract) -> list[str]:
    """Why sentences of `prose` do not fit the item their figures come from (empty: they all do)."""
    opening = FigureIndex(extract.preamble)
    sections: list[tuple[AgendaItem | None, FigureIndex]] = [(None, opening)]
    sections += [(item, FigureIndex(f"{item.title}\n{item.text}")) for item in extract.items]
    opening_words = _stems(extract.preamble)
    item_words = {item.number: _stems(f"{item.title}\n{item.text}") for item in extract.items}
    all_words = opening_words.union(*item_words.values())
    problems: list[str] = []
    for sentence in split_sentences(prose):
        figures = figures_in(sentence)
        if not figures:
            if not _mostly_from(sentence, all_words):
                problems.append(f"words not in the minutes: {_quoted(sentence)}")
            continue
        figures = [f for f in figures if not opening.holds(f)] or figures
        places = [item for item, index in sections if all(index.holds(f) for f in figures)]
        quoted = _quoted(sentence)
        if not places:
            problems.append(f"figures of different items in one sentence: {quoted}")
            continue
        words = opening_words.union(*(item_words[item.number] for item in places if item is not None))
        if not _mostly_from(sentence, words):
            problems.append(f"words not in the item its figures come from: {quoted}")
        lowered = sentence.lower()
        majority = read_majority(lowered, None)
        if majority is not None and all(item is None or item.majority != majority for item in places):
            problems.append(f"a majority the item was not voted by: {quoted}")
        if vocab.REJECTED.search(lowered):
            outcome = "rejected"
        elif vocab.APPROVED.search(lowered):
            outcome = "approved"
        else:
            continue
        if all(item is None or item.vote != outcome for item in places):
            problems.append(f"an outcome the item did not have: {quoted}")
    return problems


def _stems(text: str) -> set[str]:
    return {word[:STEM_LETTERS] for word in _WORD.findall(text.lower()) if len(word) >= 4}


def _mostly_from(sentence: str, stems: set[str]) -> bool:
    own = {
        w[:STEM_LETTERS] for w in _WORD.findall(sentence.lower()) if len(w) >= 4 and w not in _SUMMARY_WORDS
    }
    return not own or len(own & stems) / len(own) >= MIN_SHARED_WORDS


def _quoted(sentence: str) -> str:
    return f"«{sentence[:MAX_QUOTED_CHARS]}{'…' if len(sentence) > MAX_QUOTED_CHARS else ''}»"
