"""The labels Belgian, French, Dutch and English invoices print, as patterns over folded text
(lower case, accents removed, same length as the original so a match's span is the original's).

Order matters where one label holds another (`Total TVAC` holds `TVA`, `HTVA` holds `TVA`,
`date d'échéance` holds `date`): the more specific pattern is tried first.
"""

from __future__ import annotations

import re
import unicodedata


def fold(text: str) -> str:
    """Lower case without accents, one character for one: `Échéance` -> `echeance`."""
    out = []
    for char in text:
        bare = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
        lowered = bare.lower()
        out.append(lowered if len(lowered) == 1 else char.lower()[:1] or char)
    return "".join(out)


_NO = r"(?:n\s?[°o*'º]\.?|no\.?|nr\.?|nummer|number|num(?:ero)?\.?|#)"

# Amount labels, by the field they name; tried in this order at each position.
AMOUNT_LABELS: dict[str, str] = {
    "total_incl_vat": (
        r"total\s*(?:t\.?v\.?a\.?c\.?|ttc|incl\.?(?:usive|uding)?(?:\s*(?:btw|tva|vat))?|a\s+payer|du)"
        r"|totaal\s*(?:incl\.?(?:usief)?(?:\s*btw)?|te\s+betalen)"
        r"|\bt\.?v\.?a\.?c\b|\bttc\b|incl\.?(?:usief|uding)?\s*(?:btw|tva|vat)"
        r"|net\s+a\s+payer|(?<!\w)a\s+payer|te\s+betalen|montant\s+(?:total|du)"
        r"|amount\s+(?:due|payable)|(?:total|balance)\s+due|total\s+to\s+pay|grand\s+total"
    ),
    "total_excl_vat": (
        r"total\s*(?:h\.?t\.?v\.?a\.?|h\.?t\b\.?|hors\s+(?:tva|taxes?)|excl\.?(?:usive|uding)?(?:\s*(?:btw|tva|vat))?|net)"
        r"|totaal\s*(?:excl\.?(?:usief)?(?:\s*btw)?|zonder\s+btw)"
        r"|\bh\.?t\.?v\.?a\b|\bht\b|excl\.?(?:usief|uding)?\s*(?:btw|tva|vat)"
        r"|sub\s*-?\s*total|subtotaal|montant\s+ht|base\s+imposable|maatstaf\s+van\s+heffing"
        r"|net\s+(?:amount|total)|total\s+before\s+(?:vat|tax)"
    ),
    # Letters around are another word (`HTVA`, `TVAC`, `vatting`); digits are OCR's lost space (`TVA21%`).
    "vat": r"(?<![a-z])(?:tva|btw|vat|tax|mwst)(?![a-z])|t\.v\.a\.",
    # A bare `Total` is the amount to pay only when no specific label is found.
    "total": r"\btotal\b|\btotaal\b",
}

DATE_LABELS: dict[str, str] = {
    # Dates that are neither: named so that their `date` is not read as the invoice's.
    "other_date": (
        r"date\s+de\s+(?:livraison|prestation|commande)|leverdatum|leveringsdatum|delivery\s+date"
        r"|order\s+date|besteldatum|date\s+d'?\s*intervention"
    ),
    "due_date": (
        r"date\s+(?:d'?\s*|de\s+l'?\s*)?echeance|echeance|date\s+limite(?:\s+de\s+paiement)?"
        r"|vervaldatum|vervaldag|uiterste\s+betaaldatum|betaalbaar\s+(?:voor|tot|op)"
        r"|te\s+betalen\s+(?:voor|tegen|uiterlijk(?:\s+op)?)|(?:a\s+)?payer\s+avant(?:\s+le)?"
        r"|payable\s+(?:avant(?:\s+le)?|le|by|before)|(?:payment\s+)?due\s+(?:date|on|by)|\bdue\b"
    ),
    "issue_date": (
        r"date\s+(?:de\s+(?:la\s+)?)?facture|date\s+d'?\s*emission|factuurdatum|facturatiedatum"
        r"|invoice\s+date|date\s+of\s+(?:issue|invoice)|issue\s+date|issued\s+on|\bdatum\b|\bdate\b|\bdated\b"
    ),
}

INVOICE_NUMBER_HEAD = (
    rf"(?:{_NO}\s*(?:de\s+(?:la\s+)?)?facture|numero\s+de\s+(?:la\s+)?facture"
    rf"|factuur[\s.]*{_NO}|factuurnummer|factuurnr\.?|invoice[\s.]*{_NO}|facture[\s.]*{_NO}|rechnung[\s.]*{_NO}"
    rf"|(?:note\s+de\s+credit|creditnota|credit\s+note)[\s.]*{_NO}?"
    # A bare `Facture`, not the one of `Date de facture` / `Invoice date`.
    rf"|(?<!\w)(?<!date de )(?<!date )facture|(?<!\w)factuur|(?<!\w)invoice(?!\s+date))"
)
INVOICE_NUMBER_LABEL = INVOICE_NUMBER_HEAD + r"\s*[:.]?\s*"
# What an invoice number looks like: letters, digits and separators, at least one digit.
INVOICE_NUMBER_VALUE = r"[a-z0-9][a-z0-9/_.-]*"

CUSTOMER_LABEL = (
    r"^\s*(?:client|cliente|klant|customer|bill(?:ed)?\s+to|invoice\s+to|sold\s+to|facture\s+a"
    r"|facturer\s+a|factuur\s+aan|gefactureerd\s+aan|adresse\s+de\s+facturation|factuuradres"
    r"|destinataire|aan|to|votre\s+reference|uw\s+referentie)\b"
)
CUSTOMER_NAME = (
    # `ACP`/`VME` glued to the name that follows (OCR drops spaces: `ACPResidenceLesTilleuls`).
    r"^\s*(?:a\.?c\.?p|v\.?m\.?e)(?=\W|residen|copro|gebouw|$)"
    r"|^\s*(?:residence|residentie|copropriete|association\s+des\s+coproprietaires"
    r"|vereniging\s+van\s+(?:de\s+)?mede-?eigenaars|syndic\b|immeuble|gebouw|building"
    # Care of: the syndic who receives the building's mail is the customer's side too.
    r"|c/o|p/a|chez|attn|t\.?a\.?v\.?|co-?ownership|co-?owners)\b"
)
# A VAT id or an IBAN on a line that says it is the customer's.
CUSTOMER_MENTION = r"\b(?:client|klant|customer|votre|uw|your)\b"
SUPPLIER_LABEL = r"^\s*(?:fournisseur|leverancier|supplier|vendor|from|emetteur|van)\s*:\s*"
VAT_ID_LABEL = r"\b(?:tva|btw|vat|ondernemingsnummer|ondernemingsnr|entreprise|enterprise|kbo|bce|siren|siret|tax\s+id)\b"
IBAN_LABEL = r"\b(?:iban|compte|rekening|account|bank|banque)\b"

LEGAL_FORM = re.compile(
    r"(?<![\w.])(?:SPRLU?|SRL|S\.?A\.?|SC|SCRL|SCS|SNC|SAS|SARL|EURL|ASBL|N\.?V\.?|B\.?V\.?|BVBA|CVBA|VZW|VOF"
    r"|CommV|GmbH|Ltd\.?|LLC|LLP|PLC|Inc\.?)(?![\w])"
)
# Lines that are not a company name: a title, an address, a contact line.
NOT_A_NAME = (
    r"^\s*(?:facture|factuur|invoice|note\s+de\s+credit|creditnota|credit\s+note|devis|offerte|quote"
    r"|rue|avenue|av\.|chaussee|boulevard|bd|place|quai|chemin|route|allee|impasse|straat|laan|steenweg"
    r"|plein|lei|dreef|kaai|weg|street|road|tel|tel\.|gsm|fax|email|e-mail|www|web|page|pagina)\b"
    r"|@|^\s*\d|^\s*[+(]"
)


AMOUNT_LABEL = re.compile("|".join(f"(?P<{name}>{p})" for name, p in AMOUNT_LABELS.items()))
DATE_LABEL = re.compile("|".join(f"(?P<{name}>{p})" for name, p in DATE_LABELS.items()))
