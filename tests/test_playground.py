"""The playground page, end to end in a real headless Chromium (Debian's, driven by Playwright): it loads, a
prompt streams its continuation, the next-token chart is drawn and changes when a slider moves, a generated
token shows its alternatives, attention draws, and the chat tab answers. A screenshot is kept."""

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from helpers import tiny, write_corpus

import gptlab
from gptlab.chat.config import Finetune
from gptlab.chat.finetune import finetune
from gptlab.serve.app import create_app
from gptlab.serve.engine import Served

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: apt-get install chromium "
                                                         "(.ci/run installs it)")
ARTEFACTS = Path(__file__).parent / "artefacts"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    import uvicorn

    folder = tmp_path_factory.mktemp("playground")
    corpus = write_corpus(folder)
    gptlab.train(tiny(corpus, block_size=32, max_iters=30), out=folder / "base", quiet=True)
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": "the cat", "completion": "sat on a mat"}) + "\n" for _ in range(20)))
    finetune(Finetune(base=str(folder / "base"), data=str(data)),
             dict(max_iters=60, batch_size=8, lr=1e-2, device="cpu", dtype="float32", eval_interval=1000),
             out=folder / "chat", quiet=True)
    served = {name: Served(name, gptlab.load_run(folder / name, device="cpu")) for name in ("base", "chat")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(served), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


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
