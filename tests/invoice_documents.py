"""Realistic supplier invoices made for tests: French, Dutch and English layouts, other suppliers
and buildings than the fixtures, as a PDF with a text layer (fpdf2), as a degraded PNG "scan"
(rendered at 150 dpi, rotated, speckled, blurred with Pillow) and as a scanned PDF (that PNG in a
PDF without text layer).

Each `InvoiceSpec` carries the truth its documents print, so a test compares what was read with
what was written, not with numbers typed twice.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal
from pathlib import Path

import pypdfium2
from fpdf import FPDF
from PIL import Image, ImageDraw, ImageFilter

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"))

MONTHS = {
    "fr": "janvier février mars avril mai juin juillet août septembre octobre novembre décembre".split(),
    "nl": "januari februari maart april mei juni juli augustus september oktober november december".split(),
    "en": "January February March April May June July August September October November December".split(),
}


def iban_with_check_digits(country: str, bban: str) -> str:
    """A valid IBAN (ISO 13616 check digits computed), grouped by four."""
    numeric = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    compact = f"{country}{98 - numeric % 97:02d}{bban}"
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


@dataclass(frozen=True)
class InvoiceSpec:
    language: str  # "fr" | "nl" | "en": labels, month names
    supplier: str
    supplier_lines: tuple[str, ...]
    supplier_vat_line: str  # the line that prints the supplier's VAT id
    supplier_vat_id: str  # the id in its usual printed form
    customer_lines: tuple[str, ...]
    number: str
    issued: date
    due: date
    items: tuple[tuple[str, int, Decimal], ...]  # description, quantity, unit price
    vat_rate: Decimal
    iban: str
    layout: str = "columns"  # "stacked" (one column, like the fixture) | "columns"
    amount_style: str = "be"  # "be": 1 512,50 € | "nl": € 1.512,50 | "eur": 1.512,50 EUR | "en": 1,512.50
    date_style: str = "numeric"  # "numeric" dd/mm/yyyy | "dashes" dd-mm-yyyy | "dots" | "words"
    customer_vat_id: str | None = None
    # What the totals lines print instead of the computed value (a mistake on the invoice).
    printed_total_incl: Decimal | None = None
    extra_lines: tuple[str, ...] = field(default=())
    # Labels printed instead of the language's usual ones (an unusual template).
    label_overrides: tuple[tuple[str, str], ...] = ()

    @property
    def total_excl(self) -> Decimal:
        return sum((q * p for _, q, p in self.items), Decimal("0"))

    @property
    def vat(self) -> Decimal:
        return (self.total_excl * self.vat_rate / 100).quantize(Decimal("0.01"))

    @property
    def total_incl(self) -> Decimal:
        return self.printed_total_incl if self.printed_total_incl is not None else self.total_excl + self.vat


def money(value: Decimal, style: str) -> str:
    whole, cents = f"{value:.2f}".split(".")
    groups = f"{int(whole):,}"
    if style == "en":
        return f"{groups}.{cents}"
    if style == "be":
        return f"{groups.replace(',', ' ')},{cents} €"
    dotted = f"{groups.replace(',', '.')},{cents}"
    return f"€ {dotted}" if style == "nl" else f"{dotted} EUR"


def printed_date(value: date, spec: InvoiceSpec) -> str:
    if spec.date_style == "words":
        month = MONTHS[spec.language][value.month - 1]
        if spec.language == "en":
            return f"{month} {value.day}, {value.year}"
        return f"{value.day} {month} {value.year}"
    separator = {"numeric": "/", "dashes": "-", "dots": "."}[spec.date_style]
    return value.strftime(f"%d{separator}%m{separator}%Y")


LABELS = {
    "fr": {
        "title": "FACTURE",
        "number": "Facture n°",
        "issued": "Date de facture",
        "due": "Date d'échéance",
        "customer": "Facturé à :",
        "head": ("Description", "Qté", "Prix unit.", "Montant"),
        "excl": "Total HT",
        "vat": "TVA {rate} %",
        "incl": "Total TTC",
        "pay": "Paiement par virement sur IBAN {iban}",
    },
    "nl": {
        "title": "FACTUUR",
        "number": "Factuurnummer",
        "issued": "Factuurdatum",
        "due": "Vervaldatum",
        "customer": "Klant:",
        "head": ("Omschrijving", "Aantal", "Eenheidsprijs", "Bedrag"),
        "excl": "Totaal excl. BTW",
        "vat": "BTW {rate}%",
        "incl": "Te betalen",
        "pay": "Gelieve te betalen op rekening IBAN {iban}",
    },
    "en": {
        "title": "INVOICE",
        "number": "Invoice No.",
        "issued": "Invoice Date",
        "due": "Due Date",
        "customer": "Bill to:",
        "head": ("Description", "Qty", "Unit price", "Amount"),
        "excl": "Subtotal",
        "vat": "VAT {rate}%",
        "incl": "Total due",
        "pay": "Please pay by bank transfer to IBAN {iban}",
    },
}


def _font_dir() -> Path:
    for folder in FONT_DIRS:
        if (folder / "DejaVuSans.ttf").exists():
            return folder
    raise FileNotFoundError("DejaVuSans.ttf is needed to write invoices with € and accents (fonts-dejavu)")


def invoice_pdf(spec: InvoiceSpec) -> bytes:
    """The invoice as a one-page A4 PDF with a text layer."""
    labels = {**LABELS[spec.language], **dict(spec.label_overrides)}
    pdf = FPDF(format="A4", unit="mm")
    pdf.set_auto_page_break(False)
    pdf.add_page()
    fonts = _font_dir()
    pdf.add_font("DejaVu", "", str(fonts / "DejaVuSans.ttf"))
    pdf.add_font("DejaVu", "B", str(fonts / "DejaVuSans-Bold.ttf"))
    rate = f"{spec.vat_rate:g}".replace(".", ",") if spec.language != "en" else f"{spec.vat_rate:g}"

    def write(x: float, y: float, text: str, bold: bool = False, right: bool = False) -> None:
        pdf.set_font("DejaVu", "B" if bold else "", 10)
        pdf.text(x - pdf.get_string_width(text) if right else x, y, text)

    y = 20.0
    write(18, y, spec.supplier, bold=True)
    for line in (*spec.supplier_lines, spec.supplier_vat_line):
        y += 5.5
        write(18, y, line)
    customer_x, customer_y = (120.0, 20.0) if spec.layout == "columns" else (18.0, y + 50)
    write(customer_x, customer_y, labels["customer"], bold=True)
    for offset, line in enumerate((*spec.customer_lines, *filter(None, [spec.customer_vat_id])), start=1):
        write(customer_x, customer_y + 5.5 * offset, line)
    y += 12
    write(18, y, labels["title"], bold=True)
    meta = (
        (labels["number"], spec.number),
        (labels["issued"], printed_date(spec.issued, spec)),
        (labels["due"], printed_date(spec.due, spec)),
    )
    for label, value in meta:
        y += 5.5
        write(18, y, f"{label} : {value}" if spec.language == "fr" else f"{label}: {value}")
    y = max(y, customer_y + 5.5 * (len(spec.customer_lines) + 1)) + 14
    columns = (18.0, 100.0, 150.0, 190.0)
    for index, head in enumerate(labels["head"]):
        write(columns[index], y, head, bold=True, right=index >= 2)
    for description, quantity, price in spec.items:
        y += 6
        write(columns[0], y, description)
        write(columns[1], y, str(quantity))
        write(columns[2], y, money(price, spec.amount_style), right=True)
        write(columns[3], y, money(quantity * price, spec.amount_style), right=True)
    y += 12
    for label, value, bold in (
        (labels["excl"], spec.total_excl, False),
        (labels["vat"].format(rate=rate), spec.vat, False),
        (labels["incl"], spec.total_incl, True),
    ):
        write(110, y, label, bold=bold)
        write(190, y, money(value, spec.amount_style), bold=bold, right=True)
        y += 6
    y += 8
    write(18, y, labels["pay"].format(iban=spec.iban))
    for line in spec.extra_lines:
        y += 6
        write(18, y, line)
    return bytes(pdf.output())


def degraded_scan(pdf: bytes, seed: int, angle: float = 1.5, dpi: int = 150) -> bytes:
    """The PDF's first page as a PNG a cheap scanner would make: rotated, speckled, blurred."""
    document = pypdfium2.PdfDocument(pdf)
    try:
        page = document[0].render(scale=dpi / 72).to_pil().convert("L")
    finally:
        document.close()
    rng = random.Random(seed)
    page = page.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=255)
    draw = ImageDraw.Draw(page)
    for _ in range(page.width * page.height // 400):
        x, y = rng.randrange(page.width), rng.randrange(page.height)
        size = rng.choice((0, 0, 1))
        draw.ellipse((x, y, x + size, y + size), fill=rng.randrange(40, 140))
    page = page.filter(ImageFilter.GaussianBlur(0.7))
    out = io.BytesIO()
    page.save(out, format="PNG")
    return out.getvalue()


def scanned_pdf(png: bytes) -> bytes:
    """A PDF whose only page is the image: no text layer, as a scanner's PDF."""
    pdf = FPDF(format="A4", unit="mm")
    pdf.add_page()
    pdf.image(io.BytesIO(png), x=0, y=0, w=210, h=297)
    return bytes(pdf.output())


CHECKED_IBAN_BE = iban_with_check_digits("BE", "539007547034")

SPECS: dict[str, InvoiceSpec] = {
    # Dutch, a Flemish plumber, `€ 1.512,50` amounts, dates in words, customer in a right column.
    "nl_loodgieter": InvoiceSpec(
        language="nl",
        supplier="Loodgieterij Janssens BV",
        supplier_lines=("Kerkstraat 118", "2000 Antwerpen"),
        supplier_vat_line="BTW BE 0712.345.678",
        supplier_vat_id="BE 0712.345.678",
        customer_lines=("VME Residentie Zonnebloem", "Lange Lozanastraat 22", "2018 Antwerpen"),
        number="2025/0087",
        issued=date(2025, 2, 3),
        due=date(2025, 3, 5),
        items=(
            ("Herstelling lek kelder", 1, Decimal("1450.00")),
            ("Vervanging afvoerbuis PVC", 3, Decimal("225.00")),
            ("Verplaatsingskosten", 1, Decimal("75.00")),
        ),
        vat_rate=Decimal("21"),
        iban=CHECKED_IBAN_BE,
        amount_style="nl",
        date_style="words",
    ),
    # French supplier (FR VAT id), 20 %, stacked layout, customer with its own Belgian VAT id.
    "fr_ascenseurs": InvoiceSpec(
        language="fr",
        supplier="Ascenseurs Lemaire SAS",
        supplier_lines=("12 rue des Forges", "59000 Lille, France"),
        supplier_vat_line="N° TVA intracommunautaire FR 32 412345678",
        supplier_vat_id="FR 32 412345678",
        customer_lines=("ACP Résidence Les Lilas", "Rue Royale 210", "1000 Bruxelles"),
        customer_vat_id="N° entreprise client : BE 0898.765.432",
        number="FA-2025-00318",
        issued=date(2025, 4, 7),
        due=date(2025, 5, 7),
        items=(
            ("Contrat d'entretien ascenseur T2", 1, Decimal("2400.00")),
            ("Remplacement bouton palier", 4, Decimal("195.00")),
        ),
        vat_rate=Decimal("20"),
        iban=iban_with_check_digits("FR", "30006000011234567890189"),
        layout="stacked",
        amount_style="eur",
        date_style="dashes",
    ),
    # English layout of a Brussels cleaning company, `1,512.50` amounts, `March 14, 2025` dates.
    "en_cleaning": InvoiceSpec(
        language="en",
        supplier="Brightline Cleaning Ltd",
        supplier_lines=("Avenue Louise 331", "1050 Brussels"),
        supplier_vat_line="VAT BE 0623.456.789",
        supplier_vat_id="BE 0623.456.789",
        customer_lines=(
            "Parkview Co-ownership",
            "c/o Gestimmo SRL",
            "Chaussée de Waterloo 88",
            "1060 Brussels",
        ),
        number="INV-2025-117",
        issued=date(2025, 3, 14),
        due=date(2025, 4, 13),
        items=(
            ("Common areas cleaning, March", 1, Decimal("1650.00")),
            ("Window cleaning, lobby", 2, Decimal("165.00")),
        ),
        vat_rate=Decimal("21"),
        iban=iban_with_check_digits("BE", "068999999950"),
        amount_style="en",
        date_style="words",
    ),
    # Dutch, 6 % renovation rate, enterprise number without `BE`, dates with dots.
    "nl_schilder": InvoiceSpec(
        language="nl",
        supplier="Schilderwerken De Smet CommV",
        supplier_lines=("Gentsesteenweg 45", "9300 Aalst", "Tel. 053 21 43 65"),
        supplier_vat_line="ondernemingsnummer 0834.567.890",
        supplier_vat_id="BE 0834.567.890",
        customer_lines=("VME Gebouw De Linde", "Stationsplein 3", "9300 Aalst"),
        number="F25-0412",
        issued=date(2025, 6, 2),
        due=date(2025, 7, 2),
        items=(("Schilderwerken traphal", 1, Decimal("3200.00")), ("Grondverf", 12, Decimal("18.50"))),
        vat_rate=Decimal("6"),
        iban=iban_with_check_digits("BE", "001234567890"),
        amount_style="be",
        date_style="dots",
    ),
}


# A template the rules know less well: the number labelled `Réf. dossier`, the due date after
# `Paiement au plus tard le`, no VAT id printed. The rules leave those out; the model may try.
SPARSE = replace(
    SPECS["fr_ascenseurs"],
    supplier_vat_line="Tél. 03 20 12 34 56",
    customer_vat_id=None,
    label_overrides=(("number", "Réf. dossier"), ("due", "Paiement au plus tard le")),
    date_style="words",
)


def with_bad_iban(spec: InvoiceSpec) -> InvoiceSpec:
    """The same invoice with one IBAN digit wrong (a typo the checksum catches)."""
    digits = list(spec.iban)
    last = len(digits) - 1
    digits[last] = str((int(digits[last]) + 1) % 10)
    return replace(spec, iban="".join(digits))


def with_wrong_total(spec: InvoiceSpec, difference: Decimal = Decimal("10.00")) -> InvoiceSpec:
    """The same invoice whose total to pay does not add up (excl. + VAT + `difference`)."""
    return replace(spec, printed_total_incl=spec.total_excl + spec.vat + difference)
