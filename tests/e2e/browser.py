"""What the browser tests share (headless Debian Chromium driven by Playwright; the fixtures
`chromium_path`, `browser` and `web` are in tests/e2e/conftest.py): the laptop width every page must
fit, an operator who logs in, and screenshots for a person to look at, in test-artifacts/."""

import os
from pathlib import Path

from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher

from tests.factories import UserFactory

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# Headless, no sandbox (containers have no user namespaces), nothing fetched from the network.
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--no-first-run",
]
ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"
PASSWORD = "console-operator-pw"
WIDTH = 1280  # a laptop


def short(job_id: str) -> str:
    return job_id[:8]


def assert_no_sideways_scroll(page, what: str) -> None:
    widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1], f"{what} scrolls sideways at {WIDTH} px: {widths[0]} px wide in {widths[1]} px"


def screenshot(page, name: str) -> Path:
    """A full-page screenshot at test-artifacts/<name>.png; its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def operator(username: str = "operator", **fields):
    """A staff superuser whose password the web server (a process of its own, with the default
    hashers) can check."""
    user = UserFactory(is_staff=True, is_superuser=True, username=username, **fields)
    user.password = PBKDF2PasswordHasher().encode(PASSWORD, PBKDF2PasswordHasher().salt(), iterations=1000)
    user.save()
    return user


def logged_in(browser, web, username: str = "operator"):
    """A page at the laptop width, logged in to the admin as `username` (see operator())."""
    page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
    page.goto(f"{web.url}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#user-tools")
    return page
