"""What the summary task hands back: the extract as JSON, and a prose written from the extract
alone (used when the model's prose states a figure the minutes do not hold). Pure functions.

The prose from the extract copies amounts as printed in the minutes and writes dates and
counts the way the minutes' language does, so that it passes the same figure check as the
model's prose.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from koprogo_node.domain.tasks.language import Language
from koprogo_node.domain.tasks.minutes import AgendaItem, Amount, Majority, MinutesExtract, Vote

SummarySource = Literal["model", "extract"]

_MONTHS: dict[Language, tuple[str, ...]] = {
    "fr": tuple(
        "janvier février mars avril mai juin juillet août septembre octobre novembre décembre".split()
    ),
    "nl": tuple(
        "januari februari maart april mei juni juli augustus september oktober november december".split()
    ),
    "en": tuple(
        "January February March April May June July August September October November December".split()
    ),
}
_THOUSANDS: dict[Language, str] = {"fr": "\u202f", "nl": ".", "en": ","}
_VOTE_WORDS: dict[Language, dict[Vote, str]] = {
    "fr": {
        "approved": "approuvé",
        "rejected": "rejeté",
        "no_vote": "sans vote",
        "unknown": "sans vote relevé",
    },
    "nl": {
        "approved": "goedgekeurd",
        "rejected": "verworpen",
        "no_vote": "geen stemming",
        "unknown": "geen stemming vermeld",
    },
    "en": {
        "approved": "approved",
        "rejected": "rejected",
        "no_vote": "no vote",
        "unknown": "no vote recorded",
    },
}
_MAJORITY_WORDS: dict[Language, dict[Majority, str]] = {
    "fr": {
        "absolute": "à la majorité absolue",
        "two_thirds": "à la majorité des deux tiers",
        "four_fifths": "à la majorité des quatre cinquièmes",
        "unanimity": "à l'unanimité",
    },
    "nl": {
        "absolute": "bij gewone meerderheid",
        "two_thirds": "met tweederdemeerderheid",
        "four_fifths": "met viervijfdemeerderheid",
        "unanimity": "met eenparigheid",
    },
    "en": {
        "absolute": "by a simple majority",
        "two_thirds": "by a two-thirds majority",
        "four_fifths": "by a four-fifths majority",
        "unanimity": "unanimously",
    },
}
# For a rejected item, the majority the minutes name is the one it failed to reach.
_REQUIRED_WORDS: dict[Language, dict[Majority, str]] = {
    "fr": {
        "absolute": "majorité absolue requise",
        "two_thirds": "majorité des deux tiers requise",
        "four_fifths": "majorité des quatre cinquièmes requise",
        "unanimity": "unanimité requise",
    },
    "nl": {
        "absolute": "gewone meerderheid vereist",
        "two_thirds": "tweederdemeerderheid vereist",
        "four_fifths": "viervijfdemeerderheid vereist",
        "unanimity": "eenparigheid vereist",
    },
    "en": {
        "absolute": "simple majority required",
        "two_thirds": "two-thirds majority required",
        "four_fifths": "four-fifths majority required",
        "unanimity": "unanimity required",
    },
}
_PHRASES: dict[Language, dict[str, str]] = {
    "fr": {
        "meeting": "Assemblée générale du {date}.",
        "meeting_undated": "Assemblée générale.",
        "count": "{items} points à l'ordre du jour, {decisions} décisions.",
        "item": "Point {number} ({title}) : {outcome}",
        "votes": "{for_} voix pour, {against} contre, {abstain} abstentions",
        "amounts": "montants : {amounts}",
        "dates": "échéances : {dates}",
        "no_vote": "Sans vote : {titles}.",
    },
    "nl": {
        "meeting": "Algemene vergadering van {date}.",
        "meeting_undated": "Algemene vergadering.",
        "count": "{items} agendapunten, {decisions} beslissingen.",
        "item": "Punt {number} ({title}): {outcome}",
        "votes": "{for_} stemmen voor, {against} tegen, {abstain} onthoudingen",
        "amounts": "bedragen: {amounts}",
        "dates": "termijnen: {dates}",
        "no_vote": "Zonder stemming: {titles}.",
    },
    "en": {
        "meeting": "General meeting of {date}.",
        "meeting_undated": "General meeting.",
        "count": "{items} agenda items, {decisions} decisions.",
        "item": "Item {number} ({title}): {outcome}",
        "votes": "{for_} for, {against} against, {abstain} abstentions",
        "amounts": "amounts: {amounts}",
        "dates": "deadlines: {dates}",
        "no_vote": "Without a vote: {titles}.",
    },
}


def local_date(day: date, language: Language) -> str:
    """`30 juin 2025`, `30 juni 2025`, `30 June 2025`."""
    return f"{day.day} {_MONTHS[language][day.month - 1]} {day.year}"


def local_count(value: int, language: Language) -> str:
    """`5 210`, `5.210`, `5,210`: a count as the language groups its thousands."""
    return f"{value:,}".replace(",", _THOUSANDS[language])


def prose_from_extract(extract: MinutesExtract, language: Language) -> str:
    """A summary written from the extracted fields only: every figure in it comes from the minutes."""
    words = _PHRASES[language]
    lines = [
        words["meeting"].format(date=local_date(extract.meeting_date, language))
        if extract.meeting_date
        else words["meeting_undated"],
        words["count"].format(items=len(extract.items), decisions=len(extract.decisions)),
    ]
    lines.extend(_item_line(item, language) for item in extract.decisions)
    if extract.no_vote:
        lines.append(words["no_vote"].format(titles="; ".join(i.title for i in extract.no_vote)))
    return "\n".join(lines)


def _item_line(item: AgendaItem, language: Language) -> str:
    words = _PHRASES[language]
    outcome = _VOTE_WORDS[language][item.vote]
    details: list[str] = []
    if item.majority is not None and item.vote == "rejected":
        details.append(_REQUIRED_WORDS[language][item.majority])
    elif item.majority is not None:
        outcome += " " + _MAJORITY_WORDS[language][item.majority]
    if item.votes is not None:
        counts = words["votes"].format(
            for_=local_count(item.votes.for_, language),
            against=local_count(item.votes.against or 0, language),
            abstain=local_count(item.votes.abstain or 0, language),
        )
        if item.votes.against is None:
            counts = counts.split(",")[0]
        elif item.votes.abstain is None:
            counts = ",".join(counts.split(",")[:2])
        details.append(counts)
    if item.amounts:
        details.append(words["amounts"].format(amounts=", ".join(a.text for a in item.amounts)))
    if item.dates:
        details.append(words["dates"].format(dates=", ".join(local_date(d, language) for d in item.dates)))
    line = words["item"].format(number=item.number, title=item.title, outcome=outcome)
    return f"{line} ({'; '.join(details)})." if details else f"{line}."


def minutes_result(
    extract: MinutesExtract, language: Language, summary: str, summary_source: SummarySource
) -> dict[str, Any]:
    """The task's JSON result."""
    return {
        "language": language,
        "meeting_date": extract.meeting_date.isoformat() if extract.meeting_date else None,
        "summary": summary,
        "summary_source": summary_source,
        "items": [_item_json(i) for i in extract.items],
        "decisions": [_item_json(i) for i in extract.decisions],
        "no_vote": [i.title for i in extract.no_vote],
        "amounts": [_amount_json(a) for a in extract.amounts],
        "dates": [d.isoformat() for d in extract.dates],
    }


def _item_json(item: AgendaItem) -> dict[str, Any]:
    return {
        "number": item.number,
        "title": item.title,
        "vote": item.vote,
        "majority": item.majority,
        "votes": None
        if item.votes is None
        else {"for": item.votes.for_, "against": item.votes.against, "abstain": item.votes.abstain},
        "decision": item.decision,
        "amounts": [_amount_json(a) for a in item.amounts],
        "dates": [d.isoformat() for d in item.dates],
    }


def _amount_json(amount: Amount) -> dict[str, Any]:
    return {"text": amount.text, "value": float(amount.value), "currency": amount.currency}
