"""explain/: the tools on a tiny trained model, checked against what they claim."""

import json
import math
import re

import pytest
import torch

from candorlm.errors import CandorError
from candorlm.explain import attention, attribution, faithfulness, lens, patching
from candorlm.explain.report import explain, parse_methods
from candorlm.explain.tokens import encode_example, token_labels
from candorlm.lm import load
from candorlm.model.hooks import hook_points, hooks

PROMPTS = ["中国经济", "人民日报记者", "新华社北京１月"]


@pytest.fixture(scope="module")
def lm(trained_run):
    return load(trained_run, device="cpu")


def own_target(lm, prompt):
    probe = encode_example(lm.tokenizer, prompt)
    with torch.no_grad():
        logits = lm.model(torch.tensor([probe.ids]))[0, -1]
    logits[list(lm.tokenizer.special_ids)] = -math.inf
    return encode_example(lm.tokenizer, prompt, target_ids=[int(logits.argmax())])


def test_labels_show_split_characters_and_specials(lm):
    tok = lm.tokenizer
    ids = [tok.bos_id] + tok.encode("我爱编程\n")
    labels = token_labels(tok, ids)
    assert labels[0] == "<|bos|>" and labels[-1] == "↵"
    assert all(label for label in labels)  # every token has something to show
    # A character split across two byte tokens is shown on both, dotted where the rest lies.
    from candorlm.explain.tokens import _label_run, _visible
    assert _label_run(["爱".encode()[:2], "爱".encode()[2:] + b"ab"]) == ["爱·", "·爱ab"]
    # control characters have no glyph in any font (figures drew boxes): written as escapes
    assert _visible("a\x1ab\x00") == "a\\x1ab\\x00" and _visible("\t") == "⇥" and _visible("  ") == "␣␣"
    assert _visible("\x1f") == "\\x1f" and _visible("\u3000") == "␣"  # a separator counts as blank to str.strip


def test_logit_lens_last_row_is_the_model_output(lm):
    ex = own_target(lm, "中国经济")
    ids = torch.tensor([ex.ids])
    result = lens.logit_lens(lm.model, ids, k=3, target_id=ex.target_ids[0])
    assert result.layers == ["embed", "block 0", "block 1"]
    with torch.no_grad():
        probs = torch.softmax(lm.model(ids)[0].float(), -1)
    top_p, top_i = probs.topk(3, -1)
    assert torch.equal(result.top_ids[-1], top_i)
    assert torch.allclose(result.top_probs[-1], top_p, atol=1e-6)
    assert torch.allclose(result.target_prob[-1], probs[:, ex.target_ids[0]], atol=1e-6)
    assert torch.isnan(result.next_prob[:, -1]).all() and not torch.isnan(result.next_prob[:, :-1]).any()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_integrated_gradients_are_complete(lm, prompt):
    ex = own_target(lm, prompt)
    ig = attribution.integrated_gradients(lm.model, ex, lm.tokenizer.pad_id)
    assert ig.completeness_error < 0.05
    assert abs(sum(ig.scores) - (ig.f_input - ig.f_baseline)) < 0.05 * abs(ig.f_input - ig.f_baseline)
    assert ig.scores[0] == 0.0  # <bos> is the same in input and baseline
    with torch.no_grad():
        f = attribution.target_log_prob(lm.model, torch.tensor([ex.ids]), ex)
    assert math.isclose(ig.f_input, float(f), rel_tol=1e-5)


def test_multi_token_target_and_too_few_steps_are_reported(lm):
    ex = encode_example(lm.tokenizer, "中国", target="经济发展")
    assert len(ex.target_ids) >= 2 and ex.target_positions[0] == ex.n_prompt - 1
    ig = attribution.integrated_gradients(lm.model, ex, lm.tokenizer.pad_id, n_steps=1, max_steps=1)
    assert ig.n_steps == 1 and ig.completeness_error is not None  # reported, not hidden
    assert all(s == 0.0 for s in ig.scores[ex.n_prompt:])  # target tokens are kept in the baseline


def test_gradient_x_input_is_gradient_dot_embedding(lm):
    ex = own_target(lm, "人民日报记者")
    got = attribution.gradient_x_input(lm.model, ex).scores
    emb = lm.model.tok_emb(torch.tensor([ex.ids])).detach().requires_grad_(True)

    def f_from_embeddings(e):
        with hooks(lm.model, {"hook_embed": lambda x, hook: e}):
            return attribution.target_log_prob(lm.model, torch.tensor([ex.ids]), ex)

    (grad,) = torch.autograd.grad(f_from_embeddings(emb).sum(), emb)
    expected = (grad * emb).sum(-1)[0]
    assert torch.allclose(torch.tensor(got), expected.detach(), atol=1e-4)


def corruption(tok, prompt):
    """A text that differs from `prompt` in its first token and tokenizes to as many tokens."""
    ids = tok.encode(prompt)
    for word in ["美国", "日本", "北京", "上海", "世界", "全国", "今天", "记者", "人民"]:
        candidate = word + tok.decode(ids[1:])
        if candidate != prompt and len(tok.encode(candidate)) == len(ids):
            return candidate
    raise AssertionError(f"no same-length corruption of {prompt!r} in this vocabulary")


def test_residual_patching_restores_exactly_where_it_must(lm):
    tok = lm.tokenizer
    clean = encode_example(tok, "中国经济")
    bad = encode_example(tok, corruption(tok, "中国经济"))
    c, b = torch.tensor([clean.ids]), torch.tensor([bad.ids])
    diff = [i for i, (x, y) in enumerate(zip(clean.ids, bad.ids)) if x != y]
    last = len(clean.ids) - 1
    with torch.no_grad():
        good = int(lm.model(c)[0, -1].argmax())
        metric = lambda logits: torch.log_softmax(logits[:, last].float(), -1)[:, good]  # noqa: E731
        result = patching.patch_residual(lm.model, c, b, metric)
    assert result.effect.shape == (3, len(clean.ids))
    # Restoring the final residual stream at the last position restores the output exactly; so
    # does restoring the embeddings where the prompts differ when that is a single position.
    assert result.effect[-1, last] == pytest.approx(1.0, abs=1e-4)
    if len(diff) == 1:
        assert result.effect[0, diff[0]] == pytest.approx(1.0, abs=1e-4)
    assert result.effect[:, 0].abs().max() < 1e-4  # <bos> is the same in both runs
    heads = patching.patch_heads(lm.model, c, b, metric)
    assert heads.effect.shape == (2, 2) and torch.isfinite(heads.effect).all()
    with pytest.raises(CandorError, match="same number of tokens"):
        patching.patch_residual(lm.model, c, c[:, :-1], metric)
    with pytest.raises(CandorError, match="same metric"):
        patching.patch_residual(lm.model, c, c, metric)


def test_deletion_test_tells_an_oracle_from_an_anti_oracle(lm):
    ex = own_target(lm, "新华社北京１月")
    n = ex.n_prompt
    # Oracle scores: each token's real single-token deletion effect.
    base = faithfulness._target_probs(lm.model, [ex])[0]
    effects = [0.0] + [base - faithfulness._target_probs(lm.model, [faithfulness._without(ex, (i,))])[0]
                       for i in range(1, n)]
    oracle = faithfulness.deletion_test(lm.model, ex, effects, k=1)
    anti = faithfulness.deletion_test(lm.model, ex, [-e for e in effects], k=1)
    assert oracle.draws == n - 1  # every single token, exactly
    assert oracle.drop_top == pytest.approx(max(effects[1:]), abs=1e-6)
    assert oracle.drop_top >= oracle.drop_random_mean >= anti.drop_top
    assert oracle.random_at_least_as_bad == pytest.approx(1 / (n - 1))
    assert faithfulness.deletion_test(lm.model, ex, effects, k=n) is None  # nothing left to compare


def test_deletion_summary_verdicts():
    def d(top, rand):
        return faithfulness.Deletion(1, 0.5, 0.5 - top, top, rand, 0.01, 10, 0.1, [1])

    assert faithfulness.summarize([d(0.3, 0.1)] * 5)["verdict"].startswith("better than random")
    assert faithfulness.summarize([d(0.1, 0.3)] * 5)["verdict"].startswith("worse than random")
    mixed = faithfulness.summarize([d(0.3, 0.1), d(0.1, 0.3), d(0.2, 0.2)])
    assert mixed["verdict"].startswith("no better than random")
    assert faithfulness.summarize([])["prompts"] == 0


def test_head_scores_on_handmade_patterns():
    T = 7
    prev = torch.zeros(1, 1, 1, T, T)
    prev[..., 0, 0] = 1
    prev[..., torch.arange(1, T), torch.arange(T - 1)] = 1
    assert attention.previous_token_scores(prev).item() == 1.0
    assert attention.first_token_scores(prev).item() == pytest.approx(1 / (T - 1))
    n = 3  # <bos> a b c a b c: the second a, b, c attend to b, c, a(second)
    ind = torch.zeros(1, 1, 1, 2 * n + 1, 2 * n + 1)
    ind[..., torch.arange(n + 1, 2 * n + 1), torch.arange(2, n + 2)] = 1
    assert attention.induction_scores_from(ind, n, 1).item() == 1.0
    seq = attention.repeated_random_tokens(n, 2, [5, 6, 7, 8], bos=1)
    assert seq.shape == (2, 2 * n + 1) and torch.equal(seq[:, 1:n + 1], seq[:, n + 1:])


def test_explain_writes_everything(lm, trained_run, tmp_path):
    doc = explain(trained_run, prompt="中国经济", corrupt=corruption(lm.tokenizer, "中国经济"), out=tmp_path / "out",
                  method="all")
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"attention-layer-0.png", "attention-layer-1.png", "head-scores.png", "lens.png", "attribution.png",
            "explain.html", "explain.json"} <= files
    saved = json.loads((trained_run / "evals" / "explain.json").read_text(encoding="utf-8"))
    assert saved["prompt"] == "中国经济" and saved["tokens"][0] == "<|bos|>"
    assert saved["attribution"]["completeness_ok"] is True
    assert len(saved["attention"]["maps"][0]["patterns"]) == 2 and saved["attention"]["maps"][0]["causal"]
    assert {"patching-residual.png", "patching-heads.png"} <= files
    assert doc["patching"]["residual"][0]["effect"][-1][-1] == pytest.approx(1.0, abs=1e-3)
    html = (tmp_path / "out" / "explain.html").read_text(encoding="utf-8")
    assert "中国" in html
    # Self-contained: nothing is fetched from anywhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html and "@import" not in html


def test_explain_refuses_bad_requests(trained_run, tmp_path):
    with pytest.raises(CandorError, match="Valid: attention, lens, ig, patching"):
        parse_methods("lenz")
    assert parse_methods("lens,ig") == ["lens", "ig"] and parse_methods("all")[-1] == "patching"
    with pytest.raises(CandorError, match="needs --corrupt"):
        explain(trained_run, prompt="中国", method="patching", out=tmp_path)
    with pytest.raises(CandorError, match="as many tokens"):
        explain(trained_run, prompt="中国经济", corrupt="一个长得多的被破坏的提示", method="patching", out=tmp_path)


def test_tools_work_on_a_model_imported_from_hugging_face(trained_run, tmp_path):
    from candorlm.interop.hf import export_hf, import_hf

    export_hf(trained_run, tmp_path / "hf")
    imported = import_hf(tmp_path / "hf", tmp_path / "imported")
    doc = explain(imported.path, prompt="人民日报", target="记者", method="attention,lens,ig", out=tmp_path / "o")
    assert doc["target"] == "记者" and doc["attribution"]["completeness_ok"]
    original = explain(trained_run, prompt="人民日报", target="记者", method="lens", out=tmp_path / "o2")
    assert original["lens"]["top_tokens"] == doc["lens"]["top_tokens"]
    assert len(hook_points(load(imported.path).model)) == len(hook_points(load(trained_run).model))
