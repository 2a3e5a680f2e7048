"""The errors of a pinyin tagger (`finetune --task translate --head tag`) on builtin:pinyin's test
split, by kind: a character the training split never had, a syllable-character pair it never
had (outside the dictionary), punctuation and digits, and homophones (the syllable's most
frequent character where the context called for another, or another candidate). Then the most
common confusions. What docs/benchmarks/tasks.md's table of errors by kind comes from.

    python bench/pinyin_errors.py runs/pinyin-tag
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict

import candorlm
from candorlm.tasks.translate import _is_han, load_records


def main(run: str) -> None:
    model = candorlm.load_task(run)
    lexicon = model.info["lexicon"]
    splits, _ = load_records("builtin:pinyin")
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for r in splits["train"]:
        for syllable, ch in zip(r["source"].split(), r["target"]):
            counts[syllable][ch] += 1
    test = splits["test"]
    hyps = [o["translation"] for o in model.predict([r["source"] for r in test])]
    known = model.tokenizer.hf.get_vocab()
    kinds: Counter[str] = Counter()
    confusions: Counter[tuple[str, str, str]] = Counter()
    total = 0
    for r, hyp in zip(test, hyps):
        for syllable, gold, out in zip(r["source"].split(), r["target"], hyp):
            total += 1
            if gold == out:
                continue
            if not _is_han(gold):
                kinds["punctuation, digits, Latin"] += 1
            elif gold not in known:
                kinds["a character the training split never had"] += 1
            elif gold not in lexicon.get(syllable, ""):
                kinds["outside the dictionary (never this syllable's in training)"] += 1
            elif out == counts[syllable].most_common(1)[0][0]:
                kinds["homophone: the syllable's most frequent character"] += 1
            else:
                kinds["homophone: another candidate"] += 1
            confusions[(syllable, gold, out)] += 1
    errors = sum(kinds.values())
    print(f"test characters {total:,}, wrong {errors:,}; accuracy by position {1 - errors / total:.4f}")
    for kind, n in kinds.most_common():
        print(f"  {kind}: {n:,} ({n / errors:.1%} of errors)")
    print("most common confusions (syllable: reference -> output):")
    for (syllable, gold, out), n in confusions.most_common(25):
        print(f"  {syllable}: {gold} -> {out}  x{n}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/pinyin-tag")
