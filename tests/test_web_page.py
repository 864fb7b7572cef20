"""The web page in headless Chromium (Debian's chromium and chromium-driver): sign in, watch the
counts change live, search, open a task, cancel it; a screenshot is saved in tests/artifacts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import wait_until
from test_http_api import fail_with, sleep_for  # noqa: F401  (the tasks this test submits over HTTP)

API = "/api/v1"
ARTIFACTS = Path(__file__).parent / "artifacts"


def _text_of(browser, element_id: str) -> str:
    """The text of the element ``element_id`` ("" if there is none). The page redraws itself as
    tasks change: an element found may be replaced before its text is read; then the new one is."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    for _ in range(10):
        try:
            found = browser.find_elements(By.ID, element_id)
            return found[0].text if found else ""
        except WebDriverException as e:
            if not _replaced(e):
                raise
    return ""


def _replaced(e: Exception) -> bool:
    """Whether ``e`` says an element was replaced as it was read: Selenium's stale element, or
    the inspector error Chrome gives for some such reads (a node no longer in the document)."""
    from selenium.common.exceptions import StaleElementReferenceException

    return isinstance(e, StaleElementReferenceException) or "does not belong to the document" in str(e)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--disable-gpu",
        "--no-first-run",
    ):
        options.add_argument(arg)
    driver_path = shutil.which("chromedriver")
    assert driver_path, "chromedriver is missing: ./dev test installs Debian's chromium and chromium-driver"
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def test_sign_in_search_open_and_cancel(browser, http_api, unique, rl):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    def text_of(element_id: str) -> str:
        return _text_of(browser, element_id)

    tenant = f"w-{unique}"
    token = http_api.token(tenant)
    api = http_api.client(token)
    tag = f"web{unique}"

    def post(**t):
        return api.post(f"{http_api.url}{API}/tasks", json={**t, "tags": [tag]}).json()["id"]

    failed = post(name="test.http.fail", args=[f"disk quota exceeded on volume {unique}"])
    post(name="raylane.echo", args=["hello"])
    sleeper = post(name="test.http.sleep", args=[60])
    api.get(f"{http_api.url}{API}/tasks/{failed}/wait")
    wait_until(lambda: rl.get(sleeper).state.value == "RUNNING", timeout=60, what="the sleeper to run")
    rl.refresh()

    # Unsigned visitors are sent to sign in; a wrong token is refused.
    browser.get(f"{http_api.url}/ui")
    assert browser.current_url.endswith("/login")
    browser.find_element(By.ID, "token").send_keys("rl_000000000000_" + "x" * 43)
    browser.find_element(By.ID, "sign-in").click()
    wait_until(lambda: text_of("login-failed"), timeout=10, what="the refusal")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "sign-in").click()
    wait_until(lambda: browser.current_url.endswith("/ui"), timeout=10, what="the task page")
    assert text_of("tenant") == tenant
    assert text_of("count-total") == "3" and text_of("count-FAILED") == "1" and text_of("count-RUNNING") == "1"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#tasks tr.task")) == 3

    # The counts follow new tasks without a reload.
    post(name="raylane.echo", args=["live"])
    wait_until(
        lambda: text_of("count-total") == "4", timeout=20, what=lambda: f"live total 4, saw {text_of('count-total')}"
    )

    def search_and_open_only_match(fields: dict[str, str], state: str, task_id: str) -> None:
        """Fill the search form, expect exactly ``task_id``, and open its page (showing ``state``)."""
        browser.get(f"{http_api.url}/ui")
        for field, value in fields.items():
            if field == "state":
                Select(browser.find_element(By.ID, "f-state")).select_by_value(value)
            else:
                browser.find_element(By.ID, f"f-{field}").send_keys(value)
        browser.find_element(By.ID, "f-go").click()
        wait_until(lambda: "?" in browser.current_url, timeout=10, what="the search")
        rows = browser.find_elements(By.CSS_SELECTOR, "#tasks tr.task")
        assert len(rows) == 1 and task_id in rows[0].text
        rows[0].find_element(By.TAG_NAME, "a").click()
        wait_until(lambda: text_of("state") == state, timeout=10, what=f"the {state} task's page")

    # Search by words of the error: only the failed task; open it.
    search_and_open_only_match({"text": f"quota {unique}"}, "FAILED", failed)
    assert "disk quota exceeded" in text_of("error") and "ValueError" in text_of("error")
    assert "Traceback" in text_of("traceback")
    assert f"disk quota exceeded on volume {unique}" in text_of("args")
    assert not browser.find_elements(By.ID, "cancel")  # a finished task has no cancel button

    # A date that is not one is named, and the search runs without it.
    browser.get(f"{http_api.url}/ui?tag={tag}&since=yesterday")
    assert "not an ISO 8601 date-time" in text_of("search-problem")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#tasks tr.task")) == 4

    # Search by state and tag, open the running task, cancel it.
    search_and_open_only_match({"state": "RUNNING", "tag": tag}, "RUNNING", sleeper)
    assert text_of("d-started") != "–"
    browser.find_element(By.ID, "cancel").click()
    wait_until(lambda: text_of("state") == "CANCELLED", timeout=15, what="the cancelled state")
    assert "cancelled" in text_of("message")
    assert rl.get(sleeper).state.value == "CANCELLED"
    ARTIFACTS.mkdir(exist_ok=True)
    browser.get(f"{http_api.url}/ui?tag={tag}")
    wait_until(lambda: text_of("count-CANCELLED") == "1", timeout=10, what="the counts")
    assert browser.save_screenshot(str(ARTIFACTS / "web-page.png"))
    browser.get(f"{http_api.url}/ui/tasks/{sleeper}")
    assert browser.save_screenshot(str(ARTIFACTS / "web-task.png"))

    # Another tenant's page shows none of it.
    other = http_api.token(f"x-{unique}")
    browser.delete_all_cookies()
    browser.get(f"{http_api.url}/login")
    browser.find_element(By.ID, "token").send_keys(other)
    browser.find_element(By.ID, "sign-in").click()
    wait_until(lambda: browser.current_url.endswith("/ui"), timeout=10, what="the other tenant's page")
    assert text_of("count-total") == "0" and text_of("no-tasks")
    browser.get(f"{http_api.url}/ui/tasks/{failed}")
    assert "no task with id" in browser.page_source and text_of("state") == ""


def test_cancel_by_search_with_its_count_and_retry_from_the_page(browser, http_api, unique, rl):
    from selenium.webdriver.common.by import By

    token = http_api.token(f"b-{unique}")
    api = http_api.client(token)
    tag = f"bulk{unique}"

    def post(**t):
        return api.post(f"{http_api.url}{API}/tasks", json={**t, "tags": [tag]}).json()["id"]

    # The failing task first: the sleepers take this machine's CPUs for a minute.
    failed = post(name="test.http.fail", args=["once"])
    wait_until(lambda: rl.get(failed).state.value == "FAILED", timeout=60, what="the failing task to fail")
    sleepers = [post(name="test.http.sleep", args=[60]) for _ in range(3)]
    rl.refresh()
    browser.get(f"{http_api.url}/login")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "sign-in").click()
    wait_until(lambda: browser.current_url.endswith("/ui"), timeout=10, what="the task page")

    # The button says how many unfinished tasks the search matches; the next page asks again.
    browser.get(f"{http_api.url}/ui?tag={tag}")
    buttons = browser.find_elements(By.ID, "bulk-cancel-button")
    assert buttons and "3 unfinished" in buttons[0].text, browser.find_element(By.TAG_NAME, "main").text[:600]
    button = buttons[0]
    button.click()
    wait_until(lambda: browser.find_elements(By.ID, "confirm-count"), timeout=10, what="the confirmation")
    assert "3" in browser.find_element(By.ID, "confirm-count").text
    assert all(rl.get(i).state.value != "CANCELLED" for i in sleepers)  # nothing yet
    browser.find_element(By.ID, "confirm-cancel").click()
    wait_until(lambda: "bulk-cancelled" in browser.current_url, timeout=15, what="the cancel")
    assert [rl.get(i).state.value for i in sleepers] == ["CANCELLED"] * 3
    assert rl.get(failed).state.value == "FAILED"  # finished: left as it ended
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "web-bulk-cancelled.png"))

    # A finished task's page starts a new attempt of it.
    browser.get(f"{http_api.url}/ui/tasks/{failed}")
    browser.find_element(By.ID, "retry").click()
    wait_until(lambda: "new attempt" in browser.page_source, timeout=10, what="the retry")
    wait_until(lambda: rl.get(failed).attempt == 1, timeout=30, what="the new attempt")


def test_the_operator_views_in_the_browser(browser, http_api, unique, rl):
    """Activity charts, the queue view (pause and resume by keyboard, live numbers), executors,
    dead letters and a task's timeline, each driven in Chromium and saved as a screenshot."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def text_of(element_id: str) -> str:
        return _text_of(browser, element_id)

    def cell(queue: str, column: str) -> str:
        from selenium.common.exceptions import WebDriverException

        try:
            rows = browser.find_elements(By.CSS_SELECTOR, f'tr.queue[data-queue="{queue}"] td.{column}')
            return rows[0].text if rows else ""
        except WebDriverException as e:
            if not _replaced(e):
                raise
            return ""

    tenant = f"op-{unique}"
    token = http_api.token(tenant, "operator")
    api = http_api.client(token)
    queue = f"ops-{unique}"
    from raylane.builtin import echo

    echo.options(queue=queue).submit("makes the queue").result(timeout=60)

    def post(**t):
        resp = api.post(f"{http_api.url}{API}/tasks", json=t)
        assert resp.status_code == 201, resp.text
        return resp.json()["id"]

    retried = post(name="test.http.fail", args=["first try"], max_retries=1)
    for i in range(20):
        post(name="raylane.echo", args=[i])
    assert api.get(f"{http_api.url}{API}/tasks/{retried}/wait").json()["state"] == "FAILED"

    browser.get(f"{http_api.url}/login")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "sign-in").click()
    wait_until(lambda: browser.current_url.endswith("/ui"), timeout=10, what="the task page")
    ARTIFACTS.mkdir(exist_ok=True)

    # Activity: the tenant's ends in numbers and in three charts that say what they show.
    rl.refresh()
    browser.get(f"{http_api.url}/ui/activity?range=15m")
    wait_until(lambda: int(text_of("s-ended") or 0) >= 21, timeout=30, what="the ends counted")
    charts = browser.find_elements(By.CSS_SELECTOR, "img.chart")
    assert len(charts) == 3 and all(c.get_attribute("alt") for c in charts)
    wait_until(
        lambda: all(browser.execute_script("return arguments[0].naturalWidth", c) == 720 for c in charts),
        timeout=20,
        what="the charts drawn",
    )
    assert browser.save_screenshot(str(ARTIFACTS / "ops-activity.png"))

    # Queues: pause by keyboard; a task sent meanwhile waits and shows live; resume; it runs.
    def queue_listed() -> bool:
        # The consumers find a new queue's topic within a few seconds.
        browser.get(f"{http_api.url}/ui/queues")
        return bool(browser.find_elements(By.ID, f"pause-{queue}"))

    wait_until(queue_listed, timeout=60, what="the new queue in the queue view")
    button = browser.find_element(By.ID, f"pause-{queue}")
    button.send_keys(Keys.ENTER)
    wait_until(lambda: "paused" in text_of("message"), timeout=10, what="the pause")
    assert cell(queue, "paused") == "paused"
    waiting = echo.options(queue=queue).submit("waits")
    rl.refresh()
    wait_until(lambda: cell(queue, "pending") == "1", timeout=20, what="the waiting task shown live")
    assert rl.get(waiting.id).state.value == "PENDING"
    assert browser.save_screenshot(str(ARTIFACTS / "ops-queues.png"))
    browser.find_element(By.ID, f"resume-{queue}").send_keys(Keys.ENTER)
    wait_until(lambda: "resumed" in text_of("message"), timeout=10, what="the resume")
    assert waiting.result(timeout=60) == {"args": ["waits"], "kwargs": {}}

    # Executors: each with its node, running tasks and lease.
    browser.get(f"{http_api.url}/ui/executors")
    rows = browser.find_elements(By.CSS_SELECTOR, "#executors tr.executor")
    assert rows and "Executor" in rows[0].text and " s" in rows[0].find_element(By.CSS_SELECTOR, ".lease").text
    assert browser.save_screenshot(str(ARTIFACTS / "ops-executors.png"))

    # Dead letters: the table, or a line saying there are none.
    browser.get(f"{http_api.url}/ui/dlq")
    assert browser.find_elements(By.ID, "dead-letters") or browser.find_elements(By.ID, "no-letters")
    assert browser.save_screenshot(str(ARTIFACTS / "ops-dead-letters.png"))

    # A task's timeline: both attempts of the retried task, on one scale.
    browser.get(f"{http_api.url}/ui/tasks/{retried}")
    attempts = browser.find_elements(By.CSS_SELECTOR, "#timeline tr.attempt")
    assert [a.find_element(By.CSS_SELECTOR, ".state").text for a in attempts] == ["FAILED", "FAILED"]
    assert all(a.find_element(By.CSS_SELECTOR, ".run").text != "–" for a in attempts)
    assert browser.save_screenshot(str(ARTIFACTS / "ops-task-timeline.png"))

    # A token that is not an operator's sees none of this.
    browser.delete_all_cookies()
    browser.get(f"{http_api.url}/login")
    browser.find_element(By.ID, "token").send_keys(http_api.token(f"nop-{unique}"))
    browser.find_element(By.ID, "sign-in").click()
    wait_until(lambda: browser.current_url.endswith("/ui"), timeout=10, what="the task page")
    browser.get(f"{http_api.url}/ui/queues")
    assert text_of("operators-only") and not browser.find_elements(By.ID, "queues")
