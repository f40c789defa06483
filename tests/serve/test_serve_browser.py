"""`charlm serve` in a real headless Chromium (Debian's, driven through /usr/bin/chromedriver)."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    env = {k: v for k, v in os.environ.items() if k != "CHARLM_DATA_HOME"}
    env.update(COLUMNS="200", NO_COLOR="1")
    charlm = [sys.executable, "-m", "charlm"]
    subprocess.run([*charlm, "train", "--config", "tiny", "--quiet", "--set", "train.max_steps=40"],
                   cwd=root, env=env, check=True, capture_output=True, timeout=300)
    port = free_port()
    process = subprocess.Popen([*charlm, "serve", "runs/tiny", "--port", str(port)], cwd=root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"charlm serve exited: {process.stderr.read()}")
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1100,900", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_typed_prefix_streams_generated_text_into_the_page(server, browser, tmp_path):
    browser.get(server)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#run option").text == "tiny")
    browser.find_element(By.ID, "prefix").send_keys("the time")
    length = browser.find_element(By.ID, "length")
    length.clear()
    length.send_keys("120")
    browser.find_element(By.ID, "seed").send_keys("5")
    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: d.find_element(By.ID, "gen-status").text.startswith("done"))
    assert browser.find_element(By.ID, "out-prefix").text == "the time"
    assert len(browser.find_element(By.ID, "out-text").get_attribute("textContent")) == 120
    assert browser.find_element(By.ID, "error").get_attribute("hidden")
    shot = tmp_path / "generate.png"
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_score_view_colours_one_span_per_scored_character(server, browser, tmp_path):
    browser.get(server)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#run option").text == "tiny")
    browser.find_element(By.CSS_SELECTOR, "nav button[data-view=score]").click()
    text = "the time traveller smiled at us"
    browser.find_element(By.ID, "score-text").send_keys(text)
    browser.find_element(By.ID, "score-go").click()
    wait.until(lambda d: "perplexity" in d.find_element(By.ID, "score-totals").text)
    spans = browser.find_elements(By.CSS_SELECTOR, "#score-out span.tok")
    assert len(spans) == len(text)
    coloured = [s for s in spans if s.value_of_css_property("background-color") not in ("rgba(0, 0, 0, 0)", "")]
    assert len(coloured) == len(text) - 1  # the first character has no history, so no colour
    browser.save_screenshot(str(Path(tmp_path) / "score.png"))


def test_a_bad_prefix_shows_one_error_line_in_the_page(server, browser):
    browser.get(server)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#run option").text == "tiny")
    browser.find_element(By.ID, "prefix").send_keys("x" * 3)
    browser.find_element(By.ID, "length").clear()
    browser.find_element(By.ID, "length").send_keys("999999")
    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: not d.find_element(By.ID, "error").get_attribute("hidden"))
    assert browser.find_element(By.ID, "error").text == "error: length must be between 1 and 10000, got 999999"
