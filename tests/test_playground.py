"""The playground page, end to end in a real headless Chromium (Debian's, driven by Playwright): it loads, a
prompt streams its continuation, the next-token chart is drawn and changes when a slider moves, a generated
token shows its alternatives, attention draws, and the chat tab answers. A screenshot is kept."""

import json
import shutil
from pathlib import Path

import pytest
from helpers import base_and_chat

from gptlab.serve.app import create_app, serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: apt-get install chromium "
                                                         "(.ci/run installs it)")
ARTEFACTS = Path(__file__).parent / "artefacts"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with serving(create_app(base_and_chat(tmp_path_factory.mktemp("playground"), base_iters=30))) as url:
        yield url + "/"


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.set_default_timeout(15_000)
        yield page
        browser.close()


def bars(page) -> list[str]:
    return page.locator("#chart rect").evaluate_all("rects => rects.map(r => r.getAttribute('height'))")


def test_generate_stream_chart_slider_alternatives_attention_and_chat(url, page):
    page.goto(url)
    page.wait_for_selector("#model option", state="attached")
    page.fill("#prompt", "the c")
    page.wait_for_function("document.querySelectorAll('#chart rect').length === 10")
    before = bars(page)
    page.locator("#temperature").fill("2")  # hotter: the chart flattens
    page.wait_for_function(f"JSON.stringify([...document.querySelectorAll('#chart rect')].map(r => "
                           f"r.getAttribute('height'))) !== {json.dumps(json.dumps(before, separators=(',', ':')))}")
    assert float(bars(page)[0]) < float(before[0])
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('#output .token').length > 5 && "
                           "!document.getElementById('generate').disabled")
    page.locator("#output .token").first.click()
    assert "was chosen from" in page.inner_text("#alternatives")
    page.click("#show-attention")
    page.wait_for_function("document.getElementById('attention-note').textContent.includes('tokens')")
    ARTEFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / "playground.png"), full_page=True)
    page.select_option("#model", "chat")
    page.click("#tab-chat")
    page.fill("#chat-input", "the cat")
    page.locator("#chat-temperature, #temperature").first.fill("0.05")
    page.click("#chat-form button")
    page.wait_for_function("document.querySelector('#messages .assistant') && "
                           "document.querySelector('#messages .assistant').textContent.includes('sat on a mat')")
