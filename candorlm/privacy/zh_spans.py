"""Candidate name spans of Chinese text and their features, for the name model (`zh_names`).

Every span of 2-8 Chinese characters is a candidate; its features are:

- the span's first, second and last characters and the characters inside it (surnames,
  given-name characters, characters of transliterated foreign names such as 克林顿);
- whether it starts with a common single or compound surname (百家姓: 王, 欧阳, ...);
- the characters and character pairs right before and after it (主席, 同志, 先生, 说, 、);
- jieba's dictionary: whether the span, or the pairs straddling its edges, is a dictionary word
  and with which part-of-speech tag (nr, ns, n, v, ...) and how frequent;
- hashed character pairs at its edges and a hash of the whole span.

Substrings are hashed in O(1) each from prefix arrays, so every table (jieba's dictionary, the
place names, the compound surnames) is looked up for all spans of a text at once with numpy.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

MIN_LEN, MAX_LEN = 2, 8
LENGTHS = tuple(range(MIN_LEN, MAX_LEN + 1))

SURNAMES = (
    "王李张刘陈杨黄吴赵周徐孙马朱胡林郭何高罗郑梁谢宋唐许邓冯韩曹曾彭萧蔡潘田董袁于余叶蒋杜苏魏程吕丁沈任姚卢"
    "傅钟姜崔谭廖范汪陆金石戴贾韦夏邱方侯邹熊孟秦白江阎薛尹段雷黎史龙陶贺顾毛郝龚邵万钱严赖覃洪武莫孔汤向常温"
    "康施文牛樊葛邢安齐易乔伍庞颜倪庄聂章鲁岳翟殷詹申欧耿关兰焦俞左柳甘祝包宁尚符舒阮柯纪梅童凌毕单季裴霍涂成"
    "苗谷盛曲翁冉骆蓝路游辛靳管柴蒙鲍华喻祁蒲房滕屈饶解牟艾尤阳时穆农司卓古吉缪简车项连芦麦褚娄窦戚岑景党宫费"
    "卜冷晏席卫米柏宗瞿桂全佟应臧闵苟邬边卞姬师和仇栾隋商刁沙荣巫寇桑郎甄丛仲虞敖巩明佘池查麻苑迟邝官封谈匡鞠"
    "惠荆乐冀郁胥南班储原栗燕楚鄢劳谌奚皮粟冼蔺楼盘满闻位厉伊仝区郜海阚花权强帅屠豆朴盖练廉禹井祖漆巴丰支卿国"
    "狄平计索宣晋相初门云容敬来扈晁芮都普阙浦戈伏鹿薄邸雍辜羊阿乌母裘亓修邰赫杭况那宿鲜印逯隆茹诸战慕危玉银亢"
    "嵇公哈湛宾戎勾茅利呼居揭干但尉冶斯元束檀衣信展阴昝智幸奉植衡富尧闭由")
COMPOUND_SURNAMES = ("欧阳", "司马", "上官", "诸葛", "东方", "皇甫", "尉迟", "公孙", "慕容", "令狐", "长孙", "宇文",
                     "司徒", "夏侯", "轩辕", "端木", "西门", "南宫", "独孤", "呼延", "万俟", "闻人", "赫连", "澹台",
                     "公冶", "宗政", "濮阳", "太史", "申屠", "钟离", "百里", "东郭", "拓跋", "完颜", "淳于", "单于")

# ---------------------------------------------------------------- characters as ids

_HAN0, _HAN1 = 0x4E00, 0xA000
_ASCII = _HAN1 - _HAN0 + 1
_OTHER = _ASCII + 128
_N_OTHER = 4096
VOCAB = _OTHER + _N_OTHER
_DOTS = (0xB7, 0x2022, 0x30FB, 0x2027)  # the dot inside transliterated names: 铁木尔·达瓦买提
_PAD = 2  # boundary ids (0) on each side of a text, so context lookups never fall off


def char_ids(text: str) -> np.ndarray:
    """Each character as an id: CJK Unified Ideographs 1..20992, ASCII next, others hashed."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    han = (cp >= _HAN0) & (cp < _HAN1)
    return np.where(han, cp - _HAN0 + 1, np.where(cp < 128, _ASCII + cp, _OTHER + cp % _N_OTHER))


def _is_han(ids: np.ndarray) -> np.ndarray:
    return (ids >= 1) & (ids < _ASCII)


_DOT_IDS = np.array([_OTHER + d % _N_OTHER for d in _DOTS], dtype=np.int64)

# ---------------------------------------------------------------- hashing

# A polynomial hash mod 2^64 of any substring in O(1) from two prefix arrays: with G the prefix
# sums of c_k * B^-k and P[k] = B^k, (G[i+L] - G[i]) * P[i] = sum_m c_(i+m) B^-m, the same for a
# substring wherever it occurs (B is odd, so it has an inverse mod 2^64).
_B = 0x100000001B3
_B_INV = pow(_B, -1, 1 << 64)
_M_BITS = 18
_M = 1 << _M_BITS  # buckets of each hashed table
_LEN_SALT = np.array([(L * 0x9E3779B97F4A7C15) % (1 << 64) for L in range(MAX_LEN + 4)], dtype=np.uint64)


def _powers(n: int, base: int) -> np.ndarray:
    out = np.full(n, base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out)  # wraps mod 2^64, as intended


def _prefix_hashes(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(ids)
    G = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum(ids.astype(np.uint64) * _powers(n, _B_INV), out=G[1:])
    return G, _powers(n + 1, _B)


def _mix(h: np.ndarray) -> np.ndarray:
    # murmur3's finalizer: every input bit affects every output bit
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    return h ^ (h >> np.uint64(33))


def _substring_hash(G: np.ndarray, P: np.ndarray, start: np.ndarray, L: int) -> np.ndarray:
    return _mix((G[start + L] - G[start]) * P[start] + _LEN_SALT[L])


def hash_words(words: Sequence[str]) -> np.ndarray:
    """The substring hash of each word (all of one length)."""
    if not words:
        return np.zeros(0, dtype=np.uint64)
    L = len(words[0])
    ids = char_ids("".join(words))
    G, P = _prefix_hashes(ids)
    return _substring_hash(G, P, np.arange(0, len(ids), L), L)


def _bucket(h: np.ndarray, salt: int) -> np.ndarray:
    return (_mix(h + np.uint64(salt)) >> np.uint64(64 - _M_BITS)).astype(np.int64)


# ---------------------------------------------------------------- jieba's dictionary as a feature

_TAG_CLASS = {"nr": 1, "nrt": 2, "nrfg": 2, "nrf": 2, "ns": 3, "nt": 4, "nz": 4, "n": 5, "ng": 5, "nl": 5, "vn": 5,
              "an": 5, "v": 6, "vd": 6, "vg": 6, "vi": 6, "vq": 6, "m": 8, "q": 8, "t": 8, "mq": 8, "tg": 8}
N_DICT = 30  # 10 classes (0: not a word, 7: other tags, 9 spare) x 3 frequency bands


class HashTable:
    """uint64 keys to small codes, open addressing with linear probing, looked up vectorized."""

    def __init__(self, keys: np.ndarray, values: np.ndarray, bits: int = 21):
        self.mask = (1 << bits) - 1
        self.keys = np.zeros(1 << bits, dtype=np.uint64)  # 0 marks an empty slot (a hash is 0 with odds 2^-64)
        self.values = np.zeros(1 << bits, dtype=np.int8)
        keys, first = np.unique(keys, return_index=True)
        values = values[first]
        pending = np.arange(len(keys))
        probe = 0
        while len(pending):
            slots = ((keys[pending] >> np.uint64(64 - bits)).astype(np.int64) + probe) & self.mask
            free = self.keys[slots] == 0
            slots_u, first_idx = np.unique(slots[free], return_index=True)
            placed = pending[free][first_idx]
            self.keys[slots_u] = keys[placed]
            self.values[slots_u] = values[placed]
            done = np.zeros(len(keys), dtype=bool)
            done[placed] = True
            pending = pending[~done[pending]]
            probe += 1
        self.max_probe = probe
        self.bits = bits

    def lookup(self, h: np.ndarray) -> np.ndarray:
        out = np.zeros(len(h), dtype=np.int64)
        todo = np.arange(len(h))
        base = (h >> np.uint64(64 - self.bits)).astype(np.int64)
        for probe in range(self.max_probe):
            slots = (base[todo] + probe) & self.mask
            found = self.keys[slots]
            hit = found == h[todo]
            out[todo[hit]] = self.values[slots[hit]]
            todo = todo[~hit & (found != 0)]
            if not len(todo):
                break
        return out


@functools.lru_cache(maxsize=1)
def jieba_dictionary() -> HashTable:
    """jieba's dictionary words of 2-8 characters, by hash, with their tag/frequency codes."""
    import jieba

    text = (Path(jieba.__file__).parent / "dict.txt").read_text(encoding="utf-8")
    rows = re.findall(rf"^(\S{{{MIN_LEN},{MAX_LEN}}}) (\d+) (\S+)$", text, re.M)  # word, frequency, tag
    rows.sort(key=lambda r: len(r[0]))
    classes = [_TAG_CLASS.get(r[2], 7) * 3 for r in rows]
    freqs = np.array([int(r[1]) for r in rows])
    codes = np.array(classes, dtype=np.int8) + np.where(freqs < 20, 0, np.where(freqs < 1000, 1, 2)).astype(np.int8)
    lengths = np.array([len(r[0]) for r in rows])
    keys = []
    for L in LENGTHS:
        lo, hi = np.searchsorted(lengths, [L, L + 1])
        keys.append(hash_words([r[0] for r in rows[lo:hi]]))
    return HashTable(np.concatenate(keys), codes)


@functools.lru_cache(maxsize=1)
def _surname_tables() -> tuple[np.ndarray, HashTable]:
    single = np.zeros(VOCAB, dtype=bool)
    single[char_ids(SURNAMES)] = True
    compound = hash_words(COMPOUND_SURNAMES)
    return single, HashTable(compound, np.ones(len(compound), dtype=np.int8), bits=10)


# ---------------------------------------------------------------- features


def _layout() -> dict[str, tuple[int, int]]:
    sizes = [("bias", len(LENGTHS)), ("first", 4 * VOCAB), ("second", 4 * VOCAB), ("last", 4 * VOCAB),
             ("prev", 4 * VOCAB), ("next", 4 * VOCAB), ("inner", VOCAB), ("prev2", _M), ("next2", _M),
             ("sbig", _M), ("ebig", _M), ("whole", _M), ("dict", len(LENGTHS) * N_DICT), ("lcross", N_DICT),
             ("rcross", N_DICT), ("surname", 4 * 3)]
    out, offset = {}, 1  # index 0 is the null feature, whose weight stays 0
    for name, size in sizes:
        out[name] = (offset, size)
        offset += size
    return out


LAYOUT = _layout()
N_PARAMS = sum(size for _, size in LAYOUT.values()) + 1
N_FEATURES = 15 + MAX_LEN - 2


def _length_bucket(L: int) -> int:
    return min(L, 5) - 2


@dataclass
class _Context:
    """Per-position arrays of one text that every span's features are read from."""

    n: int
    padded: np.ndarray  # ids with _PAD zeros before and MAX_LEN + _PAD after
    han: np.ndarray
    run: np.ndarray  # how many name characters follow from each position
    G: np.ndarray
    P: np.ndarray
    pair: np.ndarray  # hash of the pair of characters starting at each padded position
    pair_code: np.ndarray  # jieba dictionary code of that pair
    surname: np.ndarray  # 2: compound surname starts here, 1: single surname, 0: neither


def _context(ids: np.ndarray) -> _Context:
    n = len(ids)
    han = _is_han(ids)
    nameable = han | np.isin(ids, _DOT_IDS)
    idx = np.arange(n)
    next_break = np.minimum.accumulate(np.where(nameable, n, idx)[::-1])[::-1] if n else idx
    padded = np.concatenate([np.zeros(_PAD, np.int64), ids, np.zeros(MAX_LEN + _PAD, np.int64)])
    G, P = _prefix_hashes(padded)
    pair = _substring_hash(G, P, np.arange(len(padded) - 1), 2)
    single, compound = _surname_tables()
    surname = np.where(compound.lookup(pair) > 0, 2, single[padded[:-1]].astype(np.int64))
    return _Context(n, padded, han, next_break - idx, G, P, pair, jieba_dictionary().lookup(pair), surname)


_OFF = {name: start for name, (start, _) in LAYOUT.items()}


def _start_columns(c: _Context, j: np.ndarray, lb: int) -> list[np.ndarray]:
    """Features of a span that depend only on where it starts (padded position j) and its length bucket."""
    return [_OFF["first"] + lb * VOCAB + c.padded[j], _OFF["second"] + lb * VOCAB + c.padded[j + 1],
            _OFF["prev"] + lb * VOCAB + c.padded[j - 1], _OFF["prev2"] + _bucket(c.pair[j - 2], 1 + lb),
            _OFF["sbig"] + _bucket(c.pair[j], 21 + lb), _OFF["lcross"] + c.pair_code[j - 1],
            _OFF["surname"] + lb * 3 + c.surname[j]]


def _end_columns(c: _Context, e: np.ndarray, lb: int) -> list[np.ndarray]:
    """Features that depend only on its last character's padded position e and its length bucket."""
    return [_OFF["last"] + lb * VOCAB + c.padded[e], _OFF["next"] + lb * VOCAB + c.padded[e + 1],
            _OFF["next2"] + _bucket(c.pair[e + 1], 11 + lb), _OFF["ebig"] + _bucket(c.pair[e - 1], 31 + lb),
            _OFF["rcross"] + c.pair_code[e]]


def _span_columns(c: _Context, p: np.ndarray, L: int) -> list[np.ndarray]:
    """Features of the whole span: its length, its hash, its jieba dictionary entry."""
    whole = c.pair[p] if L == 2 else _substring_hash(c.G, c.P, p, L)
    code = c.pair_code[p] if L == 2 else jieba_dictionary().lookup(whole)
    return [np.full(len(p), _OFF["bias"] + L - MIN_LEN), _OFF["whole"] + _bucket(whole, 41),
            _OFF["dict"] + (L - MIN_LEN) * N_DICT + code]


def _span_starts(c: _Context, L: int) -> np.ndarray:
    """Starts of the spans of length L made of name characters, first and last being Han."""
    n = c.n
    if n < L:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero((c.run[: n - L + 1] >= L) & c.han[: n - L + 1] & c.han[L - 1:])


@dataclass
class Spans:
    """Candidate spans of one text: starts and lengths (and, for fitting, feature indices)."""

    starts: np.ndarray
    lengths: np.ndarray
    features: np.ndarray | None = None  # (n, N_FEATURES), unused slots at the null feature 0


def candidate_spans(ids: np.ndarray, with_features: bool = False) -> tuple[Spans, _Context]:
    """Every span of 2-8 name characters (Han, or a dot inside) that starts and ends with Han."""
    c = _context(ids)
    starts, lengths, feats = [], [], []
    for L in LENGTHS:
        s = _span_starts(c, L)
        if not len(s):
            continue
        starts.append(s)
        lengths.append(np.full(len(s), L))
        if with_features:
            p, lb = s + _PAD, _length_bucket(L)
            cols = (_start_columns(c, p, lb) + _end_columns(c, p + L - 1, lb) + _span_columns(c, p, L)
                    + [_OFF["inner"] + c.padded[p + k] for k in range(1, L - 1)])
            f = np.zeros((len(s), N_FEATURES), dtype=np.int64)
            f[:, :len(cols)] = np.stack(cols, 1)
            feats.append(f)
    if not starts:
        empty = np.zeros(0, dtype=np.int64)
        return Spans(empty, empty, np.zeros((0, N_FEATURES), dtype=np.int64) if with_features else None), c
    return Spans(np.concatenate(starts), np.concatenate(lengths),
                 np.concatenate(feats) if with_features else None), c
