"""Checks that tell a real identifier from a look-alike, and the text fold every recognizer
matches on: resident ID check digits and birth dates, the Luhn check and card networks,
service numbers (hotlines) that are not anyone's personal phone.
"""

from __future__ import annotations

import calendar
import functools
import re
import unicodedata

# ---------------------------------------------------------------- normalization


@functools.lru_cache(maxsize=1)
def _fold_table() -> dict[int, str]:
    # Every character whose NFKC form is one different character: full-width digits and
    # letters, circled and mathematical digits, compatibility ideographs. Characters whose
    # NFKC form is longer (㎏ -> kg) are left alone, so the fold never changes the length.
    ranges = [range(0x80, 0xD800), range(0xF900, 0x10000), range(0x1D400, 0x1D800), range(0x1F100, 0x1F200)]
    table = {}
    for cp in (cp for r in ranges for cp in r):
        folded = unicodedata.normalize("NFKC", chr(cp))
        if len(folded) == 1 and folded != chr(cp):
            table[cp] = folded
    return table


def fold(text: str) -> str:
    """NFKC, one character at a time, keeping the length (and so every offset) unchanged."""
    return text if text.isascii() else text.translate(_fold_table())


# ---------------------------------------------------------------- checksums and validity


_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
PROVINCE_CODES = frozenset({11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46,
                            50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82})


def id_check_digit(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character of an 18-digit resident ID."""
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS))
    return "10X98765432"[total % 11]


def _valid_date(year: int, month: int, day: int) -> bool:
    return 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]


def valid_cn_id(value: str) -> bool:
    """An 18-digit resident ID with a real province, a real birth date and the right check digit,
    or a 15-digit legacy one with a real province and birth date (it has no check digit)."""
    value = re.sub(r"[ -]", "", value).upper()
    if len(value) == 18:
        if not value[:17].isdigit() or int(value[:2]) not in PROVINCE_CODES:
            return False
        year = int(value[6:10])
        return 1900 <= year <= 2099 and _valid_date(year, int(value[10:12]), int(value[12:14])) \
            and id_check_digit(value[:17]) == value[17]
    if len(value) == 15 and value.isdigit():
        return int(value[:2]) in PROVINCE_CODES and _valid_date(1900 + int(value[6:8]), int(value[8:10]),
                                                                 int(value[10:12]))
    return False


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_network(digits: str) -> str | None:
    """The card network a number's leading digits belong to, or None."""
    n = len(digits)
    if digits.startswith("62") and 16 <= n <= 19:
        return "unionpay"
    if digits[0] == "4" and n in (13, 16, 19):
        return "visa"
    if (51 <= int(digits[:2]) <= 55 or 2221 <= int(digits[:4]) <= 2720) and n == 16:
        return "mastercard"
    if digits[:2] in ("34", "37") and n == 15:
        return "amex"
    if 3528 <= int(digits[:4]) <= 3589 and 16 <= n <= 19:
        return "jcb"
    if (digits.startswith(("6011", "64", "65"))) and 16 <= n <= 19:
        return "discover"
    if digits[:2] in ("30", "36", "38", "39") and 14 <= n <= 19:
        return "diners"
    if digits.startswith("60") and 16 <= n <= 19:  # Chinese bank debit cards (6013 Bank of China, ...)
        return "bank"
    return None


def valid_card(value: str) -> bool:
    digits = re.sub(r"[ -]", "", value)
    return digits.isdigit() and 13 <= len(digits) <= 19 and card_network(digits) is not None and luhn_ok(digits)


# ---------------------------------------------------------------- service numbers

# Company and public hotlines: 400/800 numbers (10 digits), 95xxx (5-8 digits: 95588, 95105-888)
# and 12xxx (5 digits: 12306, 12345), carriers' 100xx. They reach a switchboard, not a person.
_SERVICE = re.compile(r"(?:400|800)\d{7}|95\d{3,6}|12\d{3}|100\d\d")


def service_number(value: str) -> bool:
    """True for a hotline (400-800-8888, 95588, 12306), written with or without +86 and separators."""
    digits = re.sub(r"\D", "", value)
    if digits.startswith("0086"):
        digits = digits[4:]
    elif digits.startswith("86") and value.lstrip().startswith("+"):
        digits = digits[2:]
    return _SERVICE.fullmatch(digits) is not None
