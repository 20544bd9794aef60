"""The console page (GET /console) in a real headless chromium driven by selenium, against the local
stack with an API key: it lists tasks as they finish, starts a preheat from its form, shows why a task
failed, asks for the key once and keeps it for the tab only. Every test saves a screenshot in its
tmp_path (look at them)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from local.stack import LocalStack
from tests.support.http_server import QuietHandler, serve

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-stack"), pytest.mark.timeout(180)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
API_KEY = "console-key-" + secrets.token_hex(12)
PAYLOAD = b"console test file " * 20_000
WAIT = 30  # seconds a condition may take on a loaded 2-core machine; never a measured duration


class Files:
    """Serves ``/ok-<n>.bin``; ``/held-<n>.bin`` only once ``release`` is set; anything else is 404."""

    def __init__(self) -> None:
        self.release = threading.Event()
        files = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                name = self.path.split("?", 1)[0]
                if name.startswith("/held-"):
                    files.release.wait(WAIT)
                if not name.startswith(("/ok-", "/held-")):
                    self.send_error(404, "no such file")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                # The worker reads a byte of a file to resolve it, then hangs up.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(PAYLOAD)

        self._server = serve(Handler, "console-files")

    def url(self, name: str) -> str:
        return f"{self._server.url}/{name}"

    def close(self) -> None:
        self.release.set()
        self._server.close()


@pytest.fixture(scope="module")
def files() -> Iterator[Files]:
    served = Files()
    yield served
    served.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, files: Files) -> Iterator[LocalStack]:
    if os.environ.get("PREHEAT_SKIP_BROWSER") == "1":
        pytest.skip("PREHEAT_SKIP_BROWSER=1: the console's browser tests are skipped")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail(
            "chromium and chromium-driver are not installed: run `sudo apt-get install -y chromium "
            "chromium-driver` (or `make test`, which does), or set PREHEAT_SKIP_BROWSER=1 to skip "
            "these tests",
            pytrace=False,
        )
    with LocalStack(
        cache_dir=tmp_path_factory.mktemp("supernode-cache"),
        visibility_timeout=5,
        extra_env={"PREHEAT_POLL_MAX_DELAY": "1"},
        api_key=API_KEY,
    ) as running:
        yield running


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,860",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, condition: Any, timeout: float = WAIT) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def by_id(driver: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def row(driver: Any, task_id: str) -> Any:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, f'#tasks tbody tr[data-task-id="{task_id}"]')
    return found[0] if found else None


def row_text(driver: Any, task_id: str) -> str:
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        found = row(driver, task_id)
        return "" if found is None else str(found.text)
    except StaleElementReferenceException:  # the 2 s refresh replaced it under us
        return ""


def open_console(driver: Any, stack: LocalStack) -> None:
    """Open the page and type the key once, as an operator of an API_KEY stack does."""
    driver.get(f"{stack.api_url}/console")
    wait(driver, lambda d: by_id(d, "keybar").is_displayed())
    by_id(driver, "api-key").send_keys(API_KEY)
    by_id(driver, "key-form").submit()
    wait(driver, lambda d: not by_id(d, "keybar").is_displayed())


def submit(stack: LocalStack, url: str) -> str:
    answer = requests.post(
        f"{stack.api_url}/api/preheat",
        json={"type": "file", "url": url},
        headers={"x-api-key": API_KEY},
        timeout=10,
    ).json()
    assert answer["code"] == 200, answer
    task_id: str = answer["data"]["taskId"]
    return task_id


def test_it_lists_tasks_as_they_finish(browser: Any, stack: LocalStack, files: Files, tmp_path: Path) -> None:
    files.release.clear()
    open_console(browser, stack)
    quick = submit(stack, files.url(f"ok-{secrets.token_hex(4)}.bin"))
    held = submit(stack, files.url(f"held-{secrets.token_hex(4)}.bin"))
    # The quick one finishes while the other is still RUNNING: the page shows both, unasked.
    wait(browser, lambda d: "SUCCESS" in row_text(d, quick) and "RUNNING" in row_text(d, held))
    assert "1 of 1" in row_text(browser, quick)
    browser.save_screenshot(str(tmp_path / "running.png"))
    files.release.set()
    wait(browser, lambda d: "SUCCESS" in row_text(d, held))
    text = row_text(browser, held)
    assert "1 of 1" in text
    assert " s" in text  # its duration
    # Newest first.
    ids = [r.get_attribute("data-task-id") for r in browser.find_elements("css selector", "#tasks tbody tr")]
    assert ids.index(held) < ids.index(quick)
    browser.save_screenshot(str(tmp_path / "finished.png"))


def test_it_starts_a_preheat_from_the_form_and_sees_it_reach_success(
    browser: Any, stack: LocalStack, files: Files, tmp_path: Path
) -> None:
    from selenium.webdriver.support.ui import Select

    canary = "Bearer console-canary-" + secrets.token_hex(8)
    open_console(browser, stack)
    url = files.url(f"ok-form-{secrets.token_hex(4)}.bin")
    Select(by_id(browser, "f-type")).select_by_visible_text("file")
    by_id(browser, "f-url").send_keys(url)
    by_id(browser, "f-auth").send_keys(canary)
    by_id(browser, "preheat-form").find_element("css selector", "button[type=submit]").click()
    started = wait(browser, lambda d: (t := by_id(d, "form-result").text).startswith("Started ") and t)
    task_id = started.removeprefix("Started ")
    wait(browser, lambda d: "SUCCESS" in row_text(d, task_id))
    # Its detail: the blob, the supernode it landed on, its state.
    wait(browser, lambda d: "SUCCESS" in by_id(d, "blobs").text and url in by_id(d, "detail").text)
    detail = by_id(browser, "detail").text
    assert stack.supernodes[0] in detail
    assert task_id in detail
    # The task id a node will compute for the blob, as the status detail gives it (whole on hover),
    # without pushing the page wider than the window.
    status = requests.get(
        f"{stack.api_url}/api/preheat/{task_id}?detail=true", headers={"x-api-key": API_KEY}, timeout=10
    ).json()
    node_task_id = status["data"]["blobs"][0]["nodeTaskId"]
    assert node_task_id[:16] in by_id(browser, "blobs").text
    titles = browser.execute_script(
        "return [...document.querySelectorAll('#blobs td span')].map((s) => s.title)"
    )
    assert node_task_id in titles
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    # The credential went to the API and nowhere on the page.
    assert by_id(browser, "f-auth").get_attribute("value") == ""
    assert canary not in browser.page_source
    assert "console-canary" not in browser.page_source
    browser.save_screenshot(str(tmp_path / "form.png"))


def test_it_shows_why_a_task_failed_and_filters_by_status(
    browser: Any, stack: LocalStack, files: Files, tmp_path: Path
) -> None:
    from selenium.webdriver.support.ui import Select

    ok = submit(stack, files.url(f"ok-{secrets.token_hex(4)}.bin"))
    missing = submit(stack, files.url(f"missing-{secrets.token_hex(4)}.bin"))
    open_console(browser, stack)
    wait(browser, lambda d: "FAIL" in row_text(d, missing) and "SUCCESS" in row_text(d, ok))
    assert "404" in row_text(browser, missing)  # the task's msg, under its URL
    row(browser, missing).click()
    wait(browser, lambda d: missing in by_id(d, "detail").text and "404" in by_id(d, "detail-fields").text)
    Select(by_id(browser, "status-filter")).select_by_visible_text("FAIL")
    wait(browser, lambda d: row(d, ok) is None and row(d, missing) is not None)
    statuses = {r.text for r in browser.find_elements("css selector", "#tasks tbody .status")}
    assert statuses == {"FAIL"}
    browser.save_screenshot(str(tmp_path / "fail.png"))


def test_it_asks_for_the_api_key_once_and_keeps_it_for_the_tab_only(
    browser: Any, stack: LocalStack, files: Files, tmp_path: Path
) -> None:
    task_id = submit(stack, files.url(f"ok-{secrets.token_hex(4)}.bin"))
    browser.get(f"{stack.api_url}/console")
    wait(browser, lambda d: "wants its key" in by_id(d, "notice").text)
    browser.save_screenshot(str(tmp_path / "asks-for-key.png"))
    by_id(browser, "api-key").send_keys("not-the-key")
    by_id(browser, "key-form").submit()
    wait(browser, lambda d: "refused this key" in by_id(d, "notice").text)
    by_id(browser, "api-key").send_keys(API_KEY)
    by_id(browser, "key-form").submit()
    wait(browser, lambda d: row(d, task_id) is not None)
    assert by_id(browser, "notice").text == ""
    assert "API key set" in by_id(browser, "key-state").text
    # The key is in this tab's sessionStorage, never on the page.
    assert browser.execute_script("return sessionStorage.getItem('preheat.apiKey')") == API_KEY
    assert browser.execute_script("return localStorage.length") == 0
    assert API_KEY not in browser.page_source
    # A reload keeps it for the tab: no second prompt.
    browser.refresh()
    wait(browser, lambda d: row(d, task_id) is not None)
    assert not by_id(browser, "keybar").is_displayed()
    browser.save_screenshot(str(tmp_path / "with-key.png"))
    # Forgetting it stops the page from reading the API.
    by_id(browser, "key-change").click()
    assert browser.execute_script("return sessionStorage.getItem('preheat.apiKey')") is None


def test_the_page_fits_a_phone(browser: Any, stack: LocalStack, files: Files, tmp_path: Path) -> None:
    task_id = submit(stack, files.url(f"missing-phone-{secrets.token_hex(4)}.bin"))
    browser.set_window_size(390, 844)
    open_console(browser, stack)
    wait(browser, lambda d: "FAIL" in row_text(d, task_id))
    # Nothing wider than the screen: no sideways scrolling.
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    browser.save_screenshot(str(tmp_path / "phone.png"))


def test_the_page_is_served_without_a_key_with_a_strict_content_security_policy(stack: LocalStack) -> None:
    answer = requests.get(f"{stack.api_url}/console", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    policy = answer.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'sha256-" in policy
    assert "unsafe-inline" not in policy
    # Everything else still wants the key.
    assert requests.get(f"{stack.api_url}/api/preheat", timeout=10).status_code == 401


def test_check_now_shows_which_peers_hold_the_blobs_then_none_after_an_evict(
    browser: Any, stack: LocalStack, files: Files, tmp_path: Path
) -> None:
    task_id = submit(stack, files.url(f"ok-verify-{secrets.token_hex(4)}.bin"))
    open_console(browser, stack)
    wait(browser, lambda d: "SUCCESS" in row_text(d, task_id))
    row(browser, task_id).click()
    wait(browser, lambda d: task_id in by_id(d, "detail").text)
    by_id(browser, "check-now").click()
    wait(browser, lambda d: "1 of 1 blobs warm" in by_id(d, "verify-summary").text)
    peers = by_id(browser, "peers").text
    supernode = stack.supernodes[0].removeprefix("http://")
    assert supernode in peers
    assert "yes" in peers
    # The 2 s refresh of the stored progress leaves the verification on screen.
    wait(browser, lambda d: "updated" in by_id(d, "updated").text)
    assert "1 of 1 blobs warm" in by_id(browser, "verify-summary").text
    browser.execute_script("document.getElementById('verify').scrollIntoView({block: 'center'})")
    browser.save_screenshot(str(tmp_path / "check-now.png"))

    evicted = requests.delete(
        f"{stack.api_url}/api/preheat/{task_id}", headers={"x-api-key": API_KEY}, timeout=10
    )
    assert evicted.json()["code"] == 200
    by_id(browser, "check-now").click()
    wait(browser, lambda d: "0 of 1 blobs warm" in by_id(d, "verify-summary").text)
    assert "none holds it" in by_id(browser, "peers").text
    wait(browser, lambda d: "Evicted" in by_id(d, "detail-fields").text)
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    browser.execute_script("document.getElementById('verify').scrollIntoView({block: 'center'})")
    browser.save_screenshot(str(tmp_path / "check-now-evicted.png"))
