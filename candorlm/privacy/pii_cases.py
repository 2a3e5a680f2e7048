"""The labelled set's harder sentences (issue 15): names right before verbs and next to places,
places that start like names, street addresses, service hotlines, landlines with parentheses and
extensions, full-width numbers.

Every sentence comes from a template below, filled from lists written out here: real places
(districts, landmarks and neighbourhoods of Chinese cities, many of which start with a surname
character: 王府井, 石景山, 陆家嘴), real road names, real hotlines (95588, 12306), and names drawn
like the fakes (common surname + given-name characters). The lists are independent of the name
model's own word lists (`zh_lexicon`, fitted on People's Daily and jieba), so a place found here
is not found because it was looked up. `cases(rng, n)` is deterministic for a seeded rng.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from typing import Callable

from candorlm.privacy import fakes

@dataclass
class Sample:
    text: str
    entities: list[tuple[str, int, int]] = field(default_factory=list)  # (type, start, end)
    lookalikes: list[tuple[int, int]] = field(default_factory=list)  # spans that must not be detected


class Builder:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pos = 0
        self.sample = Sample("")

    def text(self, s: str) -> "Builder":
        self.parts.append(s)
        self.pos += len(s)
        return self

    def value(self, type_: str | None, s: str) -> "Builder":
        if type_ is None:
            self.sample.lookalikes.append((self.pos, self.pos + len(s)))
        else:
            self.sample.entities.append((type_, self.pos, self.pos + len(s)))
        return self.text(s)

    def build(self) -> Sample:
        self.sample.text = "".join(self.parts)
        return self.sample


# Landmarks, districts and neighbourhoods; the first ones start with a surname character.
PLACES = ("王府井", "石景山", "陆家嘴", "徐家汇", "张江", "金桥", "罗湖", "武昌", "秦淮", "钱塘", "宝安", "潘家园",
          "吴中", "江宁", "余杭", "萧山", "黄浦", "杨浦", "闵行", "宋庄", "龙华", "高新区", "西单", "中关村", "望京",
          "三里屯", "五道口", "南锣鼓巷", "天安门", "颐和园", "前门", "国贸", "亦庄", "回龙观", "天通苑", "上地",
          "双井", "静安寺", "外滩", "五角场", "虹桥", "南山", "福田", "天河", "越秀", "海珠", "汉口", "雨花台",
          "玄武", "西湖", "拱墅", "鼓浪屿", "春熙路", "宽窄巷子", "解放碑", "洪崖洞")
CITIES = (("北京市", ("朝阳区", "海淀区", "东城区", "西城区", "丰台区", "石景山区")),
          ("上海市", ("浦东新区", "徐汇区", "静安区", "黄浦区", "杨浦区", "闵行区")),
          ("广东省广州市", ("天河区", "越秀区", "海珠区", "白云区")), ("广东省深圳市", ("南山区", "福田区", "罗湖区", "宝安区")),
          ("浙江省杭州市", ("西湖区", "拱墅区", "余杭区", "萧山区")), ("江苏省南京市", ("玄武区", "秦淮区", "鼓楼区", "江宁区")),
          ("四川省成都市", ("武侯区", "锦江区", "青羊区")), ("湖北省武汉市", ("武昌区", "江汉区", "洪山区")),
          ("天津市", ("和平区", "南开区", "河西区")), ("重庆市", ("渝中区", "江北区", "沙坪坝区")))
ROADS = ("建国路", "长安街", "中山路", "人民路", "解放路", "南京东路", "淮海中路", "延安西路", "世纪大道", "科技园路",
         "文三路", "天府大道", "珞喻路", "中关村南大街", "复兴门外大街", "东三环北路", "学院路", "滨江大道", "友谊路",
         "黄河路", "长江路", "新华街", "光华路", "金融街", "和平里", "东直门南大街")
COMPOUNDS = ("阳光花园", "翠湖小区", "金色家园", "万科城市花园", "碧桂园", "幸福里小区", "龙湖公馆", "富力新村",
             "世纪公寓", "华润大厦")
VERBS = ("住在", "说", "去了", "在", "到", "给", "对", "和", "是", "要", "把", "被", "让", "跟", "也", "都", "就", "还",
         "会", "想", "已经", "刚刚", "告诉", "认为", "表示", "问", "看见", "从")
HOTLINES = ("95588", "95533", "95599", "95555", "95566", "95511", "95518", "12306", "12345", "12315", "12366",
            "12123", "10086", "10010", "10000")
EN_STREETS = ("Main", "Oak", "Maple", "Baker", "Elm", "Park", "Washington", "Lincoln", "Sunset", "Highland", "Church",
              "Market", "Mission", "Broadway Market", "Pennsylvania", "Lake Shore")
EN_TYPES = ("Street", "Avenue", "Road", "Boulevard", "Lane", "Drive", "Court", "Place", "Way", "St", "Ave", "Rd")
EN_CITIES = ("Springfield, IL 62701", "Austin, TX 78701", "San Francisco, CA 94103", "Portland, OR 97205",
             "Boston, MA 02116", "Chicago, IL 60611")


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _name(rng: random.Random) -> str:
    return fakes.fake_person(rng, "王" * rng.choice([2, 3, 3]))


def zh_address(rng: random.Random) -> str:
    """A Chinese street address, with or without the larger units, in the shapes people write."""
    city, districts = rng.choice(CITIES)
    form = rng.random()
    region = city + rng.choice(districts) if form < 0.5 else rng.choice(districts) if form < 0.65 else ""
    if rng.random() < 0.75:
        door = f"{rng.choice(ROADS)}{rng.randint(1, 999)}号" + rng.choice(["", "", "院"])
        tail = rng.choice(["", f"{rng.randint(1, 30)}号楼", f"{rng.randint(1, 30)}号楼{rng.randint(1, 6)}单元"
                                                             f"{rng.randint(1, 30)}{rng.randint(1, 4):02d}室",
                           f"{rng.choice('ABCD')}座{rng.randint(1, 30)}{rng.randint(1, 20):02d}室"])
    else:
        door = rng.choice(COMPOUNDS)
        tail = rng.choice([f"{rng.randint(1, 30)}栋{rng.randint(1, 30)}{rng.randint(1, 4):02d}室",
                           f"{rng.randint(1, 30)}号楼{rng.randint(1, 6)}单元{rng.randint(1, 30)}{rng.randint(1, 4):02d}室",
                           f"{rng.randint(1, 20)}幢{rng.randint(1, 6)}单元"])
    return region + door + tail


def en_address(rng: random.Random) -> str:
    out = f"{rng.randint(1, 9999)} {rng.choice(EN_STREETS)} {rng.choice(EN_TYPES)}"
    if rng.random() < 0.3:
        out += rng.choice([", Apt ", " Suite ", ", Unit "]) + str(rng.randint(1, 999))
    if rng.random() < 0.5:
        out += ", " + rng.choice(EN_CITIES)
    return out


def hotline(rng: random.Random) -> str:
    form = rng.random()
    if form < 0.35:
        return f"400-{rng.randint(100, 999)}-{_digits(rng, 4)}"
    if form < 0.5:
        return f"4008-{_digits(rng, 3)}-{_digits(rng, 3)}"
    if form < 0.65:
        return f"800-{rng.randint(100, 999)}-{_digits(rng, 4)}"
    return rng.choice(HOTLINES)


def _mobile(rng: random.Random) -> str:
    return f"1{rng.choice('3456789')}{_digits(rng, 9)}"


# Each template fills one Builder; (how many sentences of it per 100).
_TEMPLATES: list[tuple[int, Callable[[random.Random, Builder], object]]] = [
    (18, lambda r, b: b.text(r.choice(["", "昨天", "同事", "经理", "据说"])).value("PERSON", _name(r))
     .text(r.choice(VERBS) + r.choice(["这里。", "北京。", "我们一声。", "开会。", "这件事很满意。"]))),
    (10, lambda r, b: b.value("PERSON", _name(r)).text(r.choice(["住在", "去了", "到了", "在"]))
     .value(None, r.choice(PLACES)).text(r.choice(["。", "附近。", "上班。"]))),
    (6, lambda r, b: b.text(r.choice(["在", "从"])).value(None, r.choice(PLACES))
     .text(r.choice(["遇到了", "回来的", "碰见"])).value("PERSON", _name(r)).text("。")),
    (10, lambda r, b: b.text(r.choice(["周末去", "我们在", "他家住", "游客挤满了", ""])).value(None, r.choice(PLACES))
     .text(r.choice(["逛街。", "大街上人很多。", "站下车。", "。", "一带。"]))),
    (20, lambda r, b: b.text(r.choice(["地址：", "寄到", "收货地址 ", "家住", "送到", "他住在", "公司位于", "请寄往"]))
     .value("ADDRESS", zh_address(r)).text(r.choice(["。", "，谢谢。", "，电话联系。", ""]))),
    (10, lambda r, b: b.text(r.choice(["Ship to ", "She lives at ", "Address: ", "Send it to "]))
     .value("ADDRESS", en_address(r)).text(r.choice([".", " today.", " please."]))),
    (12, lambda r, b: b.text(r.choice(["客服电话", "请拨打", "热线 ", "服务热线：", "Call "])).value(None, hotline(r))
     .text(r.choice(["。", "咨询。", "（工作日）", " for help."]))),
    (6, lambda r, b: b.text("客服").value(None, hotline(r)).text("，或直接打我的手机").value("PHONE", _mobile(r))
     .text("。")),
    (8, lambda r, b: b.text(r.choice(["电话", "办公室 ", "Tel: "])).value(
        "PHONE", f"({r.choice(['010', '021', '0755', '0571'])}) {r.randint(2, 8)}{_digits(r, 3)}-{_digits(r, 4)}"
        + r.choice([f" 转 {_digits(r, 3)}", f"转{_digits(r, 3)}", f" ext. {_digits(r, 3)}", ""])).text("。")),
]


def _fixed() -> list[Builder]:
    """The cases the issue reports, verbatim."""
    return [
        Builder().text("办公室电话 ").value("PHONE", "(021) 6234-5678 转 123").text("。"),
        Builder().value("PERSON", "李娜").text("住在北京。"),
        Builder().text("周末去").value(None, "王府井").text("。"),
        Builder().text("我们在").value(None, "王府井大街").text("吃饭。"),
        Builder().text("他住在").value(None, "石景山").text("。"),
        Builder().text("地址：").value("ADDRESS", "北京市朝阳区建国路88号院3号楼2单元501室").text("。"),
        Builder().text("客服热线").value(None, "400-800-8888").text("。"),
        Builder().text("手机").value("PHONE", "１３９１６３６９７９５").text("。"),
    ]


def cases(rng: random.Random, n: int = 360) -> list[Sample]:
    """The issue's cases and `n` sentences from the templates, in template proportions."""
    weights = [w for w, _ in _TEMPLATES]
    out = [b.build() for b in _fixed()]
    for _ in range(n):
        _, fill = rng.choices(_TEMPLATES, weights)[0]
        b = Builder()
        fill(rng, b)
        out.append(b.build())
    return out
