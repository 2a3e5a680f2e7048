"""Fake values that pass the same checks as real ones: resident IDs with a valid check digit,
Luhn-valid card numbers, mobile numbers with a real prefix, names from common surnames.

Each generator takes a `random.Random` and, for pseudonyms, the original value whose shape
(length, separators, script) the fake keeps. The pseudonym operator seeds the generator with
a keyed HMAC of the original, so the same value always maps to the same fake; the labelled
test set seeds it with a counter.
"""

from __future__ import annotations

import functools
import ipaddress
import random
import re
import string

from candorlm.privacy.addresses import ADMIN_PREFIX
from candorlm.privacy.checks import card_network, id_check_digit, luhn_ok
from candorlm.privacy.pii import _CN_PASSPORT, _MOBILE

# Real county-level region codes (province, city, county) of a few cities.
REGION_CODES = ("110101", "110105", "110108", "120101", "130102", "140105", "210102", "220102", "230103", "310101",
                "310104", "310115", "320102", "320505", "330106", "340104", "350203", "360102", "370102", "410105",
                "420106", "430104", "440106", "440305", "450103", "460106", "500103", "510104", "520102", "530102",
                "610113", "620102", "630102", "640104", "650102")
SURNAMES_COMMON = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
GIVEN_CHARS = ("伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚英华玉兰萍红建国文辉力梅鹏飞鑫波斌宇浩凯健俊帆帅旭宁龙林欣晨"
               "阳佳琳雪婷慧颖倩晶琪嘉怡思雨涵子轩睿博志坚海峰春燕丹亮晓东小云亚琴霖诚泽瑞晖新清")
_PLATE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"


@functools.lru_cache(maxsize=1)
def english_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    from faker.providers.person.en_US import Provider

    first = sorted(set(Provider.first_names_male) | set(Provider.first_names_female))
    return tuple(first), tuple(sorted(set(Provider.last_names)))


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _reshape(digits: str, template: str) -> str:
    """Pour digits into the template's digit positions, keeping its separators."""
    it = iter(digits)
    return "".join(next(it) if ch.isdigit() else ch for ch in template)


def fake_cn_id(rng: random.Random, original: str = "") -> str:
    year = rng.randint(1950, 2005)
    month, day = rng.randint(1, 12), rng.randint(1, 28)
    region = rng.choice(REGION_CODES)
    if len(original) == 15:
        return f"{region}{year % 100:02d}{month:02d}{day:02d}{_digits(rng, 3)}"
    body = f"{region}{year:04d}{month:02d}{day:02d}{_digits(rng, 3)}"
    return body + id_check_digit(body)


def fake_phone(rng: random.Random, original: str = "") -> str:
    """Same shape as the original; the country, area or mobile prefix stays, the subscriber's
    digits are drawn anew (the first from 2-8, as local numbers start)."""
    template = original or "13800000000"
    digits = re.sub(r"\D", "", template)
    if _MOBILE.fullmatch(template):
        keep = len(digits) - 8
        return _reshape(digits[:keep] + _digits(rng, 8), template)
    groups = re.findall(r"\d+", template)
    if len(groups) >= 3:
        keep = sum(len(g) for g in groups[:-2])
    elif len(groups) == 2:
        keep = len(groups[0])
    else:  # 0XX or 0XXX area code written without a separator
        keep = 3 if digits[:2] in ("01", "02") else 4
    keep = min(keep, len(digits) - 4)
    return _reshape(digits[:keep] + str(rng.randint(2, 8)) + _digits(rng, len(digits) - keep - 1), template)


def fake_email(rng: random.Random, original: str = "") -> str:
    first, last = english_names()
    return f"{rng.choice(first).lower()}.{rng.choice(last).lower()}{rng.randint(1, 999)}@example.{rng.choice(['com', 'org', 'net'])}"


def fake_card(rng: random.Random, original: str = "") -> str:
    digits = re.sub(r"\D", "", original) if original else ""
    if not digits or card_network(digits) is None:
        digits = rng.choice(["622202", "621700", "622848", "411111", "542418", "601382"]) + "0" * 10
    prefix = digits[:6]
    body = prefix + _digits(rng, len(digits) - 7)
    for check in string.digits:
        if luhn_ok(body + check):
            return _reshape(body + check, original) if original else body + check
    raise AssertionError("unreachable: one of ten check digits passes Luhn")


def fake_ip(rng: random.Random, original: str = "") -> str:
    if ":" in original:
        return str(ipaddress.IPv6Address((0xFD << 120) | rng.getrandbits(120)))
    return f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def fake_url_credentials(rng: random.Random, original: str = "") -> str:
    alphabet = string.ascii_letters + string.digits
    return f"user{rng.randint(1, 9999)}:" + "".join(rng.choice(alphabet) for _ in range(12))


def fake_passport(rng: random.Random, original: str = "") -> str:
    if not original or _CN_PASSPORT.fullmatch(original):
        if original[1:2].isalpha():
            return "E" + rng.choice(_PLATE_LETTERS) + _digits(rng, 7)
        return (original[:1] or "E") + _digits(rng, 8)
    return "".join(rng.choice(string.ascii_uppercase) if ch.isalpha() else rng.choice(string.digits) if ch.isdigit()
                   else ch for ch in original)


def fake_plate(rng: random.Random, original: str = "") -> str:
    if not original:
        return rng.choice("京沪粤苏浙川鄂湘") + rng.choice(_PLATE_LETTERS) + _digits(rng, 5)
    out = list(original[:2])  # province and city letter: a region, not a person
    for ch in original[2:]:
        if ch.isdigit():
            out.append(rng.choice(string.digits))
        elif ch in _PLATE_LETTERS and ch not in "DF":
            out.append(rng.choice(_PLATE_LETTERS))
        else:
            out.append(ch)
    return "".join(out)


def fake_person(rng: random.Random, original: str = "") -> str:
    if original and not re.search(r"[\u4e00-\u9fff]", original):
        first, last = english_names()
        words = original.split()
        return rng.choice(first) if len(words) == 1 else f"{rng.choice(first)} {rng.choice(last)}"
    given = 1 if len(original) == 2 else 2
    return rng.choice(SURNAMES_COMMON) + "".join(rng.choice(GIVEN_CHARS) for _ in range(given))


ROADS = ("建设路", "人民路", "解放路", "中山路", "和平路", "新华路", "长江路", "文化路", "东风路", "胜利路", "青年路",
         "光明路", "朝阳路", "学府路", "滨江大道", "复兴大街", "幸福街", "平安巷")
_STREETS = ("Oak", "Maple", "Cedar", "Elm", "Pine", "Lake", "Hill", "Park", "Washington", "Lincoln", "Jefferson",
            "Madison", "Franklin", "Highland", "Sunset", "Church", "Mill", "River")
_STREET_TYPE = re.compile(r"\b(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Way|"
                          r"Terrace|Circle|Parkway|Pkwy|Highway|Hwy|Square|Sq)\b")


def fake_address(rng: random.Random, original: str = "") -> str:
    """A made-up door in the same district: the province, city and district stay (they name a
    region, not a person), the road, number, building, unit and room are drawn anew, in the
    original's shape (a unit only where it had one)."""
    if original and not re.search(r"[\u4e00-\u9fff]", original):
        m = _STREET_TYPE.search(original)
        tail = original[m.start():] if m else "Street"
        tail = re.sub(r"\d", lambda _: rng.choice(string.digits), tail)
        return f"{rng.randint(1, 9999)} {rng.choice(_STREETS)} {tail}"
    prefix = ADMIN_PREFIX.match(original).group() if original else ""
    out = [prefix, rng.choice(ROADS), f"{rng.randint(1, 999)}号"]
    if not original or re.search("楼|栋|幢|座", original):
        out.append(f"{rng.randint(1, 30)}号楼")
    if "单元" in original:
        out.append(f"{rng.randint(1, 6)}单元")
    if re.search(r"\d(室|房)?$", original) and not original.endswith("号") or not original:
        out.append(f"{rng.randint(1, 30)}{rng.randint(1, 4):02d}室")
    return "".join(out)


FAKERS = {
    "CN_ID": fake_cn_id,
    "PHONE": fake_phone,
    "EMAIL": fake_email,
    "BANK_CARD": fake_card,
    "IP_ADDRESS": fake_ip,
    "ADDRESS": fake_address,
    "URL_CREDENTIALS": fake_url_credentials,
    "PASSPORT": fake_passport,
    "VEHICLE_PLATE": fake_plate,
    "PERSON": fake_person,
}
