"""The report card: five sections from a run's files, each with real figures where the data
exists and the producing command where it does not; report.json validates against the schema;
report.html is self-contained and, in headless Chromium, shows every section and every image
(screenshot in test-output/report.png)."""

import json
import re
import shutil
from pathlib import Path

import pytest

from candorlm.report import report
from candorlm.report.schema import SCHEMA, SECTION_IDS, validate
from tests.conftest import OUTPUT, headless_chromium

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (pip install jsonschema)")
TITLES = ["Cost", "Compute", "Interpretability", "Privacy", "Generalization"]


@pytest.fixture(scope="module")
def bare_run(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-bare") / "run"
    shutil.copytree(trained_run, out, ignore=shutil.ignore_patterns("evals", "explain", "report*"))
    return out


@pytest.fixture(scope="module")
def full_run(trained_run, tmp_path_factory):
    from candorlm.explain import explain
    from candorlm.explain.report import faithfulness_report
    from candorlm.generalization import evaluate_domains
    from candorlm.privacy.audit import audit

    out = tmp_path_factory.mktemp("report-full") / "run"
    shutil.copytree(trained_run, out, ignore=shutil.ignore_patterns("evals", "explain", "report*"))
    evaluate_domains(out, ["builtin:reviews", "builtin:python-docs"], max_docs=15, max_chars=300)
    explain(out, prompt="人民日报记者", method="attention,ig")
    faithfulness_report(out, ["人民日报记者", "中国经济"], draws=20, ig_steps=16)
    audit(out, samples=10, candidates=50, generations=3)
    return out


def _section(doc, sid):
    return next(s for s in doc["sections"] if s["id"] == sid)


def test_bare_run_names_the_commands_for_missing_sections(bare_run):
    doc = report(bare_run)
    assert [s["title"] for s in doc["sections"]] == TITLES
    assert [s["id"] for s in doc["sections"]] == list(SECTION_IDS)
    cost, compute = _section(doc, "cost"), _section(doc, "compute")
    assert cost["status"] == "ok" and any(f["name"] == "training FLOPs" and f["value"] > 0 for f in cost["figures"])
    gpu_rows = [r for r in cost["tables"][0]["rows"] if r[0].startswith(("A100, at", "H100, at"))]  # each says its MFU basis
    assert len(gpu_rows) == 2 and all(r[1] > 0 for r in gpu_rows)
    # A model this small cannot reach the assumed MFU, and the card says so under the table.
    assert "lower bound" in cost["tables"][0]["note"] and "40% MFU" in cost["tables"][0]["note"]
    assert any(f["name"] == "throughput" for f in compute["figures"])
    for sid, command in (("interpretability", "candorlm explain"), ("generalization", "candorlm eval"),
                         ("privacy", "candorlm audit")):
        s = _section(doc, sid)
        assert s["status"] in ("missing", "partial")
        assert any(command in m["command"] for m in s["missing"]), s["missing"]
    html = (bare_run / "report.html").read_text(encoding="utf-8")
    assert "candorlm eval" in html and "candorlm audit" in html
    assert " fraction" not in html and "%" in html  # units a person reads
    loss = next(im for im in compute["images"] if im["key"] == "loss_curve")
    assert "Validation went from" in loss["caption"]


def test_full_run_has_real_figures_in_every_section(full_run):
    doc = report(full_run)
    saved = json.loads((full_run / "report.json").read_text(encoding="utf-8"))
    validate(saved)
    for s in doc["sections"]:
        assert s["status"] in ("ok", "partial") and s["figures"], s["id"]
    gen = _section(doc, "generalization")
    table = gen["tables"][0]
    assert [r[0] for r in table["rows"]][:3] == ["in-domain (validation split)", "builtin:reviews", "builtin:python-docs"]
    assert all(isinstance(r[2], list) and len(r[2]) == 2 for r in table["rows"])  # every row has an interval
    assert any(t["title"].startswith("robustness probes") for t in gen["tables"])
    priv = {f["name"]: f["value"] for f in _section(doc, "privacy")["figures"]}
    assert 0 <= priv["membership-inference AUC"] <= 1
    interp = _section(doc, "interpretability")
    assert any("completeness" in f["name"] for f in interp["figures"])
    assert any(t["title"].startswith("deletion test over 2 prompts") for t in interp["tables"])
    versus = next(t for t in interp["tables"] if "'last tokens matter' rule" in t["title"])
    assert versus["note"].startswith("Over ") and "IG better on" not in json.dumps(doc)
    assert all(im.get("caption") for s in doc["sections"] for im in s["images"])  # a sentence under each figure
    assert {im["key"] for im in interp["images"]} >= {"attention-layer-0.png", "attribution.png"}
    html = (full_run / "report.html").read_text(encoding="utf-8")
    # Self-contained: every image inline, nothing fetched from anywhere.
    assert html.count('src="data:image/png;base64,') == sum(len(s["images"]) for s in doc["sections"]) >= 4
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<script" not in html
    md = (full_run / "report.md").read_text(encoding="utf-8")
    assert all(f"## {t}" in md for t in TITLES) and "| builtin:reviews |" in md


def test_schema_rejects_a_broken_report(full_run):
    report(full_run)  # its own report.json: not one another test left (the tests may run apart)
    doc = json.loads((full_run / "report.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    for breakage in (lambda d: d["sections"].pop(), lambda d: d["sections"].reverse(),
                     lambda d: _section(d, "privacy").update(status="missing", missing=[]),
                     lambda d: _section(d, "cost")["figures"][0].pop("unit")):
        broken = json.loads(json.dumps(doc))
        breakage(broken)
        with pytest.raises(jsonschema.ValidationError):
            validate(broken)


def test_cli_report(bare_run):
    from typer.testing import CliRunner

    from candorlm.cli import app

    done = CliRunner().invoke(app, ["report", str(bare_run)])
    assert done.exit_code == 0, done.output
    assert "Generalization" in done.output and "report.html" in done.output


def test_report_opens_in_headless_chromium(full_run, tmp_path):
    report(full_run)
    with headless_chromium(tmp_path / "profile", window="1200,4000") as driver:
        from selenium.webdriver.common.by import By

        driver.get((full_run / "report.html").as_uri())
        headings = [h.text.split()[0] for h in driver.find_elements(By.CSS_SELECTOR, "section h2")]
        assert headings == TITLES
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) >= 4
        broken = driver.execute_script(
            "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length")
        assert broken == 0
        OUTPUT.mkdir(exist_ok=True)
        driver.save_screenshot(str(OUTPUT / "report.png"))
        assert (OUTPUT / "report.png").stat().st_size > 20_000


# ---------------------------------------------------------------- Chinese without a system CJK font

_GLYPHS = r"""
const done = arguments[arguments.length - 1];
(async () => {
  await document.fonts.ready;
  const family = getComputedStyle(document.body).fontFamily;
  const chars = [...new Set([...document.body.innerText].filter((c) => /\p{Script=Han}/u.test(c)))];
  await document.fonts.load(`48px ${family}`, chars.join(""));
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 64;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const draw = (c) => {
    ctx.clearRect(0, 0, 64, 64);
    ctx.font = `48px ${family}`;
    ctx.textBaseline = "top";
    ctx.fillText(c, 4, 4);
    return Array.from(ctx.getImageData(0, 0, 64, 64).data.filter((_, i) => i % 4 === 3)).join(",");
  };
  const notdef = draw("\u{10FFFD}");  // a code point no font has: the missing-glyph box
  const images = chars.map(draw);
  done({ family, chars: chars.join(""), boxes: chars.filter((c, i) => images[i] === notdef).join(""),
         distinct: new Set(images).size,
         fonts: [...document.fonts].map((f) => `${f.family}: ${f.status}`) });
})();
"""


def latin_only_fontconfig(tmp_path: Path) -> Path:
    """A fontconfig that knows one font, DejaVu Sans (matplotlib's own copy): a machine without CJK fonts."""
    import matplotlib

    fonts, cache = tmp_path / "fonts", tmp_path / "cache"
    fonts.mkdir()
    cache.mkdir()
    shutil.copy(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", fonts)
    conf = tmp_path / "fonts.conf"
    conf.write_text(f'<?xml version="1.0"?>\n<!DOCTYPE fontconfig SYSTEM "fonts.dtd">\n<fontconfig>\n'
                    f"<dir>{fonts}</dir>\n<cachedir>{cache}</cachedir>\n</fontconfig>\n", encoding="utf-8")
    return conf


def test_chinese_renders_without_a_system_cjk_font(full_run, tmp_path, monkeypatch):
    """Each Chinese character on the report card and the explain page is drawn in the page's own
    font as a real glyph: not the missing-glyph box, and no two alike. The same check on the page
    without its embedded font finds boxes, so it can fail (and the browser really has no CJK font)."""
    report(full_run)
    pages = {"report": full_run / "report.html", "explain": full_run / "explain" / "explain.html"}
    bare = tmp_path / "report-without-font.html"
    bare.write_text(re.sub(r"<style>\s*/\* Noto Sans CJK.*?</style>", "", pages["report"].read_text(encoding="utf-8"),
                           flags=re.S), encoding="utf-8")
    assert "@font-face" not in bare.read_text(encoding="utf-8")
    for page in pages.values():
        html = page.read_text(encoding="utf-8")
        assert html.count("@font-face") == 1 and "data:font/woff;base64," in html and "Open Font License" in html
    monkeypatch.setenv("FONTCONFIG_FILE", str(latin_only_fontconfig(tmp_path)))
    with headless_chromium(tmp_path / "profile", window="1200,1400") as driver:
        driver.set_script_timeout(60)
        for name, page in pages.items():
            driver.get(page.as_uri())
            seen = driver.execute_async_script(_GLYPHS)
            assert len(seen["chars"]) >= 5, seen
            assert "candorlm CJK: loaded" in seen["fonts"], seen
            assert not seen["boxes"], f"{name}: drawn as boxes: {seen['boxes']}"
            assert seen["distinct"] == len(seen["chars"]), seen
            if name == "report":
                OUTPUT.mkdir(exist_ok=True)
                driver.save_screenshot(str(OUTPUT / "report-no-cjk-font.png"))
        driver.get(bare.as_uri())
        control = driver.execute_async_script(_GLYPHS)
        assert control["boxes"] == control["chars"], "without the embedded font Chinese should be boxes here"


# ---------------------------------------------------------------- numbers that explain themselves


def test_units_a_person_reads():
    from candorlm.report.units import show

    assert show(0.2753, "fraction") == "27.5%" and show(0.000172, "fraction") == "0.0172%" and show(1, "fraction") == "100%"
    assert show(0.000123, "kWh") == "0.123 Wh" and show(2.26e-9, "kWh") == "2.26 µWh"
    assert show(5.85e-5, "kg CO2e") == "58.5 mg CO2e" and show(1e-8, "USD") == "< 0.0001 USD"
    assert show(1.23e9, "FLOP") == "1.23 GFLOP" and show(4.2e-9, "s") == "4.2 ns" and show(5400, "s") == "90.0 min"
    assert show([0.1, 0.25], "fraction") == "[10%, 25%]" and show(None, "s") == "–"


def test_task_results_are_a_table_against_named_baselines():
    from candorlm.report.tasks import task_table

    doc = {"task": "sentiment", "data": "builtin:reviews", "split": {"test": 1752},
           "models": [{"run": "/x/runs/sent", "arch": "decoder", "parameters": 10, "accuracy": 0.7979, "macro_f1": 0.79}],
           "baselines": {"majority": {"predicts": "pos", "accuracy": 0.52, "macro_f1": 0.34},
                         "tfidf_char_1_3_logreg": {"features": 9, "accuracy": 0.834, "macro_f1": 0.83}}}
    t = task_table("/x/runs/sent", doc)
    assert t["columns"] == ["model or baseline", "accuracy", "macro-F1"] and t["units"][1:] == ["fraction"] * 2
    assert [r[0] for r in t["rows"]] == ["sent (fine-tuned, decoder)", "baseline: always the most common label",
                                         "baseline: TF-IDF character 1-3-grams + logistic regression"]
    assert "1,752 held-out test examples" in t["title"]
    assert "79.8%" in t["note"] and "83.4%" in t["note"] and "behind by 3.6 points" in t["note"]
    translate = {"task": "translate", "data": "builtin:pinyin", "split": {"test": 10},
                 "model": {"run": "/x/tr", "char_accuracy": 0.889, "bleu": 40.0},
                 "baseline": {"name": "most frequent character per source token", "char_accuracy": 0.591, "bleu": 9.0}}
    t = task_table("/x/tr", translate)
    assert t["rows"][1][0] == "baseline: most frequent character per source token"
    assert "ahead by 29.8 points" in t["note"] and "baseline: baseline" not in str(t)
    # a chat evaluation with --limit 150 stands on its 150 scored turns, not on the 1,528 test conversations
    chat = {"task": "chat", "data": "builtin:chat", "split": {"test": 1528},
            "model": {"run": "/x/chat", "turns": 150, "right": 0.48},
            "baseline": {"name": "the run fine-tuning started from", "turns": 150, "right": 0.0}}
    t = task_table("/x/chat", chat)
    assert "150 held-out test examples" in t["title"] and t["note"].startswith("On 150 held-out test examples")
    assert "1,528" not in t["title"] + t["note"]


def test_task_table_says_when_test_examples_were_in_the_pretraining_text(tmp_path):
    import json

    from candorlm.report.tasks import task_table

    doc = {"task": "translate", "data": "builtin:pinyin", "split": {"test": 10},
           "model": {"run": str(tmp_path), "char_accuracy": 0.9},
           "baseline": {"name": "most frequent character", "char_accuracy": 0.5}}
    assert "pretrained on" not in task_table(str(tmp_path), doc)["note"]  # no task.json: nothing to say
    found = {"checked": True, "test_examples": 10, "seen": 4, "share": 0.4, "window_chars": 32, "data": "data/pd"}
    (tmp_path / "task.json").write_text(json.dumps({"task": "translate", "pretraining_overlap": found}))
    note = task_table(str(tmp_path), doc)["note"]
    assert note.startswith("On 10 held-out test examples") and "4 of the 10 test examples (40%)" in note
    (tmp_path / "task.json").write_text(json.dumps({"task": "translate", "pretraining_overlap": {**found, "seen": 0}}))
    assert "pretrained on" not in task_table(str(tmp_path), doc)["note"]


def test_captions_say_what_follows():
    from candorlm.config import resolve
    from candorlm.report.compute import gpu_note, loss_caption

    falling = {"train": [(1, 6.0), (30, 5.0)], "val": [(10, 5.9, None), (20, 5.6, None), (30, 5.3, None)]}
    flat = {"train": [(1, 6.0), (30, 5.0)], "val": [(10, 5.9, None), (20, 5.5, None), (30, 5.5, None)]}
    rising = {"train": [(1, 6.0), (30, 4.0)], "val": [(10, 5.9, None), (20, 5.5, None), (30, 5.7, None)]}
    assert "still falling" in loss_caption(falling) and "levelled off" in loss_caption(flat)
    assert "memorize" in loss_caption(rising)
    from candorlm.ledger.estimate import estimate

    tiny = resolve("tiny")
    tiny.model.vocab_size = 8192
    assert "lower bound" in gpu_note(estimate(tiny, tokens=10**6, hardware_name="h100"), 1_900_000)
    big = resolve("base")
    big.model.vocab_size = 32000
    big.train.batch_size, big.train.seq_len = 64, 2048
    note = gpu_note(estimate(big, tokens=10**9, hardware_name="h100"), None)
    assert "lower bound" not in note and "assumed MFU 40%" in note
