"""Who may log in, and as what: configuration x IAM claims -> refused / user / admin.

Each configuration runs the real platform (stand-in, proxy, hub) with a users file made for
the table, and every row is a real login through the stand-in's page.
"""

from __future__ import annotations

import time

import pytest
import yaml

from platform_harness import HubSession, start_platform

PASSWORD = "truth-table"

USERS = {
    # name: (sub, groups or None for "no groups key at all")
    "admin": ("tt-0001", ["officina/admins"]),
    "alice": ("tt-0002", ["officina/users"]),
    "erin": ("tt-0003", ["officina/gpu/a100", "visitors"]),  # nested: officina via ancestors
    "mallory": ("tt-0004", ["visitors"]),
    "dave": ("tt-0005", None),
    "eve": ("tt-0006", ["officina/users", "officina/banned"]),
    # Same preferred name as alice once lower-cased, but another identity (another sub).
    "ALICE": ("tt-0007", ["officina/users"]),
}


def users_document(renames: dict | None = None) -> dict:
    users = []
    for name, (sub, groups) in USERS.items():
        entry = {"username": (renames or {}).get(name, name), "sub": sub, "password": PASSWORD,
                 "name": name.title(), "email": f"{name.lower()}@example.org"}
        if groups is not None:
            entry["groups"] = groups
        users.append(entry)
    return {"users": users}


CONFIGURATIONS = {
    "groups": {"iam": {"groups_claim": "groups", "blocked_groups": ["officina/banned"],
                       "standin": {"token_profile": "iam"}}},
    "wlcg.groups": {"iam": {"groups_claim": "wlcg.groups", "blocked_groups": ["officina/banned"],
                            "standin": {"token_profile": "wlcg"}}},
    "eduperson_entitlement": {"iam": {"groups_claim": "eduperson_entitlement",
                                      "blocked_groups": ["officina/banned"],
                                      "standin": {"token_profile": "aarc"}}},
}

# login -> expected outcome, the same under every configuration
EXPECTED = {
    "admin": "admin",
    "alice": "user",
    "erin": "user",
    "mallory": "refused: not a member of any group allowed",
    "dave": "refused: Your IAM groups: none",
    "eve": "refused: membership of the IAM group officina/banned is blocked",
}


@pytest.fixture(scope="module", params=list(CONFIGURATIONS))
def configured(request, platform_roots):
    root = platform_roots("truth")
    users_file = root / "users.yaml"
    users_file.write_text(yaml.safe_dump(users_document()))
    overrides = yaml.safe_load(yaml.safe_dump(CONFIGURATIONS[request.param]))
    overrides["iam"]["standin"]["users_file"] = str(users_file)
    platform = start_platform(root, **overrides)
    platform.users_file = users_file
    yield request.param, platform
    try:
        platform.down()
    finally:
        platform.emergency_stop()


def outcome(platform, login: str) -> tuple[str, dict | None]:
    person = HubSession(platform, login, PASSWORD)
    response = person.login_without_session()
    if response.status_code == 403:
        return "refused: " + response.text, None
    assert response.status_code == 302, (response.status_code, response.text[:500])
    me = person.hub_api("GET", "user").json()
    return ("admin" if me["admin"] else "user"), me


@pytest.mark.parametrize("login", list(EXPECTED))
def test_truth_table(configured, login):
    claim, platform = configured
    got, me = outcome(platform, login)
    expected = EXPECTED[login]
    if expected.startswith("refused"):
        assert got.startswith("refused"), f"{claim}: {login} was admitted as {got}"
        assert expected.split(": ", 1)[1] in got, got[:2000]
    else:
        assert got == expected, f"{claim}: {login} -> {got[:300]}"
        assert me["name"] == login.lower()


def test_groups_follow_iam_with_ancestors(configured):
    claim, platform = configured
    _, me = outcome(platform, "erin")
    assert {"officina", "officina/gpu", "officina/gpu/a100", "visitors"} <= set(me["groups"]), (claim, me["groups"])


def test_renamed_user_keeps_their_hub_account_and_namesakes_do_not_collide(configured):
    claim, platform = configured
    _, me = outcome(platform, "alice")
    assert me["name"] == "alice"
    # Another identity whose name is also "alice" once made safe gets a name of its own.
    _, namesake = outcome(platform, "ALICE")
    assert namesake["name"].startswith("alice-") and namesake["name"] != "alice"
    # IAM renames alice (same sub): she is still hub user alice, with the same groups.
    platform.users_file.write_text(yaml.safe_dump(users_document({"alice": "alicia"})))
    time.sleep(0.05)
    person = HubSession(platform, "alicia", PASSWORD)
    assert person.login_without_session().status_code == 302
    assert person.hub_api("GET", "user").json()["name"] == "alice"
    platform.users_file.write_text(yaml.safe_dump(users_document()))
