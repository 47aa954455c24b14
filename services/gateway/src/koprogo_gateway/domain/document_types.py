"""What a task's document is, sniffed from its bytes (never from the caller's name or header).

Accepted: PDF, PNG, JPEG, TIFF, UTF-8 text (text/plain) and CSV (text/csv: text whose lines split
into the same number (≥ 2) of columns with one delimiter, or text named `*.csv`). Everything else
(an executable renamed `.pdf`, an archive, unknown binary) is refused with what was detected, so
a node is never handed bytes its engine was not made for. Pure rules.
"""

from __future__ import annotations

import csv
import io

from koprogo_gateway.domain.errors import UnsupportedDocumentError

PDF = "application/pdf"
PNG = "image/png"
JPEG = "image/jpeg"
TIFF = "image/tiff"
TEXT = "text/plain"
CSV = "text/csv"
ACCEPTED = (PDF, PNG, JPEG, TIFF, TEXT, CSV)
IMAGES = frozenset({PNG, JPEG, TIFF})

# Magic numbers of what is accepted, then of what is named when refused.
_ACCEPTED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", PNG),
    (b"\xff\xd8\xff", JPEG),
    (b"II*\x00", TIFF),
    (b"MM\x00*", TIFF),
)
_REFUSED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"MZ", "a Windows executable (MZ)"),
    (b"\x7fELF", "a Linux executable (ELF)"),
    (b"\xcf\xfa\xed\xfe", "a macOS executable (Mach-O)"),
    (b"\xce\xfa\xed\xfe", "a macOS executable (Mach-O)"),
    (b"\xca\xfe\xba\xbe", "a macOS or Java binary"),
    (b"#!", "a script"),
    (b"PK\x03\x04", "a zip archive (or an Office document)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"GIF8", "a GIF image"),
    (b"\xd0\xcf\x11\xe0", "an old Office document (OLE)"),
)
# Controls that do not occur in text (tab, newlines, form feed and escape aside).
_NOT_TEXT = frozenset(range(32)) - {9, 10, 11, 12, 13, 27}
_CSV_DELIMITERS = ",;\t|"
_CSV_SAMPLE_LINES = 50
_UTF8_BOM = b"\xef\xbb\xbf"


def sniff_content_type(data: bytes, filename: str | None = None) -> str:
    """The document's media type, from its bytes; UnsupportedDocumentError saying what it looks like."""
    if not data:
        raise UnsupportedDocumentError(f"the document is empty; accepted: {accepted_list()}")
    for magic, what in _REFUSED_MAGIC:
        if data.startswith(magic):
            raise _refused(what, filename)
    # PDF readers accept a header after leading whitespace (some generators write a newline first).
    if data.lstrip(b" \t\r\n").startswith(b"%PDF-"):
        return PDF
    for magic, media in _ACCEPTED_MAGIC:
        if data.startswith(magic):
            return media
    text = _as_text(data)
    if text is None:
        if _legacy_text(data):
            raise _refused(
                "text in another encoding than UTF-8 (Windows-1252 or Latin-1?); save it as UTF-8", filename
            )
        raise _refused("binary data of an unknown type", filename)
    if (filename or "").lower().endswith(".csv") or looks_like_csv(text):
        return CSV
    return TEXT


def looks_like_csv(text: str) -> bool:
    """At least two lines that split, with one delimiter, into the same number (≥ 2) of columns."""
    lines = [line for line in text.splitlines() if line.strip()][:_CSV_SAMPLE_LINES]
    if len(lines) < 2:
        return False
    sample = "\n".join(lines)
    for delimiter in _CSV_DELIMITERS:
        if delimiter not in lines[0]:
            continue
        try:
            widths = {len(row) for row in csv.reader(io.StringIO(sample), delimiter=delimiter)}
        except csv.Error:
            continue
        if len(widths) == 1 and widths.pop() >= 2:
            return True
    return False


def decode_text(data: bytes) -> str:
    """A text document's characters (its UTF-8 BOM dropped)."""
    return data.removeprefix(_UTF8_BOM).decode("utf-8")


def accepted_list(media_types: tuple[str, ...] | frozenset[str] = ACCEPTED) -> str:
    return ", ".join(sorted(media_types))


def _as_text(data: bytes) -> str | None:
    try:
        text = decode_text(data)
    except UnicodeDecodeError:
        return None
    if any(ord(ch) in _NOT_TEXT for ch in text):
        return None  # NULs and other controls: binary that happens to be valid UTF-8
    return text


def _legacy_text(data: bytes) -> bool:
    """Text an older Windows or Mac editor wrote: bytes over 127, but no controls (cp1252 has no NUL)."""
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        return False
    return not any(ord(ch) in _NOT_TEXT for ch in text)


def _refused(what: str, filename: str | None) -> UnsupportedDocumentError:
    named = f" (named {filename!r})" if filename else ""
    return UnsupportedDocumentError(
        f"the document{named} is {what}, detected from its bytes; accepted: {accepted_list()}",
        extra={"detected": what, "accepted": list(ACCEPTED)},
    )
