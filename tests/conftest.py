"""Fixtures shared by the whole suite: the real platform, a headless browser, artifacts."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from platform_harness import officina_accounts, start_platform

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
    # Nothing but loopback: a page that tries to reach the internet fails at once.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session", autouse=True)
def _remove_test_accounts(platform_roots):
    """System accounts this run's platforms created are removed at the end of the run: those
    new since the start whose home is under this run's platform folders (another run on the
    same machine, or a person's platform, keeps its own)."""
    before = officina_accounts() if os.geteuid() == 0 else set()
    yield
    if os.geteuid() == 0:
        for name in sorted(officina_accounts() - before):
            try:
                home = pwd.getpwnam(name).pw_dir
            except KeyError:
                continue
            if home.startswith(str(platform_roots.base) + os.sep):
                subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture(scope="session")
def platform_roots():
    """Where platforms keep their state: not under pytest's own temporary folder, which is
    0700 and so unreachable by the per-user accounts whose homes live in the state."""
    base = Path(tempfile.mkdtemp(prefix="officina-tests-"))
    base.chmod(0o711)
    counter = iter(range(10_000))

    def make(name: str) -> Path:
        root = base / f"{name}{next(counter)}"
        root.mkdir(mode=0o711)
        return root

    make.base = base
    yield make
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def platform(platform_roots):
    """One running embedded platform shared by the tests of a module."""
    p = start_platform(platform_roots("platform"))
    yield p
    try:
        p.down()
    finally:
        p.emergency_stop()


@pytest.fixture(scope="module")
def chromium():
    # Module scope: Playwright's sync API keeps an event loop running in the main thread
    # while it is open, which later modules' own asyncio.run() calls must not meet.
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install.sh --test (it installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium, request):
    """A fresh browser context (no cookies); a screenshot is saved if the test fails."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    yield page
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()
