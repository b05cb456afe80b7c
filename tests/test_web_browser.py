"""The page in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium): search, pictures that load, play from the moment, upload, more like this,
the runs page. Screenshots go to ``MEDIABIND_ARTIFACTS`` (default ``test-artifacts/``),
never into git."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from search_helpers import TARGET, TEXT, WINDOW_START_S
from web_helpers import web_store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
WAIT_S = 60.0  # generous: CI machines are busy


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return web_store(tmp_path_factory.getbasetemp() / "web-store")


@pytest.fixture(scope="module")
def server(store) -> Iterator[str]:
    import uvicorn

    from flows.commands.ui import bound_socket
    from web.app import create_app

    sock = bound_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(store.settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the web server did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or DRIVER is None:  # scripts/test.sh installs both; a gap fails
        pytest.fail("chromium and chromium-driver are needed (apt install chromium "
                    "chromium-driver; scripts/test.sh does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--mute-audio",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_script_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture
def shots(request, browser):
    folder = Path(os.environ.get("MEDIABIND_ARTIFACTS", "test-artifacts")) / "web"
    folder.mkdir(parents=True, exist_ok=True)
    yield
    browser.save_screenshot(str(folder / f"{request.node.name}.png"))


def wait_for(browser, condition, what: str):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The page redraws its results: an element read mid-redraw is asked again.
    wait = WebDriverWait(browser, WAIT_S, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(condition, message=f"waited for {what}")


def cards(browser) -> list:
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, "#results .hit")


def search(browser, server: str, text: str) -> list:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{server}/")
    box = browser.find_element(By.ID, "q")
    box.send_keys(text, Keys.ENTER)
    wait_for(browser, lambda b: cards(b), "results")
    return cards(browser)


def test_a_typed_query_shows_results_with_pictures_that_loaded(browser, server, shots):
    from selenium.webdriver.common.by import By

    found = search(browser, server, TEXT)
    assert len(found) >= 8 and f"text={TEXT.split()[0]}" in browser.current_url
    pictures = browser.find_elements(By.CSS_SELECTOR, "#results .hit img.thumb")
    wait_for(browser, lambda b: all(b.execute_script(
        "return arguments[0].complete", img) for img in pictures), "pictures")
    widths = [browser.execute_script("return arguments[0].naturalWidth", img) for img in pictures]
    assert len(widths) >= 7 and all(w > 0 for w in widths)  # every kind but the text


def test_play_starts_at_the_matched_moment(browser, server, store, shots):
    upload(browser, server, store.queries / "window.wav")
    top = cards(browser)[0]
    assert top.get_attribute("data-start-s") == str(int(WINDOW_START_S))
    from selenium.webdriver.common.by import By

    top.find_element(By.CSS_SELECTOR, "button.play").click()
    player = browser.find_element(By.ID, "player-video")
    wait_for(browser, lambda b: b.execute_script(
        "const v = arguments[0]; return v.readyState >= 2 && !v.paused", player), "playing")
    now = browser.execute_script("return arguments[0].currentTime", player)
    assert abs(now - WINDOW_START_S) <= 0.5
    error = browser.execute_script("return arguments[0].error && arguments[0].error.code", player)
    assert error is None


def upload(browser, server: str, path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/")
    browser.find_element(By.ID, "files").send_keys(str(path))
    wait_for(browser, lambda b: path.name in b.find_element(By.ID, "chips").text, "the chip")
    browser.find_element(By.ID, "go").click()
    wait_for(browser, lambda b: cards(b), "results")


def test_an_uploaded_sound_cut_from_a_video_ranks_that_video_first(browser, server, store,
                                                                    shots):
    from selenium.webdriver.common.by import By

    upload(browser, server, store.queries / "window.wav")
    top = cards(browser)[0]
    assert top.find_element(By.CSS_SELECTOR, ".name").text == TARGET


def test_more_like_this_finds_the_result_itself_first(browser, server, shots):
    from selenium.webdriver.common.by import By

    found = search(browser, server, TEXT)
    chosen = found[3]
    item = chosen.get_attribute("data-item-id")
    chosen.find_element(By.CSS_SELECTOR, "button.like").click()
    wait_for(browser, lambda b: "like=" in b.current_url and cards(b)
             and cards(b)[0].get_attribute("data-item-id") == item, "similar results")
    browser.refresh()  # the search is in the URL: it comes back as it was
    wait_for(browser, lambda b: cards(b) and cards(b)[0].get_attribute("data-item-id") == item,
             "the shared search")


def test_the_runs_page_lists_runs_and_shows_one(browser, server, shots):
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/runs")
    wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#runs tbody a"), "runs")
    links = browser.find_elements(By.CSS_SELECTOR, "#runs tbody a")
    assert len(links) == 2
    run_id = links[0].text
    links[0].click()
    wait_for(browser, lambda b: b.find_element(By.ID, "run-summary").text.startswith(
        f"run {run_id}"), "the run's summary")
