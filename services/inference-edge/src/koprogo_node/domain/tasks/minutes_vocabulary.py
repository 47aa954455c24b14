"""How minutes of a co-owners' general meeting say things, in French, Dutch and English.

The patterns `minutes.py` reads a procès-verbal / notulen / minutes with. They are matched on
the lower-cased text. Kept apart from the extraction so that a new phrasing is one line here.
"""

# Dashes and apostrophes as minutes print them (en dash, curly quote) are kept on purpose.
# ruff: noqa: RUF001, RUF003
from __future__ import annotations

import re

# A vote count: `6 120`, `5.210`, `1,160`, `450` (thousands grouped the way local_formats reads them).
COUNT = r"\d{1,3}(?:[ \u00a0\u202f.,'’]\d{3})+(?!\d)|\d+"

# An agenda item's heading: `3. Titre`, `3) Title`, `Point 3 : Titre`, `Agendapunt 3 – Titel`,
# `Resolution 3: Title`, possibly in Markdown (`## 3. Title`, `**3. Title**`). A bare number needs
# its `.` or `)`, so a line that starts with a count ("14 copropriétaires...") is not a heading.
ITEM_HEADING = re.compile(
    r"^[#*\s]*(?:(?P<word>point|punt|agendapunt|item|agenda item|résolution|resolution|besluit|article)"
    r"\s*(?:n[°o]\.?|nr\.?|no\.?)?\s*(?P<wnum>\d{1,2})\s*[.):–—-]?"
    r"|(?P<num>\d{1,2})\s*[.)])\s+(?P<rest>\S.*)$",
    re.IGNORECASE,
)
MAX_TITLE_CHARS = 160
# Where a heading's title ends and the item's text begins on the same line: a sentence break;
# on a line too long to be a title, also a colon or a dash.
TITLE_SENTENCE_END = re.compile(r"(?<=[^\s.])\.\s+(?=[A-ZÀ-Ý])")
TITLE_END = re.compile(r"\s+[:–—-]\s+|(?<=[^\s.])[.:]\s+(?=[A-ZÀ-Ý])")

# The end of the minutes: what follows is no longer the last item's text.
CLOSING_LINE = re.compile(
    r"^\W*(?:l'ordre du jour étant épuisé|l’ordre du jour étant épuisé|la séance est levée"
    r"|plus rien n.étant à l.ordre du jour|de (?:vergadering|zitting) wordt (?:gesloten|geheven)"
    r"|de agenda (?:is|werd) afgehandeld|na afhandeling van de agenda|there being no further business"
    r"|the meeting (?:was )?(?:closed|ended)|the chair(?:man|person)? closed"
    r"|le président,|la présidente,|de voorzitter,|the chair(?:man|person)?,|signé|getekend|signed)",
    re.IGNORECASE,
)

NO_VOTE = re.compile(
    r"pas de vote|sans vote|pas (?:été )?soumis au vote|n.a pas (?:été )?(?:voté|fait l.objet d.un vote)"
    r"|point d.information|à titre d.information|à titre informatif|pour information"
    r"|geen stemming|zonder stemming|niet (?:ter stemming|gestemd)|ter informatie|informatief punt"
    r"|no vote|without (?:a )?vote|not put to (?:a |the )?vote|for information(?: only)?|information only"
)
REJECTED = re.compile(
    r"\brejet(?:é|ée|és|ées|te)\b|\brefus(?:é|ée|és|ées|e)\b|\bn.(?:est|a) pas (?:été )?(?:approuv|adopt|accept)"
    r"|\bnon (?:approuv|adopt)|\bverworpen\b|\bafgewezen\b|\bniet (?:goedgekeurd|aangenomen|aanvaard)"
    r"|\bafgekeurd\b|\bkeurt\b[^.]*\b(?:niet goed|af)\b|\brejected\b|\bnot (?:approved|adopted|carried|passed)\b|\bdefeated\b"
)
# Words that say an item was approved, whatever else the item says.
APPROVED = re.compile(
    r"\bapprouv(?:é|ée|és|ées|e)\b|\badopt(?:é|ée|és|ées|e)\b|\baccept(?:é|ée|és|ées|e)\b"
    r"|\bgoedgekeurd\b|\baangenomen\b|\baanvaard\b|\bkeurt\b[^.]*\bgoed\b"
    r"|\bapproved\b|\badopted\b|\bcarried\b(?! out)|\bpassed\b(?! on)|\bagreed\b"
)
# Words that state a decision ("décide", "est fixé", "beslist", "resolved"): an approval when the
# item also gives a vote (counts or a majority); without one, a statement ("the next meeting is
# set for March"), not a vote.
DECIDED = re.compile(
    r"\bdécid(?:e|é)\b|\bretient\b|\b(?:est|sont) (?:fixée?s?|renouvelée?s?|donnée?s?|accordée?s?|octroyée?s?|prolongée?s?)\b"
    r"|\b(?:ré)?(?:élue?s?|nommée?s?|désignée?s?)\b|\b(?:her)?benoemd\b|\baangesteld\b|\bherkozen\b"
    r"|\b(?:re)?(?:appointed|elected)\b"
    r"|\bbeslist\b|\bbesloten\b|\bvastgesteld\b|\bverleend\b|\bhernieuwd\b|\bverlengd\b"
    r"|\bresolved\b|\bgranted\b|\brenewed\b|\bdecided?s?\b|\bset at\b|\bfixed at\b"
)
# Sentences that state what was decided (besides the verdicts above): where the decision text starts.
DECISION_START = re.compile(
    r"\bdécision\b|\bl.assemblée (?:charge|mandate|décide|donne)|\bbesluit\b|\bbeslissing\b"
    r"|\bde (?:algemene )?vergadering (?:beslist|geeft|gelast|keurt|belast)|\bresolution\b"
    r"|\bthe meeting (?:instructs|decides|resolves)|\binstructs the\b"
)

FOUR_FIFTHS = re.compile(r"quatre[ -]cinquièmes|\b4/5\b|vier[ -]?vijfde|four[ -]fifths")
TWO_THIRDS = re.compile(r"deux[ -]tiers|\b2/3\b|twee[ -]?derde|two[ -]thirds")
ABSOLUTE = re.compile(
    r"majorité (?:absolue|simple|ordinaire)|(?:absolute|gewone|volstrekte|eenvoudige) meerderheid"
    r"|(?:absolute|simple|ordinary) majority"
)
UNANIMITY = re.compile(r"unanimit|unanime|eenparig|unaniem|unanimous")

_VOTE_UNIT = r"(?:voix|votes?|stemmen|quotités|quotes-parts|aandelen)"
_FOR_WORD = r"(?:pour|voor|for|in favou?r)"
_AGAINST_WORD = r"(?:contre|tegen|against)"
_ABSTAIN_WORD = r"(?:abstentions?|onthoudingen|onthouding|abstained|abstaining)"
# A count is not glued to an amount (`€ 50`, `52,180.40`).
# `5 210 voix pour`; a bare `5 210 pour` only when a count against follows (else "18 450 for the works").
VOTES_FOR = re.compile(
    rf"(?<![\d€$£])(?<!€ )(?<!\d[.,])(?P<n>{COUNT})\s+{_VOTE_UNIT}\s+{_FOR_WORD}\b"
    rf"|(?<![\d€$£])(?<!€ )(?<!\d[.,])(?P<m>{COUNT})\s+{_FOR_WORD}\b(?=[^.;]{{0,40}}?(?:{COUNT})\s+(?:{_VOTE_UNIT}\s+)?{_AGAINST_WORD}\b)"
    rf"|\b{_FOR_WORD}\s*:\s*(?P<k>{COUNT})"
)
# Words first, on one line: `pour 5 210, contre 1 160, abstentions 450`, `voor: 7.400 – tegen: 600`.
VOTE_LINE = re.compile(
    rf"\b{_FOR_WORD}\s*:?\s*(?P<for_>{COUNT})\s*[,;–—-]?\s*(?:et |en |and )?{_AGAINST_WORD}\s*:?\s*(?P<against>{COUNT})"
    rf"(?:\s*[,;–—-]?\s*(?:et |en |and )?{_ABSTAIN_WORD}\s*:?\s*(?P<abstain>{COUNT}))?"
)
VOTES_AGAINST = re.compile(
    rf"(?<![\d€$£])(?<!€ )(?<!\d[.,])(?P<n>{COUNT})\s+(?:{_VOTE_UNIT}\s+)?{_AGAINST_WORD}\b|\b{_AGAINST_WORD}\s*:\s*(?P<k>{COUNT})"
)
VOTES_ABSTAIN = re.compile(
    rf"(?<![\d€$£])(?<!€ )(?<!\d[.,])(?P<n>{COUNT})\s+(?:{_VOTE_UNIT}\s+)?{_ABSTAIN_WORD}|\b{_ABSTAIN_WORD}\s*:\s*(?P<k>{COUNT})"
)

# Words after an amount that belong to it: VAT included or not.
VAT_QUALIFIER = re.compile(
    r"\s*(?:HTVA|TVAC|TTC|HT|H\.T\.V\.A\.|T\.V\.A\.C\.|hors\s+TVA|TVA\s+comprise|excl\.?\s+(?:btw|BTW|VAT)"
    r"|incl\.?\s+(?:btw|BTW|VAT)|exclusief\s+(?:btw|BTW)|inclusief\s+(?:btw|BTW)|excluding\s+VAT|including\s+VAT"
    r"|ex(?:cl)?\.?\s+VAT|inc\.?\s+VAT)\b"
)

# Abbreviations that end with a dot without ending a sentence.
ABBREVIATIONS = frozenset(
    "m mme mlle mr mrs ms dr dhr mevr me st n° nr no art cf p ir ing prof excl incl ex inc ca env approx vs".split()
)
