"""The reviewer page's peers: a ``pacsflow-api`` process on a loopback port, and Debian's chromium driven by
chromium-driver through Selenium (both stopped when the ``with`` block ends)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from .net import free_port, stop_process, wait_port


@contextmanager
def api_process(store_url: str, log_path: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """``pacsflow-api`` on a free loopback port over ``store_url`` (plus ``env``: ``PACSFLOW_API_*`` settings);
    yields its base URL (https when ``PACSFLOW_API_TLS_CERT_FILE`` is set), stops it by PID."""
    port = free_port()
    extra = env or {}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pacsflow_api", "--host", "127.0.0.1", "--port", str(port)],
                                env={**os.environ, "PACSFLOW_STORE_URL": store_url, **extra}, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            wait_port(port, 60, proc)
            yield f"{'https' if extra.get('PACSFLOW_API_TLS_CERT_FILE') else 'http'}://127.0.0.1:{port}"
        finally:
            stop_process(proc)


@contextmanager
def chromium(profile_dir: Path) -> Iterator[webdriver.Chrome]:
    """Headless Debian chromium through chromium-driver (both required: scripts/install-system-deps.sh)."""
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver_path):
        raise RuntimeError("the browser tests need Debian's chromium and chromium-driver: run "
                           "scripts/install-system-deps.sh (make system-deps)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--user-data-dir={profile_dir}", "--window-size=1200,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()
