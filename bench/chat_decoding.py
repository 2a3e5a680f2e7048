"""Chat decoding settings compared on one fine-tuned chat run: the same test turns (taken
round-robin by kind of turn), replies written greedily with each setting, scored as
`candorlm eval --task chat` scores them (right share per kind, degenerate share).

    python bench/chat_decoding.py runs/pd-chat --limit 150

Settings: plain greedy; no-repeat n-grams of 2, 3 and 4 tokens inside the reply (the prompt is
not counted, so an answer can still copy its context). The chat evaluation's default
(`candorlm.tasks.chat_eval.NO_REPEAT_NGRAM`) is the one this picks: the highest right share,
ties broken by the lower degenerate share. Prints one JSON line per setting, then the choice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = {"greedy": 0, "no-repeat 2": 2, "no-repeat 3": 3, "no-repeat 4": 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run fine-tuned with --task chat")
    parser.add_argument("--data", default=None, help="task data (default: the run's)")
    parser.add_argument("--limit", type=int, default=150, help="test turns, round-robin by kind")
    args = parser.parse_args()

    from candorlm.tasks.base import load_task_run
    from candorlm.tasks.chat import load_splits
    from candorlm.tasks.chat_eval import MAX_REPLY_TOKENS, replies, score_turns, turns

    _, config, info, model, tok, _ = load_task_run(args.run)
    splits, _ = load_splits(args.data or info["data"])
    items = turns(tok, splits["test"], config.model.max_seq_len, MAX_REPLY_TOKENS, args.limit)
    results = {}
    for name, n in SETTINGS.items():
        scored = score_turns(replies(model, tok, [t["prompt"] for t in items], no_repeat_ngram=n), items)
        results[name] = scored
        print(json.dumps({"setting": name, "no_repeat_ngram": n, "right": scored["right"],
                          "degenerate": scored["degenerate"],
                          "by_kind": {k: v.get("label_accuracy", v.get("exact_match"))
                                      for k, v in scored["by_kind"].items()}}, ensure_ascii=False))
    best = max(results, key=lambda k: (results[k]["right"], -results[k]["degenerate"]))
    print(json.dumps({"run": args.run, "turns": len(items), "best": best, "no_repeat_ngram": SETTINGS[best]}))


if __name__ == "__main__":
    main()
