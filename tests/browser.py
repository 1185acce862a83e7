"""Debian's Chromium under selenium, headless, for the tests that look at the MLflow UI (slow tier; `make e2e-deps`
installs chromium and chromium-driver)."""
from __future__ import annotations

import shutil
from pathlib import Path


def chromium(tmp_path: Path):
    chromium_bin, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium_bin and driver_bin, "make e2e-deps installs Debian's chromium and chromium-driver"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium_bin
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1600,1000"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_bin), options=opts)
