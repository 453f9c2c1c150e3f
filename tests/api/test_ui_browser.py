"""The dashboard in a real browser: Debian's chromium, headless, driven by selenium through
chromedriver, against a real pmd with real programs, on loopback.

What an operator sees: the key prompt, every program, a state that changes when a real
process exits, stop (with its confirmation), start and restart acting, a log line shown
within a second of the program writing it; and that the page asked no other host for
anything, kept the key out of URLs and cookies, and logged no console error.

Without chromium and chromedriver the tests skip, saying so; with PMD_REQUIRE_BROWSER=1
(CI sets it) they fail instead. PMD_UI_SCREENSHOT=FILE saves the page as shown at the end
of the first test (docs/dashboard.png is made that way).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.api.access_helpers import ADMIN_KEY, KEYS, identities, write_identities
from tests.harness import Pmd

KEY = "dashboard-key"
USER = os.environ.get("USER") or "root"

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
    HAVE_SELENIUM = True
except ImportError:  # pragma: no cover - the test extra installs it
    HAVE_SELENIUM = False

MISSING = [name for name, there in (("chromium", CHROMIUM), ("chromium-driver", CHROMEDRIVER),
                                    ("selenium", HAVE_SELENIUM)) if not there]
if MISSING:
    if os.environ.get("PMD_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"the browser test needs {', '.join(MISSING)} "
                           "(scripts/system-deps installs chromium and chromium-driver)")
    pytestmark = pytest.mark.skip(reason=f"no real browser here: {', '.join(MISSING)} "
                                  "missing (apt-get install chromium chromium-driver)")
else:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

WAIT = 15.0  # for what a human would wait for; intervals are asserted from timestamps


def _programs(fifo: Path) -> list[dict[str, Any]]:
    me = {"user": USER, "enabled": True, "boot": True}
    return [
        # every line carries the time the program wrote it
        {**me, "name": "ticker", "autorestart": "true",
         "command": "sh -c 'while true; do echo \"tick $(date +%s.%N)\"; sleep 0.4; done'"},
        # runs until the test writes to its FIFO, then exits 3 and stays EXITED
        {**me, "name": "waiter", "autorestart": "false", "startsecs": 0,
         "command": f"sh -c 'read line < {fifo}; exit 3'"},
        {**me, "name": "web", "command": "sleep 100000", "stop_timeout": 2,
         "health_check": {"type": "script", "command": "true", "interval": 1}},
        {**me, "name": "pool", "command": "sh -c 'exec sleep 100000' pool", "port_range":
         {"start": 18301, "end": 18302}},
    ]


@pytest.fixture(scope="module")
def pmd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pmd]:
    base = tmp_path_factory.mktemp("dashboard")
    fifo = base / "waiter.fifo"
    os.mkfifo(fifo)
    with Pmd(base, _programs(fifo), api_key=KEY) as running:
        running.fifo = fifo  # type: ignore[attr-defined]
        yield running


def _browser(width: int = 1280, height: int = 900) -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-default-apps"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # type: ignore[arg-type]


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    driver = _browser()
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: WebDriver, what: str, check: Any, timeout: float = WAIT) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: check(d), message=what)


def _row(driver: WebDriver, name: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f'#programs tr[data-name="{name}"]')


def _state(driver: WebDriver, name: str) -> str:
    try:
        return str(_row(driver, name).get_attribute("data-state"))
    except Exception:  # noqa: BLE001 - not rendered yet
        return ""


def _api_state(pmd: Pmd, name: str) -> dict[str, Any]:
    for entry in pmd.http.get("/api/v1/daemon/status").json()["statuses"]:
        if entry["name"] == name:
            return dict(entry["status"])
    raise AssertionError(name)


def _requests(driver: WebDriver) -> list[str]:
    """Every URL the page asked for (HTTP and WebSocket), from Chrome's network log."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
        elif message["method"] == "Network.webSocketCreated":
            urls.append(message["params"]["url"])
    return urls


def _errors(driver: WebDriver) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _unlock(driver: WebDriver, pmd: Pmd) -> None:
    driver.get(pmd.url + "/ui")
    prompt = driver.find_element(By.ID, "login")
    assert prompt.is_displayed()
    assert not driver.find_element(By.ID, "list").is_displayed()
    field = driver.find_element(By.CSS_SELECTOR, "label[for=key]")
    assert field.text == "API key"
    driver.find_element(By.ID, "key").send_keys(KEY)
    driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    _wait(driver, "the program list", lambda d: d.find_element(By.ID, "list").is_displayed())


def _click(driver: WebDriver, element_id: str) -> None:
    _wait(driver, f"#{element_id} enabled",
          lambda d: d.find_element(By.ID, element_id).is_enabled())
    driver.find_element(By.ID, element_id).click()


def test_an_operator_unlocks_watches_and_acts(pmd: Pmd, browser: WebDriver) -> None:
    driver = browser
    _wait(driver, "boot", lambda d: _api_state(pmd, "waiter")["status"] == "RUNNING"
          and _api_state(pmd, "web")["status"] == "RUNNING")
    _unlock(driver, pmd)
    # a mark that a reload would wipe: every change below comes without one
    driver.execute_script("window.__sameLoad = true;")

    # every program, persistent and quick-start, with its figures
    for name in ("ticker", "waiter", "web", "pool"):
        _wait(driver, f"{name} RUNNING", lambda d, n=name: _state(d, n) == "RUNNING")
    web_pid = _api_state(pmd, "web")["pid"]
    assert _row(driver, "web").find_element(By.CSS_SELECTOR, ".pid").text == str(web_pid)
    quick = pmd.http.post("/api/v1/daemon/quick-start", json={
        "name": "one-off", "command": "sleep 100000", "user": USER, "ttl": 600}).json()
    assert quick["success"], quick
    _wait(driver, "the quick-start program", lambda d: "one-off" in d.find_element(
        By.ID, "quick").text)
    pool_row = _row(driver, "pool").text
    assert "18301 RUNNING" in pool_row and "18302 RUNNING" in pool_row
    _wait(driver, "web's health", lambda d: "healthy" in _row(d, "web").text)
    _wait(driver, "CPU and memory from /ws", lambda d: "iB" in _row(d, "web").text)
    # the container's verdicts at the top
    assert driver.find_element(By.ID, "v-ready").text == "ready (4 of 4)"
    assert driver.find_element(By.ID, "v-config").text == "ok"
    assert driver.find_element(By.ID, "v-health").text.startswith("ok")

    # a real process exits: its state changes on the page, no reload
    with open(pmd.fifo, "w") as fifo:  # type: ignore[attr-defined]
        fifo.write("go\n")
    _wait(driver, "waiter EXITED", lambda d: _state(d, "waiter") == "EXITED")
    assert _api_state(pmd, "waiter")["exit_code"] == 3
    assert "RUNNING \u2192 EXITED, exit 3" in driver.find_element(By.ID, "events").text

    # a program's page: stop asks first, and cancel changes nothing
    _row(driver, "web").find_element(By.LINK_TEXT, "web").click()
    _wait(driver, "web's page", lambda d: d.find_element(By.ID, "detail").is_displayed())
    assert '"command": "sleep 100000"' in driver.find_element(By.ID, "d-config").get_attribute(
        "textContent")
    _click(driver, "b-stop")
    dialog = driver.find_element(By.ID, "confirm")
    assert dialog.is_displayed() and "Stop web?" in dialog.text
    driver.find_element(By.ID, "confirm-cancel").click()
    assert not dialog.is_displayed()
    assert _api_state(pmd, "web")["status"] == "RUNNING"

    # stop, confirmed: the page shows STOPPED, as pmd does
    _click(driver, "b-stop")
    driver.find_element(By.ID, "confirm-ok").click()
    _wait(driver, "web STOPPED on its page", lambda d: "STOPPED" in d.find_element(
        By.ID, "d-title").text)
    assert _api_state(pmd, "web")["status"] == "STOPPED"
    assert "STOPPING \u2192 STOPPED" in driver.find_element(By.ID, "d-events").text

    # start, then restart: a new process each time, shown with its pid
    _click(driver, "b-start")
    _wait(driver, "web RUNNING again", lambda d: "RUNNING" in d.find_element(
        By.ID, "d-title").text)
    started_pid = _api_state(pmd, "web")["pid"]
    assert started_pid != web_pid
    _click(driver, "b-restart")
    _wait(driver, "web restarted", lambda d: _api_state(pmd, "web").get("pid") not in
          (None, started_pid) and d.find_element(By.CSS_SELECTOR, "#d-instances .pid").text
          == str(_api_state(pmd, "web")["pid"]))

    driver.find_element(By.LINK_TEXT, "\u2190 All programs").click()
    _wait(driver, "the list again", lambda d: _state(d, "web") == "RUNNING")
    assert driver.execute_script("return window.__sameLoad === true;")
    # the readiness verdict follows too: only waiter (exited) is not ready now
    _wait(driver, "the readiness verdict", lambda d: d.find_element(By.ID, "v-ready").text
          == "not ready: 1 of 4 waiting: waiter (exited 3)")

    shot = os.environ.get("PMD_UI_SCREENSHOT")
    if shot:
        driver.save_screenshot(shot)

    # nothing left for another host, the key in no URL and no cookie, no console error
    urls = _requests(driver)
    assert any(u.startswith(f"ws://127.0.0.1:{pmd.port}/ws") for u in urls), urls
    for url in urls:
        assert urlsplit(url).netloc == f"127.0.0.1:{pmd.port}", url
        assert KEY not in url
    assert driver.get_cookies() == []
    assert driver.execute_script("return sessionStorage.getItem('pmd.key');") == KEY
    assert _errors(driver) == []


def test_a_log_line_shows_within_a_second_of_being_written(pmd: Pmd,
                                                           browser: WebDriver) -> None:
    driver = browser
    _unlock(driver, pmd)
    _row(driver, "ticker").find_element(By.LINK_TEXT, "ticker").click()
    # the opening tail first; then the lines the program writes from now on, each with
    # the time it wrote it and the time the page received it (the page's stamp on it)
    _wait(driver, "the opening tail", lambda d: d.find_elements(By.CSS_SELECTOR,
                                                                "#log-stdout li"))
    following = time.time()

    def new_lines(d: WebDriver) -> list[tuple[float, float]] | None:
        shown = d.execute_script(
            "return [...document.querySelectorAll('#log-stdout li[data-received]')]"
            ".map(li => [li.textContent, li.dataset.received]);")
        found = [(float(text.split()[1]), float(received)) for text, received in shown
                 if text.startswith("tick ") and float(text.split()[1]) > following]
        return found if len(found) >= 3 else None

    lines = _wait(driver, "three new lines", new_lines)
    for written, received in lines[:3]:
        assert 0 <= received - written < 1.0, (written, received)
    assert _errors(driver) == []


def test_a_wrong_key_is_refused_and_asked_again(pmd: Pmd, browser: WebDriver) -> None:
    driver = browser
    driver.get(pmd.url + "/ui")
    driver.find_element(By.ID, "key").send_keys("not-the-key")
    driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    _wait(driver, "the refusal", lambda d: "invalid API key" in d.find_element(
        By.ID, "key-error").text)
    assert driver.find_element(By.ID, "login").is_displayed()
    assert driver.execute_script("return sessionStorage.getItem('pmd.key');") is None
    # the one console error is the refused request itself
    assert all("401" in e["message"] for e in _errors(driver))


def _enter_key(driver: WebDriver, key: str) -> None:
    field = driver.find_element(By.ID, "key")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()


def _shown(driver: WebDriver, element_id: str) -> bool:
    return bool(driver.find_element(By.ID, element_id).is_displayed())


def test_the_page_offers_only_what_the_callers_level_may_do(tmp_path: Path,
                                                            browser: WebDriver) -> None:
    driver = browser
    me = {"user": USER, "enabled": True, "boot": True}
    running = Pmd(tmp_path, [{**me, "name": "web", "command": "sleep 100000"}],
                  api_key=ADMIN_KEY)
    write_identities(running.config_dir, identities())
    with running as pmd:
        _wait(driver, "boot", lambda d: _api_state(pmd, "web")["status"] == "RUNNING")
        driver.get(pmd.url + "/ui")

        # below read: the prompt again, with pmd's own reason
        _enter_key(driver, KEYS["metrics"])
        _wait(driver, "the refusal", lambda d: "needs the read level" in d.find_element(
            By.ID, "key-error").text)
        assert _shown(driver, "login") and not _shown(driver, "list")
        assert not _shown(driver, "who")
        assert driver.execute_script("return sessionStorage.getItem('pmd.key');") is None

        # read: the programs and who the page acts as, but no action at all
        _enter_key(driver, KEYS["read"])
        _wait(driver, "web RUNNING", lambda d: _state(d, "web") == "RUNNING")
        assert driver.find_element(By.ID, "who").text == "as read-caller (read)"
        _row(driver, "web").find_element(By.LINK_TEXT, "web").click()
        _wait(driver, "web's page", lambda d: "RUNNING" in d.find_element(
            By.ID, "d-title").text)
        for button in ("b-start", "b-stop", "b-restart"):
            assert not _shown(driver, button), button
            assert driver.find_element(By.ID, button).get_attribute("hidden") is not None
        assert not _shown(driver, "actions")

        # the admin key: the same page offers start, stop and restart
        driver.find_element(By.ID, "forget").click()
        _enter_key(driver, ADMIN_KEY)
        _wait(driver, "the admin key's identity", lambda d: d.find_element(
            By.ID, "who").text == "as admin key (admin)")
        _wait(driver, "web's page", lambda d: "RUNNING" in d.find_element(
            By.ID, "d-title").text)
        for button in ("b-start", "b-stop", "b-restart"):
            assert _shown(driver, button), button
        assert _api_state(pmd, "web")["status"] == "RUNNING"


class Forward:
    """What `ssh -L PORT:/run/pmd/pmd.sock` does: a loopback TCP port whose connections go
    to pmd's Unix socket."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def test_through_a_forwarded_socket_no_key_is_asked(pmd: Pmd, browser: WebDriver) -> None:
    forward = Forward(pmd.socket)
    try:
        browser.get(f"http://127.0.0.1:{forward.port}/ui")
        _wait(browser, "the list without a key", lambda d: _state(d, "ticker") == "RUNNING")
        assert not browser.find_element(By.ID, "login").is_displayed()
        assert not browser.find_element(By.ID, "forget").is_displayed()
        assert _errors(browser) == []
    finally:
        forward.close()


def test_on_a_phone_nothing_scrolls_sideways(pmd: Pmd) -> None:
    driver = _browser(390, 844)
    try:
        _unlock(driver, pmd)
        _wait(driver, "the programs", lambda d: _state(d, "ticker") == "RUNNING")
        wide = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
        assert wide <= 0
        label = driver.execute_script(
            "return getComputedStyle(document.querySelector('#programs td.pid'), '::before')"
            ".content;")
        assert label == '"PID"'  # each figure labelled, as the table's head is hidden
    finally:
        driver.quit()
