"""explain.html in a real browser: headless Chromium (Debian's package) loads it offline, shows the
Chinese tokens with real glyphs and a heatmap, and the layer and head buttons switch the map.
The screenshot is kept in test-output/explain.png."""

import json

import pytest

from tests.conftest import OUTPUT, headless_chromium


@pytest.fixture(scope="module")
def page(trained_run, tmp_path_factory):
    from candorlm.explain import explain

    out = tmp_path_factory.mktemp("explain-html")
    doc = explain(trained_run, prompt="人民日报记者", method="attention,lens,ig", out=out)
    with headless_chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        driver.get((out / "explain.html").as_uri())
        yield driver, doc


def test_page_shows_chinese_tokens_and_a_heatmap(page):
    from selenium.webdriver.common.by import By

    driver, doc = page
    chips = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#tokens span")]
    assert chips == doc["tokens"] and any("人" in c or "记" in c for c in chips)
    cells = driver.find_elements(By.CSS_SELECTOR, "#attn-map td")
    T = len(doc["tokens"])
    assert len(cells) == T * T
    colours = {c.value_of_css_property("background-color") for c in cells}
    assert len(colours) > 3  # a heatmap, not a blank table
    # The browser draws real glyphs: distinct characters give distinct pixels (boxes would not).
    distinct = driver.execute_script("""
        const draw = (ch) => { const c = document.createElement('canvas'); c.width = c.height = 40;
          const g = c.getContext('2d'); g.font = '32px ' + getComputedStyle(document.body).fontFamily;
          g.fillText(ch, 2, 34); return Array.from(g.getImageData(0, 0, 40, 40).data).join(','); };
        return new Set(['人', '民', '日', '报']).size === new Set(['人', '民', '日', '报'].map(draw)).size;""")
    assert distinct
    OUTPUT.mkdir(exist_ok=True)
    driver.save_screenshot(str(OUTPUT / "explain.png"))
    assert (OUTPUT / "explain.png").stat().st_size > 20_000


def test_buttons_switch_layers_and_heads(page):
    from selenium.webdriver.common.by import By

    driver, doc = page
    patterns = doc["attention"]["maps"][0]["patterns"]
    driver.find_element(By.ID, "layer-1").click()
    driver.find_element(By.ID, "head-1").click()
    table = driver.find_element(By.ID, "attn-map")
    assert (table.get_attribute("data-layer"), table.get_attribute("data-head")) == ("1", "1")
    assert "on" in driver.find_element(By.ID, "layer-1").get_attribute("class")
    T = len(doc["tokens"])
    shown = [float(c.get_attribute("data-v") or 0) for c in driver.find_elements(By.CSS_SELECTOR, "#attn-map td")]
    expected = [v for row in patterns[1][1] for v in row]
    assert shown == pytest.approx(expected, abs=1e-6)
    assert patterns[1][1] != patterns[0][0]
    # The logit lens: a click on a cell lists that layer's top guesses.
    driver.find_element(By.CSS_SELECTOR, f'#lens-map td[data-row="1"][data-col="{T - 1}"]').click()
    items = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#lens-detail li")]
    assert len(items) == len(doc["lens"]["top_tokens"][1][T - 1])
    assert items[0].startswith(doc["lens"]["top_tokens"][1][T - 1][0])
    assert json.loads(driver.find_element(By.ID, "explain-data").get_attribute("textContent"))["prompt"] == doc["prompt"]
