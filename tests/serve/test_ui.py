"""The chat page in a real browser: headless Chromium (Debian's package) driven by Playwright
against a live server on 127.0.0.1. It loads the page on a phone-sized screen, enters a key,
sends a message, watches the answer stream in, opens the "why" view and checks the heatmap.
A screenshot of each step goes to test-output/serve-ui/. Every request the page makes must go
to this server (no CDN): anything else is blocked and fails the test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from candorlm.serve.auth import add_key
from tests.conftest import OUTPUT
from tests.serve.serve_helpers import live_server, long_context_run

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = OUTPUT / "serve-ui"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason="Chromium is not installed and could not be: `make test` installs Debian's chromium with apt-get "
           "where apt is available and it runs as root; elsewhere install chromium by hand")


@pytest.fixture(scope="module")
def site(trained_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    run = long_context_run(trained_run, tmp / "run")
    key = add_key(tmp / "keys.json", "browser", "generate,explain", requests_per_minute=None)
    with live_server(run, "--keys", str(tmp / "keys.json"), "--model-name", "ui-test") as base:
        yield base, key


def test_chat_stream_and_why_view_in_headless_chromium(site, tmp_path):
    from playwright.sync_api import sync_playwright

    base, key = site
    SHOTS.mkdir(parents=True, exist_ok=True)
    foreign, problems = [], []
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        try:
            def only_this_server(route):
                if route.request.url.startswith(base):
                    route.continue_()
                else:
                    foreign.append(route.request.url)
                    route.abort()

            context.route("**/*", only_this_server)
            page = context.new_page()
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)

            # 1. The page loads and asks for a key (this server has keys).
            page.goto(f"{base}/")
            page.wait_for_selector("#key-box:not([hidden])")
            assert page.locator("#model-name").inner_text() == "model: ui-test"
            page.screenshot(path=str(SHOTS / "1-loaded.png"), full_page=True)
            page.fill("#api-key", key)
            page.locator("#api-key").dispatch_event("change")
            page.wait_for_function("document.getElementById('why-layer').options.length == 2")
            width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], f"the page is wider than a phone screen: {width}"

            # 2. A system prompt and sampling settings, then a message.
            page.click("#settings summary")
            page.fill("#system", "你是一个新闻助手。")
            page.fill("#temperature", "0.9")
            page.fill("#seed", "3")
            page.fill("#max_tokens", "200")
            page.fill("#input", "请介绍一下今天的新闻")
            page.screenshot(path=str(SHOTS / "2-typed.png"), full_page=True)
            # Record the answer's length at every change while it streams.
            page.evaluate("""() => {
                window.seen = [];
                new MutationObserver(() => {
                    const m = document.querySelector('.msg[data-role=assistant]');
                    if (m) window.seen.push([m.dataset.state, m.querySelector('.text').textContent.length]);
                }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
            }""")
            page.click("#send")

            # 3. Text appears while the answer is still streaming, then the answer completes. The
            # observer above records every change, so a short answer that streams in faster than a
            # poll still shows its growth (a wait for a streaming state alone can miss it, which
            # once failed CI); the poll only says when to take the screenshot.
            page.wait_for_function("""() => {
                const m = document.querySelector('.msg[data-role=assistant]');
                return m && (m.dataset.state !== 'streaming' || m.querySelector('.text').textContent.length > 0);
            }""", polling=50, timeout=60_000)
            page.screenshot(path=str(SHOTS / "3-streaming.png"), full_page=True)
            answer = page.locator(".msg[data-role=assistant]")
            page.wait_for_function("""() => {
                const m = document.querySelector('.msg[data-role=assistant]');
                return m.dataset.state !== 'streaming';
            }""", polling=100, timeout=90_000)
            assert answer.get_attribute("data-state") == "done", answer.locator(".text").inner_text()
            page.screenshot(path=str(SHOTS / "4-answered.png"), full_page=True)
            text = answer.locator(".text").inner_text()
            seen = page.evaluate("window.seen")
            growing = sorted({n for state, n in seen if state == "streaming" and n > 0})
            assert len(text) > 0 and int(answer.get_attribute("data-chunks")) > 3
            assert len(growing) >= 3, f"the answer did not grow piece by piece: {seen[:20]}"

            # 4. The "why" view: attribution over the prompt and the attention heatmap.
            answer.locator(".why-btn").click()
            page.wait_for_selector("#why[data-loaded='1']")
            page.locator("#why").scroll_into_view_if_needed()
            n_tokens = int(page.locator("#heatmap").get_attribute("data-rendered"))
            attributions = page.locator("#why-attribution .attr-token").count()
            targets = page.locator("#why-target button").count()
            # The model reads up to the explained token (the first of the answer): the prompt, then it.
            assert n_tokens == attributions + 1 and attributions > 5 and targets > 2
            inked = page.evaluate("""() => {
                const c = document.getElementById('heatmap');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0;
                for (let i = 0; i < d.length; i += 4) if (d[i] < 250 || d[i + 1] < 250) n++;
                return n / (d.length / 4);
            }""")
            assert 0.3 < inked < 0.9, inked  # the lower triangle is drawn, the upper one blank
            assert "probability" in page.locator("#why-summary").inner_text()
            page.screenshot(path=str(SHOTS / "5-why.png"), full_page=True)

            # 5. Another output token, another head: the view follows.
            page.locator("#why-target button").nth(2).click()
            page.wait_for_selector("#why-target button:nth-child(3)[aria-pressed='true']")
            page.wait_for_selector("#why[data-loaded='1']")
            assert page.locator("#why-attribution .attr-token").count() == attributions + 2
            page.select_option("#why-head", "1")
            page.wait_for_selector("#why[data-loaded='1']")
            page.screenshot(path=str(SHOTS / "6-why-token-2-head-1.png"), full_page=True)
        finally:
            context.close()
    assert foreign == [], f"the page tried to reach beyond this server: {foreign}"
    assert problems == [], problems
