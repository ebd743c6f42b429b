"""What a person does in a browser: log in at the IAM page, reach JupyterLab, run a cell."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from platform_harness import DEMO_PASSWORDS

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


def iam_login(page, platform, username):
    page.goto(f"{platform.url}hub/login")
    page.get_by_text(re.compile("Sign in with INDIGO IAM", re.I)).click()
    # The stand-in's own login page, on the issuer's origin.
    page.wait_for_url(f"{platform.issuer}**")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", DEMO_PASSWORDS[username])
    page.locator("form [type=submit]").click()


def test_login_reach_jupyterlab_and_run_a_cell(page, platform):
    iam_login(page, platform, "alice")
    # The spawn form lists the profiles alice's groups allow, the default preselected.
    page.wait_for_url(re.compile(r".*/hub/spawn.*"))
    expect(page.locator("label.officina-profile")).to_have_count(2)
    expect(page.locator("input[name=profile][value=cpu-small]")).to_be_checked()
    page.get_by_role("button", name=re.compile("Start", re.I)).click()
    page.wait_for_url(re.compile(r".*/user/alice/lab.*"), timeout=120_000)
    # Open a Python notebook from the launcher and wait for its kernel to be idle.
    page.locator(".jp-LauncherCard[data-category='Notebook']").first.click(timeout=60_000)
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_be_visible(timeout=60_000)
    # JupyterLab 4.6 shows "idle" before the notebook's kernel connection has finished its
    # set-up (ipywidgets' comm and subshell round trips); a Shift+Enter in that window is
    # dropped without sending execute_request. A person takes longer than that to type.
    page.wait_for_timeout(3000)
    cell = page.locator(".jp-Cell .cm-content").first
    cell.click()
    page.keyboard.type("import os; print('answer', 6 * 7, os.getuid() != 0)")
    page.keyboard.press("Shift+Enter")
    expect(page.locator(".jp-OutputArea-output").first).to_contain_text("answer 42 True", timeout=60_000)


def test_outsider_sees_why_they_are_refused(page, platform):
    iam_login(page, platform, "mallory")
    body = page.locator("body")
    expect(body).to_contain_text("not a member of any group allowed on this platform", timeout=60_000)
    expect(body).to_contain_text("visitors")
