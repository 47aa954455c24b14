"""The decisions of a general meeting's minutes, read by rules: pure functions, no I/O.

A small model asked to summarise minutes invents amounts, dates and outcomes. What a co-owner
relies on (what was decided, for how much, by which majority, by how many votes, by when) is
therefore read from the text itself, by rules that know how minutes are written in French,
Dutch and English (`minutes_vocabulary`); amounts and dates in local formats come from
`local_formats`. Every value returned is a piece of the source text or read from one.

The minutes are cut into agenda items at their numbered headings (`3. Titre`, `Punt 3: Titel`,
`Resolution 3 - Title`), numbered in sequence. In each item:

- vote: `no_vote` when it says so ("pas de vote", "geen stemming", "no vote") and gives no count;
  else the verdict of its last sentence that gives one (rejected / approved wording, negations
  first; decision wording such as "est fixé" counts only when the item gives a vote); else, when only the counts are given, whether the count for carries the majority
  stated (abstentions left out, as Belgian law counts votes); else `unknown`;
- decision: its text from the first sentence that states a decision to the item's end (the
  financing, deadlines and conditions follow the decision in minutes), excluding the closing;
- amounts and dates: those of the decision (not the quotes received before it), or, when the
  decision names none, those of the whole item.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Literal

from koprogo_node.domain.tasks import minutes_vocabulary as vocab
from koprogo_node.domain.tasks.local_formats import find_amounts, find_dates, parse_amount

Vote = Literal["approved", "rejected", "no_vote", "unknown"]
Majority = Literal["two_thirds", "absolute", "four_fifths", "unanimity"]
_MAJORITY_SHARE: dict[Majority, Decimal] = {
    "absolute": Decimal(1) / 2,
    "two_thirds": Decimal(2) / 3,
    "four_fifths": Decimal(4) / 5,
}


@dataclass(frozen=True, slots=True)
class Amount:
    """An amount as printed (`18 450 € HTVA`), its value and ISO currency."""

    text: str
    value: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class VoteCount:
    """The counts given for one vote (votes or shares); None where the minutes give none."""

    for_: int
    against: int | None
    abstain: int | None


@dataclass(frozen=True, slots=True)
class AgendaItem:
    number: str
    title: str
    text: str
    vote: Vote
    majority: Majority | None
    votes: VoteCount | None
    decision: str
    amounts: tuple[Amount, ...]
    dates: tuple[date, ...]


@dataclass(frozen=True, slots=True)
class MinutesExtract:
    meeting_date: date | None
    items: tuple[AgendaItem, ...]
    preamble: str = ""
    amounts: tuple[Amount, ...] = field(default=())
    dates: tuple[date, ...] = field(default=())

    @property
    def decisions(self) -> tuple[AgendaItem, ...]:
        return tuple(i for i in self.items if i.vote in ("approved", "rejected"))

    @property
    def no_vote(self) -> tuple[AgendaItem, ...]:
        return tuple(i for i in self.items if i.vote == "no_vote")


def extract_minutes(text: str) -> MinutesExtract:
    """The meeting's date, its agenda items with their votes, and every amount and date in it."""
    preamble, raw_items = split_items(text)
    items = tuple(read_item(number, title, body) for number, title, body in raw_items)
    header_dates = find_dates(preamble) or find_dates("\n".join(text.splitlines()[:5]))
    return MinutesExtract(
        meeting_date=header_dates[0][1] if header_dates else None,
        items=items,
        preamble=preamble,
        amounts=tuple(dict.fromkeys(amounts_in(text))),
        dates=tuple(dict.fromkeys(value for _, value in find_dates(text))),
    )


def split_items(text: str) -> tuple[str, list[tuple[str, str, str]]]:
    """The text before the first item, and each item's (number, title, body), in order.

    A heading counts only when it continues the numbering (the next number, or one skipped) in
    the style of the first (`Point 3`, or a bare `3.`), so numbered lists inside an item (three
    quotes, 1. 2. 3.) stay in its body. The closing lines
    (the meeting is closed, signatures) are cut off the last item.
    """
    lines = text.splitlines()
    headings: list[tuple[int, str, str, str]] = []  # line index, number, title, inline text
    previous: int | None = None
    style: str | None = None
    for index, line in enumerate(lines):
        match = vocab.ITEM_HEADING.match(line)
        if match is None:
            continue
        number = int(match.group("wnum") or match.group("num"))
        word = (match.group("word") or "").lower()
        if previous is not None and (word != style or not previous < number <= previous + 2):
            continue
        style = word
        title, inline = _title_and_inline(match.group("rest"))
        headings.append((index, str(number), title, inline))
        previous = number
    if not headings:
        return text, []
    preamble = "\n".join(lines[: headings[0][0]])
    items: list[tuple[str, str, str]] = []
    for position, (start, label, title, inline) in enumerate(headings):
        end = headings[position + 1][0] if position + 1 < len(headings) else len(lines)
        body_lines = [inline, *lines[start + 1 : end]] if inline else lines[start + 1 : end]
        if position + 1 == len(headings):
            body_lines = _before_closing(body_lines)
        items.append((label, title, "\n".join(body_lines).strip()))
    return preamble, items


def _title_and_inline(rest: str) -> tuple[str, str]:
    """A heading line's title, and the item's text that follows it on the same line."""
    rest = rest.strip().strip("*").strip()
    cut = vocab.TITLE_SENTENCE_END.search(rest, 0, vocab.MAX_TITLE_CHARS)
    if cut is None and len(rest) > vocab.MAX_TITLE_CHARS:
        cut = vocab.TITLE_END.search(rest, 0, vocab.MAX_TITLE_CHARS)
    if cut is not None:
        return rest[: cut.start()].rstrip(" .:"), rest[cut.end() :]
    if len(rest) > vocab.MAX_TITLE_CHARS:
        return rest[: vocab.MAX_TITLE_CHARS].rsplit(" ", 1)[0], rest
    return rest.rstrip(" .:"), ""


def _before_closing(lines: list[str]) -> list[str]:
    for index, line in enumerate(lines):
        if vocab.CLOSING_LINE.match(line.strip()):
            return lines[:index]
    return lines


def read_item(number: str, title: str, body: str) -> AgendaItem:
    """One agenda item's vote, majority, counts, decision text, amounts and dates."""
    sentences = split_sentences(body)
    lowered = [s.lower() for s in sentences]
    votes = read_votes(body.lower())
    majority = read_majority(body.lower(), votes)
    vote = read_vote(lowered, votes, majority)
    start = next((i for i, s in enumerate(lowered) if _states_decision(s)), None)
    if vote == "no_vote":
        start = 0  # nothing was decided: what was said is the item's whole text
    decision = "" if start is None else " ".join(sentences[start:])
    return AgendaItem(
        number=number,
        title=title,
        text=body,
        vote=vote,
        majority=majority,
        votes=votes,
        decision=decision,
        # The decision's own (not the quotes it did not retain), else those the item cites.
        amounts=tuple(dict.fromkeys(amounts_in(decision) or amounts_in(body))),
        dates=tuple(dict.fromkeys(value for _, value in (find_dates(decision) or find_dates(body)))),
    )


def _states_decision(sentence: str) -> bool:
    return any(
        p.search(sentence)
        for p in (
            vocab.APPROVED,
            vocab.DECIDED,
            vocab.REJECTED,
            vocab.NO_VOTE,
            vocab.DECISION_START,
            vocab.VOTES_FOR,
        )
    ) or bool(read_majority(sentence, None))


def read_vote(sentences: list[str], votes: VoteCount | None, majority: Majority | None) -> Vote:
    """The item's outcome from its (lower-cased) sentences and counts."""
    text = " ".join(sentences)
    if votes is None and vocab.NO_VOTE.search(text):
        return "no_vote"
    verdict: Vote | None = None
    voted = votes is not None or majority is not None
    for sentence in sentences:
        if vocab.REJECTED.search(sentence):
            verdict = "rejected"
        elif vocab.APPROVED.search(sentence) or (voted and vocab.DECIDED.search(sentence)):
            verdict = "approved"
    if verdict is not None:
        return verdict
    if votes is not None and votes.against is not None:
        needed = _MAJORITY_SHARE.get(majority or "absolute")
        if needed is not None and votes.for_ + votes.against > 0:
            share = Decimal(votes.for_) / Decimal(votes.for_ + votes.against)
            carried = share > needed if majority in (None, "absolute") else share >= needed
            return "approved" if carried else "rejected"
    if majority == "unanimity":
        return "approved"
    return "unknown"


def read_votes(text: str) -> VoteCount | None:
    """The first counts for / against / abstaining in `text` (lower-cased); None without a count for."""
    line = vocab.VOTE_LINE.search(text)
    if line is not None:
        return VoteCount(
            for_=_count(line.group("for_")) or 0,
            against=_count(line.group("against")),
            abstain=_count(line.group("abstain")),
        )
    count_for = _first_count(vocab.VOTES_FOR, text)
    if count_for is None:
        return None
    return VoteCount(
        for_=count_for,
        against=_first_count(vocab.VOTES_AGAINST, text),
        abstain=_first_count(vocab.VOTES_ABSTAIN, text),
    )


def _first_count(pattern: re.Pattern[str], text: str) -> int | None:
    match = pattern.search(text)
    if match is None:
        return None
    return _count(next(g for g in match.groupdict().values() if g is not None))


def _count(digits: str | None) -> int | None:
    value = None if digits is None else parse_amount(digits)
    return None if value is None else int(value)


def read_majority(text: str, votes: VoteCount | None) -> Majority | None:
    """The majority the (lower-cased) text names. Unanimity only when no count against says otherwise."""
    if vocab.FOUR_FIFTHS.search(text):
        return "four_fifths"
    if vocab.TWO_THIRDS.search(text):
        return "two_thirds"
    if vocab.ABSOLUTE.search(text):
        return "absolute"
    if vocab.UNANIMITY.search(text) and (votes is None or not votes.against):
        return "unanimity"
    return None


def amounts_in(text: str) -> list[Amount]:
    """Amounts with a currency, as printed, with a VAT qualifier that follows them (`HTVA`, `excl. btw`)."""
    found: list[Amount] = []
    for (start, end), value, currency in find_amounts(text):
        if currency is None:
            continue  # a count, a share, a year: not money
        qualifier = vocab.VAT_QUALIFIER.match(text, end)
        if qualifier is not None:
            end = qualifier.end()
        found.append(Amount(text=" ".join(text[start:end].split()), value=value, currency=currency))
    return found


_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[\"«(“]?[A-ZÀ-Ý0-9])|\n+")


def split_sentences(text: str) -> list[str]:
    """The sentences of `text` (a line break also ends one), abbreviations (`M.`, `Dhr.`) kept whole."""
    sentences: list[str] = []
    for piece in _SENTENCE_BREAK.split(text):
        piece = piece.strip()
        if not piece:
            continue
        last_word = sentences[-1].rsplit(None, 1)[-1].rstrip(".").lower() if sentences else ""
        if sentences and sentences[-1].endswith(".") and last_word in vocab.ABBREVIATIONS:
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return sentences
