"""Headless Chromium for the browser tests: Debian's chromium, driven by Playwright (which never
downloads a browser of its own), and where screenshots are kept."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page

CHROMIUM = "/usr/bin/chromium"
# The closed network here refuses Chromium's background connections; none of them is needed.
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The `open_page` fixture: a URL (and browser-context options) in, the loaded page out.
OpenPage = Callable[..., Page]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def screenshot(page: Page, name: str) -> Path:
    """Keep a full-page screenshot under tests/artifacts/ (gitignored) to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=path, full_page=True)
    print(f"screenshot: {path}")
    return path
