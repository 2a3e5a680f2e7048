"""Personal-data scrubbing: throughput, accuracy per type, and what it flags in real text.

1. Throughput (MB/s of UTF-8 input) on People's Daily (5.5 MB) with planted values: structured
   types only, names only, everything in one process, and `scrub()` end to end with 1 and 2
   worker processes (reading, detecting, replacing, writing JSONL).
2. Precision and recall per type on the labelled set (candorlm/privacy/pii_testset.py),
   look-alike survival, and the documented misses.
3. Chinese names against People's Daily's own `nr` tags on held-out articles, next to jieba's
   part-of-speech tagger (`nr*`) on the same articles.
4. Structured detections in real text that should hold none (People's Daily, Python's docs):
   every one is a false positive, printed for inspection.
5. The peer: Microsoft Presidio 2.2 in its offline pattern mode (NoOpNlpEngine; e-mail, IP,
   credit card, phone recognizers; tldextract without network or cache), when installed
   (`pip install presidio-analyzer`): throughput and accuracy on the same data.

6. Before and after (`--before DIR`): the same labelled set and the same People's Daily names
   figure, run against the candorlm package of another checkout DIR (e.g. a worktree of an
   older commit: `git worktree add /tmp/before e98d6a0 --detach`), in a subprocess that imports
   that checkout's detector; the labelled set and the scoring are this checkout's.

    .venv/bin/python bench/scrub.py [--skip-jieba] [--skip-presidio] [--before DIR] [--only accuracy,names]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository on sys.path)

os.environ.setdefault("CANDORLM_PROGRESS", "0")


def _mb(text: str) -> float:
    return len(text.encode("utf-8")) / 1e6


def _rate(fn, text: str, repeat: int = 1) -> float:
    fn(text[:2000])  # warm-up: lazy tables, dictionaries
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(text)
        best = min(best, time.perf_counter() - start)
    return _mb(text) / best


def corpus_with_pii() -> tuple[list[str], str]:
    from candorlm.corpus import peoples_daily_documents
    from candorlm.privacy import pii_testset

    docs = [d.text for d in peoples_daily_documents()]
    planted = pii_testset.build(seed=5, per_type=100, lookalikes=300)
    step = max(1, len(docs) // len(planted))
    for i, sample in enumerate(planted):
        j = (i * step) % len(docs)
        docs[j] = docs[j] + "\n" + sample.text
    return docs, "\n\n".join(docs)


def throughput(docs: list[str], text: str) -> None:
    from candorlm.privacy.pii import STRUCTURED_TYPES, ENTITY_TYPES, PIIDetector
    from candorlm.privacy.scrub import scrub

    print(f"## throughput on People's Daily with planted values ({_mb(text):.1f} MB, {len(docs):,} documents)\n")
    structured = PIIDetector([t for t in ENTITY_TYPES if t != "PERSON"])
    names = PIIDetector(["PERSON"])
    everything = PIIDetector()
    def batched(detector):  # as scrub calls it: 64 documents at a time
        return lambda t: [detector.detect_many(docs[i:i + 64]) for i in range(0, len(docs), 64)]

    print("| what | MB/s |\n|---|---|")
    print(f"| detect, structured types ({', '.join(STRUCTURED_TYPES)}, URL credentials, passports, plates) | "
          f"{_rate(batched(structured), text):.2f} |")
    print(f"| detect, person names only | {_rate(batched(names), text):.2f} |")
    print(f"| detect, all types | {_rate(batched(everything), text):.2f} |")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "pd.txt"
        src.write_text(text, encoding="utf-8")
        for workers in (1, 2):
            for types, label in ((None, "all types"), ([t for t in ENTITY_TYPES if t != "PERSON"], "structured")):
                rep = scrub([str(src)], Path(tmp) / f"out-{workers}.jsonl", types=types, workers=workers, overwrite=True)
                print(f"| `scrub` end to end, {label}, {workers} worker{'s' if workers > 1 else ''} | {rep.mb_per_s:.2f} |")
    print()


# Run in another checkout's interpreter path: its detector on our texts, and its names figure.
_BEFORE_SCRIPT = """
import json, sys
from candorlm.privacy.pii import PIIDetector
texts = json.load(sys.stdin)
if texts is None:
    from candorlm.privacy import zh_names
    print(json.dumps(zh_names.evaluate(zh_names.default_model(), "test")))
else:
    detector = PIIDetector()
    found = detector.detect_many(texts)
    print(json.dumps({"types": list(detector.types), "found": [[(e.type, e.start, e.end) for e in f] for f in found]}))
"""


def _in_checkout(checkout: str, payload: object) -> dict:
    """Run _BEFORE_SCRIPT with `checkout`'s candorlm first on the path (this interpreter, its packages)."""
    env = dict(os.environ, PYTHONPATH=str(Path(checkout).resolve()))
    proc = subprocess.run([sys.executable, "-c", _BEFORE_SCRIPT], input=json.dumps(payload), env=env,
                          capture_output=True, text=True, cwd=checkout)
    if proc.returncode != 0:
        raise SystemExit(f"--before {checkout}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


def accuracy(before: str | None = None) -> None:
    from candorlm.privacy import pii_testset
    from candorlm.privacy.pii import PIIDetector

    samples = pii_testset.build(seed=0)
    result = pii_testset.score(PIIDetector(), samples)
    old = None
    if before:
        got = _in_checkout(before, [s.text for s in samples])
        old = pii_testset.score_predictions(got["found"], samples, result.keys() - {"lookalikes"})
        old_types = set(got["types"])
    print(f"## labelled set: {len(samples):,} sentences (seed 0), exact spans\n")
    if old is None:
        print("| type | planted | found | false positives | precision | recall |\n|---|---|---|---|---|---|")
    else:
        print(f"before: the checkout at {before}\n")
        print("| type | planted | found | false positives | precision | recall | precision before | recall before |"
              "\n|---|---|---|---|---|---|---|---|")
    for t, r in result.items():
        if t == "lookalikes":
            continue
        row = f"| {t} | {r['planted']} | {r['found']} | {r['false_positives']} | {r['precision']:.3f} | {r['recall']:.3f} |"
        if old is not None:
            o = old[t]
            row += (f" {o['precision']:.3f} | {o['recall']:.3f} |" if t in old_types else " (no such type) | 0.000 |")
        print(row)
    la = result["lookalikes"]
    print(f"\nlook-alikes untouched: {la['survived']} of {la['total']} ({la['survival_rate']:.3f})"
          + (f"; before: {old['lookalikes']['survived']} ({old['lookalikes']['survival_rate']:.3f})" if old else ""))
    misses = pii_testset.score(PIIDetector(), pii_testset.build_known_misses())
    print("documented misses (Chinese-numeral and spaced-out phones, spelled-out e-mails, pinyin names), recall: "
          + ", ".join(f"{t} {misses[t]['recall']:.2f}" for t in ("PHONE", "EMAIL", "PERSON")) + "\n")


def names(skip_jieba: bool, before: str | None = None) -> None:
    from candorlm.privacy import zh_names, zh_names_fit

    model = zh_names.default_model()
    print("## Chinese person names vs People's Daily's `nr` tags, held-out articles (split 4 of 5)\n")
    result = zh_names_fit.evaluate(model, "test")
    print("| detector | names | recall (name inside a detection) | precision (detection overlaps a name) | "
          "exact-span recall | exact-span precision |\n|---|---|---|---|---|---|")
    rows = [("candorlm span model", result)]
    if before:
        rows.append((f"candorlm span model, before ({before})", _in_checkout(before, None)))
    for label, r in rows:
        print(f"| {label} | {r['names']} | {r['recall']:.3f} | {r['precision']:.3f} | "
              f"{r['exact_recall']:.3f} | {r['exact_precision']:.3f} |")
    if not skip_jieba:
        import logging

        import jieba
        import jieba.posseg as pseg

        jieba.setLogLevel(logging.WARNING)
        gold_n = pred_n = covered = hit = exact = 0
        text_mb = 0.0
        start = time.perf_counter()
        for article in zh_names_fit.articles("test"):
            for text, gold in article:
                pred, pos = [], 0
                for word, flag in pseg.cut(text):
                    if flag.startswith("nr"):
                        pred.append((pos, pos + len(word)))
                    pos += len(word)
                text_mb += _mb(text)
                gold_n += len(gold)
                pred_n += len(pred)
                covered += zh_names_fit._covered(gold, pred)
                hit += sum(any(gs < pe and ps < ge for gs, ge in gold) for ps, pe in pred)
                exact += len(set(gold) & set(pred))
        seconds = time.perf_counter() - start
        print(f"| jieba.posseg `nr*` | {gold_n} | {covered / gold_n:.3f} | {hit / pred_n:.3f} | {exact / gold_n:.3f} | "
              f"{exact / pred_n:.3f} |")
        print(f"\njieba.posseg runs at {text_mb / seconds:.2f} MB/s on these articles.")
    print()


def real_text_false_positives() -> None:
    from candorlm.corpus import peoples_daily_documents, python_docs_documents
    from candorlm.privacy.pii import ENTITY_TYPES, PIIDetector

    detector = PIIDetector([t for t in ENTITY_TYPES if t != "PERSON"])
    print("## structured detections in text that holds no personal data (each one a false positive)\n")
    for name, docs in (("People's Daily 1998-01", peoples_daily_documents()), ("Python docs", python_docs_documents())):
        found, mb = [], 0.0
        for doc in docs:
            mb += _mb(doc.text)
            found += [(e.type, e.text) for e in detector.detect(doc.text)]
        print(f"- {name} ({mb:.1f} MB): {len(found)} detections: {found[:12]}")
    print()


def presidio_peer(docs: list[str], text: str) -> None:
    start = time.perf_counter()
    try:
        import tldextract
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NoOpNlpEngine
        from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, EmailRecognizer, IpRecognizer,
                                                              PhoneRecognizer)
    except ImportError:
        print("## Presidio: not installed (pip install presidio-analyzer to compare)\n")
        return
    from candorlm.privacy import pii_testset
    from candorlm.privacy.pii import PIIDetector

    offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)  # no network, no cache in $HOME

    class OfflineEmail(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return offline(pattern_text).fqdn != ""

    recognizers = [OfflineEmail(), IpRecognizer(), CreditCardRecognizer(),
                   PhoneRecognizer(supported_regions=("CN", "US", "GB", "DE"))]
    engine = AnalyzerEngine(nlp_engine=NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "no_op"}]),
                            registry=RecognizerRegistry(recognizers=recognizers), supported_languages=["en"])
    setup = time.perf_counter() - start
    names = {"EMAIL_ADDRESS": "EMAIL", "IP_ADDRESS": "IP_ADDRESS", "CREDIT_CARD": "BANK_CARD", "PHONE_NUMBER": "PHONE"}

    class Adapter:
        types = tuple(names.values())

        def detect(self, s: str):
            from candorlm.privacy.pii import Entity

            return [Entity(names[r.entity_type], r.start, r.end, s[r.start:r.end])
                    for r in engine.analyze(s, language="en", entities=list(names))]

    from importlib.metadata import version

    print(f"## peer: Presidio {version('presidio-analyzer')} in pattern mode (NoOpNlpEngine); import and set-up "
          f"{setup:.1f} s\n")
    # Only sentences whose planted values are of the four compared types, and the look-alikes.
    samples = [s for s in pii_testset.build(seed=0) if all(t in names.values() for t, _, _ in s.entities)]
    theirs = pii_testset.score(Adapter(), samples)
    ours = pii_testset.score(PIIDetector(list(names.values())), samples)
    print("| type | Presidio precision / recall | candorlm precision / recall |\n|---|---|---|")
    for t in names.values():
        print(f"| {t} | {theirs[t]['precision']:.3f} / {theirs[t]['recall']:.3f} | "
              f"{ours[t]['precision']:.3f} / {ours[t]['recall']:.3f} |")
    sample = docs[:400]
    sample_text = "\n\n".join(sample)
    mine = PIIDetector(list(names.values()))
    print(f"\nthroughput on {_mb(sample_text):.1f} MB of the same text, the same four types: "
          f"Presidio {_rate(lambda t: [engine.analyze(d, language='en') for d in sample], sample_text):.2f} MB/s, "
          f"candorlm {_rate(lambda t: [mine.detect(d) for d in sample], sample_text):.2f} MB/s")
    print(f"look-alikes untouched: Presidio {theirs['lookalikes']['survival_rate']:.3f}, "
          f"candorlm {ours['lookalikes']['survival_rate']:.3f}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-jieba", action="store_true", help="skip the slow jieba.posseg baseline")
    parser.add_argument("--skip-presidio", action="store_true")
    parser.add_argument("--before", metavar="DIR", help="also score the candorlm package of this checkout")
    parser.add_argument("--only", help="comma-separated parts: throughput, accuracy, names, real, presidio")
    args = parser.parse_args()
    parts = set(args.only.split(",")) if args.only else {"throughput", "accuracy", "names", "real", "presidio"}
    if parts & {"throughput", "presidio"}:
        docs, text = corpus_with_pii()
    if "throughput" in parts:
        throughput(docs, text)
    if "accuracy" in parts:
        accuracy(args.before)
    if "names" in parts:
        names(args.skip_jieba, args.before)
    if "real" in parts:
        real_text_false_positives()
    if "presidio" in parts and not args.skip_presidio:
        presidio_peer(docs, text)


if __name__ == "__main__":
    main()
