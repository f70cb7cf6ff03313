"""A real headless Chromium, driven through WebDriver, for the tests of the correction page.

Debian's ``chromium`` and ``chromium-driver`` packages and the ``selenium`` Python package
are needed; without them the tests skip, except with ``CI=true``, where they fail
(:func:`tests.dicomcheck.require_tool`). Nothing is downloaded: the driver is the
Debian one, named by path, so Selenium Manager never runs.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.dicomcheck import in_ci, require_tool


def _selenium() -> Any:
    """The ``selenium.webdriver`` module, or skip (fail under ``CI=true``)."""
    try:
        from selenium import webdriver
    except ImportError:
        message = "the selenium package is not installed (pip install -e '.[test]')"
        if in_ci():
            pytest.fail(f"{message}; it is required when CI=true")
        pytest.skip(message)
    return webdriver


@contextmanager
def headless_chromium(width: int, height: int, *, arguments: tuple[str, ...] = ()) -> Iterator[Any]:
    """A headless Chromium window of ``width`` x ``height`` CSS pixels (``arguments``:
    further command-line switches).

    Yields
    ------
    selenium.webdriver.Chrome
        The driver; the browser's console is kept (``driver.get_log("browser")``), so a
        test can assert that a page logged no error (a script error or a refused
        Content-Security-Policy shows there). The browser quits on exit.
    """
    webdriver = _selenium()
    from selenium.webdriver.chrome.service import Service as DriverService

    browser = require_tool("chromium", "chromium")
    driver_path = require_tool("chromedriver", "chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-extensions", "--no-first-run", f"--window-size={width},{height}", *arguments):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=DriverService(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def spki_pin(certificate: Path) -> str:
    """The base64 SHA-256 of a PEM certificate's public key, for Chromium's
    ``--ignore-certificate-errors-spki-list`` (trust that one certificate and no other)."""
    openssl = require_tool("openssl", "openssl")
    public = subprocess.run([openssl, "x509", "-in", str(certificate), "-pubkey", "-noout"],
                            capture_output=True, check=True, timeout=30).stdout
    der = subprocess.run([openssl, "pkey", "-pubin", "-outform", "der"], input=public,
                         capture_output=True, check=True, timeout=30).stdout
    return base64.b64encode(hashlib.sha256(der).digest()).decode("ascii")


def console_errors(driver: Any) -> list[str]:
    """The browser console's messages at level SEVERE since the last call."""
    return [entry["message"] for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
