"""Street addresses in Chinese and English text: the part of an address that leads to a door.

Chinese: a road and its number (建国路88号), or a residential compound with a building, unit or
room (阳光花园3栋), then whatever of 院, building (3号楼, 5栋, B座), unit (2单元), floor (12层)
and room (501室) follows; the larger units before it (province, city, district, town:
北京市朝阳区) are part of the span when they are written. A place without a door (北京市朝阳区,
建国路) is not an address here: it names thousands of people.

English: a house number, a street name and a street type (221 Baker Street, 1600 Pennsylvania
Avenue NW), then an apartment or suite, then ", City, ST 12345" when written.

Where an address starts: Chinese has no spaces, so a road's name could swallow the words before
it (住在建国路); a run of address characters starts after punctuation, a non-Chinese character
or one of the words that lead into an address (在, 住, 于, 到, 址, ...), never inside them, and
then drops whole dictionary words before it that are no place (联系人建设路12号 -> 建设路12号).
Matching runs on the folded text (`pii.fold`), so full-width digits count as digits.
"""

from __future__ import annotations

import functools
import re
from typing import Iterator

PROVINCES = ("北京", "天津", "上海", "重庆", "河北", "山西", "辽宁", "吉林", "黑龙江", "江苏", "浙江", "安徽", "福建",
             "江西", "山东", "河南", "湖北", "湖南", "广东", "海南", "四川", "贵州", "云南", "陕西", "甘肃", "青海",
             "台湾", "内蒙古", "广西", "西藏", "宁夏", "新疆", "香港", "澳门")
# Characters that end the words leading into an address (住在, 位于, 寄到, 地址, 来自, 我家): an
# address's own characters start after them. Rare inside the names of roads and districts.
LEAD_CHARS = "在住于到至址是为的自我你他她们寄送往从向给说"

_NAME = rf"(?:(?![{LEAD_CHARS}])[\u4e00-\u9fff])"  # a character of a place or road name
_PROVINCE = rf"(?:(?:{'|'.join(PROVINCES)})(?:省|市|壮族自治区|回族自治区|维吾尔自治区|自治区|特别行政区)?)"
_CITY = rf"(?:{_NAME}{{1,6}}?(?:市|自治州|地区|盟))"
_DISTRICT = rf"(?:{_NAME}{{1,6}}?(?:区|县|旗|市))"
_TOWN = rf"(?:{_NAME}{{1,6}}?(?:街道|镇|乡))"
_ADMIN = rf"(?:{_PROVINCE}?{_CITY}?{_DISTRICT}?{_TOWN}?)"
_NUM = r"\d{1,5}"
_BUILDING = rf"(?:[A-Z]?{_NUM}[A-Z]?(?:号楼|号院|栋|幢|座|楼)|[A-Z]座)"
_PLACE_IN = rf"(?:{_NAME}{{2,10}}?(?:广场|大厦|中心|大楼|花园|小区|公寓|家园|苑))"  # 华星时代广场 after the door
_AFTER_DOOR = rf"(?:院)?{_PLACE_IN}?(?:{_BUILDING})?(?:{_NUM}单元)?(?:{_NUM}层)?(?:{_NUM}(?:室|房|号)?)?"
_ROAD = rf"(?:{_NAME}|\d){{1,8}}?(?:大街|大道|路|街|巷|胡同|弄)"
_ROAD_DOOR = rf"{_ROAD}{_NUM}(?:-{_NUM})?(?:号|弄)"
_COMPOUND = rf"{_NAME}{{2,8}}?(?:小区|花园|公寓|大厦|家园|新村|社区|公馆|苑|园|城|里)"
_COMPOUND_DOOR = rf"{_COMPOUND}(?=[A-Z0-9])(?:{_BUILDING}|{_NUM}单元|{_NUM}(?:室|房))"

ADMIN_PREFIX = re.compile(_ADMIN)  # the region part of an address: what a pseudonym keeps
ZH_ADDRESS = re.compile(rf"{_ADMIN}(?:{_ROAD_DOOR}|{_COMPOUND_DOOR}){_AFTER_DOOR}(?![0-9])")

_STREET_TYPES = ("Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Way|Terrace|"
                 "Circle|Parkway|Pkwy|Highway|Hwy|Square|Sq")
EN_ADDRESS = re.compile(
    rf"\b[1-9]\d{{0,5}}(?: [NSEW]\.?)?(?: (?:[A-Z][a-z]+|\d{{1,3}}(?:st|nd|rd|th))){{1,4}} (?:{_STREET_TYPES})\b"
    r"(?: (?:NW|NE|SW|SE)\b)?"
    r"(?:,? (?:Apt|Apartment|Suite|Ste|Unit|Room|Flat)\.? ?#?[0-9]{1,5}[A-Z]?\b|,? #[0-9]{1,5}[A-Z]?\b)?"
    r"(?:, [A-Z][a-z]+(?: [A-Z][a-z]+){0,2},? [A-Z]{2} \d{5}(?:-\d{4})?\b)?", re.A)


_ADMIN_END = "省市区县旗镇乡村盟州"
_SUFFIXES = {"大街", "大道", "路", "街", "巷", "胡同", "弄", "号"}  # a road's name is never just these


@functools.lru_cache(maxsize=1)
def _places() -> frozenset[str]:
    from candorlm.privacy.zh_lexicon import place_words

    return frozenset(place_words()) | frozenset(PROVINCES)


@functools.lru_cache(maxsize=1)
def _jieba():  # noqa: ANN202 (the jieba module)
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def _trimmed_start(text: str, start: int, end: int) -> int:
    """Where the address in text[start:end] really starts: words before it that are no place
    (联系人建设路12号, 我家建国路8号) are dropped, one jieba word at a time, while the rest is
    still a whole address."""
    places = _places()
    jieba = _jieba()
    words = jieba.lcut(text[start:end], HMM=False)
    for word, following in zip(words, words[1:]):
        if (len(word) < 2 or not jieba.dt.FREQ.get(word) or word in places or word[-1] in _ADMIN_END
                or following in _SUFFIXES or not ZH_ADDRESS.fullmatch(text, start + len(word), end)):
            break
        start += len(word)
    return start


def find_addresses(folded: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each street address in (folded) text."""
    if re.search(r"\d", folded) is None:
        return
    if re.search("[路街巷弄同道苑园寓厦村馆栋幢座楼室元]", folded):
        for m in ZH_ADDRESS.finditer(folded):
            yield _trimmed_start(folded, m.start(), m.end()), m.end()
    if re.search("[A-Z][a-z]", folded):
        for m in EN_ADDRESS.finditer(folded):
            yield m.span()
