"""The chat page at `/`, in headless Chromium: type a prompt, watch the reply stream in, take a screenshot."""
import os
import shutil
import time

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (pip install -e '.[test]')")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip("no Chromium: apt-get install -y chromium chromium-driver (.ci/run does)", allow_module_level=True)

import lmkit  # noqa: E402
from lmkit.serve import create_app  # noqa: E402
from test_serve import live_server  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1000,700"]


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager look for a driver online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(fn, timeout=30, every=0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting in the browser")


def test_chat_page_streams_a_reply(trained_run, browser, tmp_path):
    lm = lmkit.load(trained_run)
    forward = lm.model.forward
    lm.model.forward = lambda *a, **k: (time.sleep(0.03), forward(*a, **k))[1]  # slow enough to watch it stream
    block = lm.model.config.block_size
    text, stops = lm.chat_prompt([("user", "To be")])
    room = block - len(lm.encode_prompt(text))
    expected = lm.generate(text, max_new_tokens=room, temperature=0, stop=stops)
    with live_server(create_app(lm)) as url:
        browser.get(url + "/")
        wait_for(lambda: lm.path.name in browser.find_element("id", "model").text)
        browser.execute_script("document.getElementById('temperature').value = '0';")
        browser.find_element("id", "prompt").send_keys("To be")
        browser.find_element("id", "send").click()
        reply = "document.querySelector('.msg.assistant') && document.querySelector('.msg.assistant').textContent"
        done = "document.querySelector('.msg.assistant[data-done]') !== null"
        seen = set()
        while not browser.execute_script("return " + done):
            seen.add(browser.execute_script("return " + reply) or "")
            time.sleep(0.01)
        final = browser.execute_script("return " + reply)
        assert final == expected and final.strip()
        partial = {s for s in seen if s and s != final}
        assert partial and all(final.startswith(s) for s in partial), "the reply did not arrive piece by piece"
        assert browser.find_element("css selector", ".msg.user").text == "To be"
        # text is shown as text, never parsed as HTML; the whole conversation no longer fits the 32-token
        # context, so the server (truncate_history) leaves out the oldest turns instead of answering 400
        browser.find_element("id", "prompt").send_keys("<b>x</b>床")
        browser.find_element("id", "send").click()
        wait_for(lambda: browser.execute_script("return document.querySelectorAll('.msg.assistant[data-done]').length") == 2)
        assert browser.execute_script("return document.querySelectorAll('#messages b').length") == 0
        assert browser.find_elements("css selector", ".msg.user")[1].text == "<b>x</b>床"
        assert not browser.find_elements("css selector", ".msg.error")
        notes = browser.find_elements("css selector", ".msg.note")  # and it says so, once, above the reply
        assert len(notes) == 1 and "oldest message" in notes[0].text and "left out" in notes[0].text
        shot = tmp_path / "chat.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 5000
