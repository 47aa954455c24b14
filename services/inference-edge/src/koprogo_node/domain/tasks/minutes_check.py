"""A summary's sentences checked against the agenda item they speak of: pure rules, no I/O.

Every figure of a summary may be in the minutes and the summary still be wrong: a small model
joins the amount of one item to the majority of another ("the budget of €3,500.00 was approved
by a two-thirds majority"). Each sentence that carries figures is therefore placed: the items
(or the opening of the minutes) that hold all of its figures. The sentence is refused when no
single item holds them all, when it names a majority none of those items was voted by, or an
outcome (approved / rejected) none of them had. A sentence without figures cannot be placed and
is not judged. Figures of the opening (the meeting's date, the attendance) may appear in any
sentence: a summary starts "At the meeting of 18 March 2025, ...".
"""

from __future__ import annotations

from koprogo_node.domain.tasks import minutes_vocabulary as vocab
from koprogo_node.domain.tasks.minutes import AgendaItem, MinutesExtract, read_majority, split_sentences
from koprogo_node.domain.tasks.prose_check import FigureIndex, figures_in

MAX_QUOTED_CHARS = 80


def misplaced_sentences(prose: str, extract: MinutesExtract) -> list[str]:
    """Why sentences of `prose` do not fit the item their figures come from (empty: they all do)."""
    opening = FigureIndex(extract.preamble)
    sections: list[tuple[AgendaItem | None, FigureIndex]] = [(None, opening)]
    sections += [(item, FigureIndex(f"{item.title}\n{item.text}")) for item in extract.items]
    problems: list[str] = []
    for sentence in split_sentences(prose):
        figures = figures_in(sentence)
        if not figures:
            continue
        figures = [f for f in figures if not opening.holds(f)] or figures
        places = [item for item, index in sections if all(index.holds(f) for f in figures)]
        quoted = _quoted(sentence)
        if not places:
            problems.append(f"figures of different items in one sentence: {quoted}")
            continue
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


def _quoted(sentence: str) -> str:
    return f"«{sentence[:MAX_QUOTED_CHARS]}{'…' if len(sentence) > MAX_QUOTED_CHARS else ''}»"
