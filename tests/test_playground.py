"""The playground page, end to end in a real headless Chromium (Debian's, driven by Playwright): it loads, a
prompt streams its continuation, the next-token chart is drawn and changes when a slider moves, a generated
token shows its alternatives, attention draws (with its colour scale, saying how many tokens it shows), nothing
of the old model stays on screen when the model changes, the chat tab answers (the chart, which follows the
Complete tab's prompt, makes way for a note), and a server with an API key says how to open the page. A
screenshot is kept."""

import json
import shutil
from pathlib import Path

import pytest
from helpers import base_and_chat, serving, tiny

from gptlab.serve.app import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: apt-get install chromium "
                                                          "(.ci/run installs it)")]
ARTEFACTS = Path(__file__).parent / "artefacts"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The tiny "base" and "chat" runs (context 32, 1 layer of 2 heads), "wide" (context 64, 2 layers of 4 heads)
    and "gru" (a recurrent net: no attention), each a few steps of training."""
    import gptlab
    from gptlab.serve.engine import Served

    folder = tmp_path_factory.mktemp("playground")
    models = base_and_chat(folder, base_iters=30)
    corpus = folder / "corpus.txt"
    gptlab.train(tiny(corpus, block_size=64, n_layer=2, n_head=4, max_iters=3), out=folder / "wide", quiet=True)
    gru = {k: v for k, v in tiny(corpus, max_iters=3).items() if k not in ("n_head", "block_size")}
    gptlab.train({**gru, "model": "gru", "n_hidden": 16, "seq_len": 16}, out=folder / "gru", quiet=True)
    for name in ("wide", "gru"):
        models[name] = Served(name, gptlab.load_run(folder / name, device="cpu"))
    return models


@pytest.fixture(scope="module")
def url(served):
    with serving(create_app(served)) as url:
        yield url + "/"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()  # each test its own page, nothing shared but the browser's start-up
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def bars(page) -> list[str]:
    return page.locator("#chart rect").evaluate_all("rects => rects.map(r => r.getAttribute('height'))")


def options(page, select: str) -> list[str]:
    return page.locator(f"{select} option").all_inner_texts()


def show_attention(page) -> str:
    """Click Show and wait for the map's note (it says how many tokens it draws); the note."""
    page.evaluate("document.getElementById('attention-note').textContent = ''")
    page.click("#show-attention")
    page.wait_for_function("document.getElementById('attention-note').textContent.includes('tokens')")
    return page.inner_text("#attention-note")


def test_generate_stream_chart_slider_alternatives_attention_and_chat(url, page):
    page.goto(url)
    page.wait_for_selector("#model option", state="attached")
    # no map yet: no empty square, a note saying what Show would draw
    assert not page.is_visible("#heatmap") and not page.is_visible("#attention-scale")
    assert page.inner_text("#attention-note") == "press Show to draw layer 0, head 0"
    assert page.is_hidden("#banner")
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
    # the prompt and 100 generated characters are more than the model's context of 32: the note says so
    assert page.inner_text("#attention-note").startswith("layer 0, head 0, the last 32 tokens, all the model sees "
                                                         "(its context; the text is longer)")
    assert page.is_visible("#heatmap") and page.is_visible("#attention-scale")
    assert 0 < float(page.inner_text("#scale-max")) <= 1 and page.inner_text("#scale-min") == "0"
    ARTEFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / "playground.png"), full_page=True)
    page.select_option("#model", "chat")
    # nothing of base's stays: no map, no alternatives; the layer and head choices are chat's
    assert not page.is_visible("#heatmap") and not page.is_visible("#attention-scale")
    assert page.inner_text("#attention-note") == "press Show to draw layer 0, head 0"
    assert page.inner_text("#alternatives") == ""
    assert options(page, "#layer") == ["0"] and options(page, "#head") == ["0", "1"]
    assert page.is_visible("#chart")
    page.click("#tab-chat")
    # the chart and the map follow the Complete tab's prompt: while the chat is open a note says so instead
    assert not page.is_visible("#chart") and not page.is_visible("#entropy") and not page.is_visible("#show-attention")
    assert "follows the Complete tab's prompt" in page.inner_text("#next")
    assert "follows the Complete tab's prompt" in page.inner_text("#attention")
    page.fill("#chat-input", "the cat")
    page.locator("#chat-temperature, #temperature").first.fill("0.05")
    page.click("#chat-form button")
    page.wait_for_function("document.querySelector('#messages .assistant') && "
                           "document.querySelector('#messages .assistant').textContent.includes('sat on a mat')")
    page.click("#tab-play")  # back: the chart again, drawn for this model
    assert page.is_visible("#chart") and not page.is_visible("#next .chat-note")
    page.wait_for_function("document.querySelectorAll('#chart rect').length === 10")


def test_the_map_says_what_it_draws_and_follows_the_model(url, page):
    page.goto(url)
    page.wait_for_selector("#model option", state="attached")
    page.select_option("#model", "wide")  # 2 layers of 4 heads, context 64
    assert options(page, "#layer") == ["0", "1"] and options(page, "#head") == ["0", "1", "2", "3"]
    page.select_option("#layer", "1")
    page.select_option("#head", "3")
    assert page.inner_text("#attention-note") == "press Show to draw layer 1, head 3"
    page.fill("#prompt", "the cat")
    assert show_attention(page).startswith("layer 1, head 3, all 7 tokens: each row")
    assert page.is_visible("#heatmap") and 0 < float(page.inner_text("#scale-max")) <= 1
    text = "the cat sat on a mat and then the dog ran far away under"  # 56 characters, one token each
    page.fill("#prompt", text)
    note = show_attention(page)
    assert note.startswith(f"layer 1, head 3, the last 48 of {len(text)} tokens: each row"), note
    assert "not drawn" in note
    page.fill("#prompt", text + " the old tree")  # 69: more than the context
    assert show_attention(page).startswith("layer 1, head 3, the last 48 of the 64 tokens the model sees (its context")

    page.select_option("#model", "gru")  # no attention: a note instead of controls
    assert not page.is_visible("#show-attention") and not page.is_visible("#layer") and not page.is_visible("#heatmap")
    assert page.inner_text("#attention-note") == "gru (gru) has no attention layers: there is no map to show"
    page.select_option("#model", "base")  # back: the controls, base's choices, no map
    assert page.is_visible("#show-attention") and not page.is_visible("#heatmap")
    assert options(page, "#layer") == ["0"] and options(page, "#head") == ["0", "1"]
    assert page.inner_text("#attention-note") == "press Show to draw layer 0, head 0"


def test_a_server_with_an_api_key_says_how_to_open_the_page(served, page):
    with serving(create_app(served, api_key="k")) as base:
        page.goto(base + "/")  # no key: every call is refused; the page says what to do instead of staying blank
        page.wait_for_selector("#banner", state="visible")
        assert "This server needs an API key: open /?key=YOUR_KEY" in page.inner_text("#banner")
        assert not page.is_visible("#prompt")
        page.goto(base + "/?key=wrong")
        page.wait_for_selector("#banner", state="visible")
        assert "The API key in this page's address was refused: open /?key=YOUR_KEY" in page.inner_text("#banner")

        page.goto(base + "/?key=k")  # the right key: the page works, no message
        page.wait_for_selector("#model option", state="attached")
        page.fill("#prompt", "the c")
        page.wait_for_function("document.querySelectorAll('#chart rect').length === 10")
        assert page.is_hidden("#banner")
        refused = {"error": {"message": "a valid API key is needed (Authorization: Bearer KEY)",
                             "type": "authentication_error", "param": None, "code": None}}
        page.route("**/v1/gptlab/attention", lambda route: route.fulfill(status=401, content_type="application/json",
                                                                         body=json.dumps(refused)))
        page.click("#show-attention")  # a later refusal (the server restarted with another key, say) says so too
        page.wait_for_function("document.getElementById('attention-note').textContent.includes('API key')")
        assert page.inner_text("#attention-note") == refused["error"]["message"]
        assert page.is_visible("#banner") and "refused: open /?key=YOUR_KEY" in page.inner_text("#banner")
