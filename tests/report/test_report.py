"""The report card: five sections from a run's files, each with real figures where the data
exists and the producing command where it does not; report.json validates against the schema;
report.html is self-contained and, in headless Chromium, shows every section and every image
(screenshot in test-output/report.png)."""

import json
import re
import shutil

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
    gpu_rows = [r for r in cost["tables"][0]["rows"] if "profile" in r[0]]
    assert len(gpu_rows) == 2 and all(r[1] > 0 for r in gpu_rows)
    assert any(f["name"] == "throughput" for f in compute["figures"])
    for sid, command in (("interpretability", "candorlm explain"), ("generalization", "candorlm eval"),
                         ("privacy", "candorlm audit")):
        s = _section(doc, sid)
        assert s["status"] in ("missing", "partial")
        assert any(command in m["command"] for m in s["missing"]), s["missing"]
    html = (bare_run / "report.html").read_text(encoding="utf-8")
    assert "candorlm eval" in html and "candorlm audit" in html


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
    assert any(t["title"].startswith("faithfulness over 2 prompts") for t in interp["tables"])
    assert {im["key"] for im in interp["images"]} >= {"attention-layer-0.png", "attribution.png"}
    html = (full_run / "report.html").read_text(encoding="utf-8")
    # Self-contained: every image inline, nothing fetched from anywhere.
    assert html.count('src="data:image/png;base64,') == sum(len(s["images"]) for s in doc["sections"]) >= 4
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<script" not in html
    md = (full_run / "report.md").read_text(encoding="utf-8")
    assert all(f"## {t}" in md for t in TITLES) and "| builtin:reviews |" in md


def test_schema_rejects_a_broken_report(full_run):
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
