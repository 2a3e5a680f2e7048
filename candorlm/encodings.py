"""The encoding of a text file, sniffed from its first 64 KiB: UTF-8 (with or without BOM), UTF-16
and UTF-32 (with a BOM, or without one when the text has ASCII in it: its NUL bytes then fall in
the pattern of one byte order), and GB18030 (a superset of GBK and GB2312). Binary files, and
text in none of these, are a CandorError that says what to do."""

from __future__ import annotations

import codecs
from pathlib import Path

from candorlm.errors import CandorError

_SNIFF_BYTES = 1 << 16


def detect_encoding(path: Path) -> str:
    """The encoding of a text file, or a CandorError if it is binary or undecodable."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):  # before UTF-16: FF FE 00 00 starts with FF FE
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if b"\x00" in head:
        wide = _wide_without_bom(head, whole=len(head) < _SNIFF_BYTES)
        if wide is not None:
            return wide
        raise BinaryFileError(f"{path} looks like a binary file, not text: it has NUL bytes, and read as UTF-16 or "
                              f"UTF-32 (either byte order) it is not text either")
    if _decodes(head, "utf-8"):
        return "utf-8"
    if _decodes(head, "gb18030") and _looks_like_text(head.decode("gb18030", errors="ignore")):
        return "gb18030"
    raise CandorError(
        f"{path} is neither UTF-8 nor GBK/GB18030 text. Convert it to UTF-8 first, for example "
        f"`iconv -f ENCODING -t UTF-8 {path} > out.txt`."
    )


class BinaryFileError(CandorError):
    pass


def _wide_without_bom(head: bytes, whole: bool) -> str | None:
    """UTF-16 or UTF-32, little- or big-endian, of a head with NUL bytes and no byte-order mark:
    the encoding under which it decodes and reads most plausibly as text, if any does. In such
    text every ASCII character (newlines, spaces, digits) carries NULs on one side, so the wrong
    byte order turns them into unassigned or control characters; binary data decodes to NULs
    and controls, or not at all (UTF-16 surrogates out of order, UTF-32 past U+10FFFF, a `whole`
    file cut inside a character)."""
    best: tuple[float, str] | None = None
    for encoding in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
        try:
            text = codecs.getincrementaldecoder(encoding)("strict").decode(head, final=whole)
        except UnicodeDecodeError:
            continue
        score = _plausible(text)
        # Text's NULs come from ASCII (newlines, spaces, digits): with none, this is no such text.
        if score > 0.95 and _has_ascii(text) and (best is None or score > best[0]):
            best = (score, encoding)
    return best[1] if best else None


def _has_ascii(text: str) -> bool:
    return any("\t" <= ch <= "~" for ch in text)


def _decodes(data: bytes, encoding: str) -> bool:
    # The sniffed head may end inside a multi-byte character: decode it as a stream, not final.
    try:
        codecs.getincrementaldecoder(encoding)("strict").decode(data, final=False)
        return True
    except UnicodeDecodeError:
        return False


def _plausible(text: str) -> float:
    """The share of characters that text has: printable ones, newlines and tabs."""
    if not text:
        return 0.0
    return sum(1 for ch in text if ch.isprintable() or ch in "\n\r\t") / len(text)


def _looks_like_text(text: str) -> bool:
    return _plausible(text) > 0.95
