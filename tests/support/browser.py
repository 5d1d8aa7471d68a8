"""A real headless Chromium for page tests, driven through WebDriver (selenium).

Debian's ``chromium`` and ``chromium-driver`` packages are used as installed (the install
script adds them on a fresh machine); the driver path is given explicitly, so selenium
never tries to download a driver. The flags keep Chromium off the network: this machine
reaches package registries only, and Chromium's background services would otherwise try
Google's hosts at every start.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)


def available() -> str | None:
    """None when a browser test can run, else why not (for the skip reason)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            return f"{path} is not installed (scripts/install.sh installs chromium as root)"
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    """A WebDriver session on a fresh profile, closed on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    with tempfile.TemporaryDirectory(prefix="mole-chromium-") as profile:
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def wait_for(driver: Any, predicate: Callable[[Any], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate(driver)`` until it returns something truthy; fail naming ``what``."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(predicate)
    except TimeoutException:
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}") from None
