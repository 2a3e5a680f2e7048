"""builtin:qa-hard: builtin:qa's answers, asked in words that differ from the context.

builtin:qa's question is its context sentence with the answer swapped for a question word, so
string matching (`align_and_copy`) inverts it. Here the same paragraphs, the same answers (the
same candidate spans from the same part-of-speech tags, the same hash-picked one) and the same
split by article get a question built by a fixed rule from the tagged words, with no model
and no randomness:

1. words dropped: the words right next to the answer, one before and one after (unless that
   neighbour is punctuation), are left out, so the question no longer says where the answer
   starts and stops: 国务院总理李鹏昨天会见了… -> 国务院谁会见了… (about 李鹏);
2. clauses reordered: when the sentence has more than one clause (split at ，；：), the clause
   holding the question word moves to the front (to the back when it already is the first);
3. a clause from another sentence: the first clause of the paragraph's next sentence (the
   previous one for the last sentence), when it has at least 4 characters, is put in front,
   so some of the question's words point at the wrong sentence.

Each applies whenever it can; the question ends with ？ and has at most 100 characters (the
other-sentence clause is left out when it would not fit). What it measures, beyond
builtin:qa: finding the right sentence from partial, reordered evidence with distractors, and
knowing where a name, place, organisation or date starts and stops without being told by the
question's words. Still not inference or knowledge: the answer is a verbatim span of the context.

The items are built in candorlm.tasks.qa (`hard_items`), with builtin:qa's.
"""

from __future__ import annotations

MAX_HARD_QUESTION = 100
_CLAUSE = "，；：,;:"


def _sentences(words: list[tuple[str, str, int]], text: str) -> list[list[int]]:
    """Word indices per sentence (a sentence ends after 。！？； )."""
    out: list[list[int]] = [[]]
    for i, (w, _, _) in enumerate(words):
        out[-1].append(i)
        if w and w[-1] in "。！？；":
            out.append([])
    return [s for s in out if s]


def _clauses(idx: list[int], words: list[tuple[str, str, int]]) -> list[list[int]]:
    out: list[list[int]] = [[]]
    for i in idx:
        if words[i][0] in _CLAUSE or words[i][0] in "。！？；":
            out.append([])
        else:
            out[-1].append(i)
    return [c for c in out if c]


def hard_question(line: list[tuple[str, str]], span: str, word: str) -> str | None:
    """The qa-hard question for answer `span` (its question word `word`) of a tagged paragraph."""
    text = "".join(w for w, _ in line)
    words, at = [], 0
    for w, t in line:
        words.append((w, t, at))
        at += len(w)
    a = text.index(span)
    b = a + len(span)
    inside = {i for i, (w, _, s) in enumerate(words) if s < b and s + len(w) > a}
    sentences = _sentences(words, text)
    k = next(n for n, s in enumerate(sentences) if inside & set(s))
    sent = sentences[k]
    first, last = min(inside), max(inside)
    drop = {i for i in (first - 1, last + 1) if i in sent and words[i][1] != "w"}
    keep = [i for i in sent if i not in drop and i not in inside or i == first]
    clauses = _clauses(keep, words)
    if not clauses:
        return None
    home = next(n for n, c in enumerate(clauses) if first in c)
    if len(clauses) > 1:
        moved = clauses.pop(home)
        clauses = [moved, *clauses] if home else [*clauses, moved]

    def render(c: list[int]) -> str:
        return "".join(word if i == first else words[i][0] for i in c)

    question = "，".join(render(c) for c in clauses)
    other = sentences[k + 1] if k + 1 < len(sentences) else (sentences[k - 1] if k else None)
    extra = render(_clauses(other, words)[0]) if other and _clauses(other, words) else ""
    if len(extra) >= 4 and len(extra) + len(question) + 2 <= MAX_HARD_QUESTION:
        question = extra + "，" + question
    if word not in question or len(question) + 1 > MAX_HARD_QUESTION:
        return None
    return question + "？"

