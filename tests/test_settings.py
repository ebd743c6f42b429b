"""A bad officina.yaml stops `officina up` with a message naming the key and the reason."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from platform_harness import OFFICINA, free_ports

README = Path(__file__).resolve().parent.parent / "README.md"

BAD_FILES = [
    ("unknown key", "hub:\n  prot: 8000\n", r"hub\.prot: unknown key \(allowed here: .*port"),
    ("unknown top-level key", "sesions: {}\n", r"sesions: unknown key"),
    ("wrong type", "hub:\n  port: eight-thousand\n", r"hub\.port: must be of type integer, got str 'eight-thousand'"),
    ("wrong type in a list", "iam:\n  allowed_groups: officina\n", r"iam\.allowed_groups: must be of type array"),
    ("out of range", "hub:\n  port: 70000\n", r"hub\.port: 70000 is greater than the maximum of 65535"),
    ("negative timeout", "sessions:\n  idle_timeout: -5\n", r"sessions\.idle_timeout: -5 is less than the minimum of 0"),
    ("bad enum", "sessions:\n  run_as: nobody\n", r"sessions\.run_as: 'nobody' is not one of"),
    ("base_url form", "hub:\n  base_url: jupyter\n", r"hub\.base_url: 'jupyter' does not have the required form"),
    ("port clash", "hub:\n  port: 9999\n  internal_port: 9999\n", r"hub\.internal_port: port 9999 is already used by hub\.port"),
    (
        "real issuer without secret",
        "iam:\n  issuer: https://iam.example.org/\n",
        r"iam\.client_secret_file: required when iam\.issuer is set",
    ),
    ("missing users file", "iam:\n  standin:\n    users_file: /nonexistent/users.yaml\n", r"iam\.standin\.users_file: file '/nonexistent/users\.yaml' does not exist"),
    (
        "culler slower than timeout",
        "sessions:\n  idle_timeout: 60\n  cull_every: 300\n",
        r"sessions\.cull_every: 300 s is longer than sessions\.idle_timeout \(60 s\)",
    ),
    ("unknown groups claim", "iam:\n  groups_claim: roles\n", r"iam\.groups_claim: 'roles' is not one of \['groups', 'wlcg\.groups', 'eduperson_entitlement'\]"),
    ("refresh margin out of range", "iam:\n  token_refresh_margin: 1.5\n", r"iam\.token_refresh_margin: 1\.5 is greater than the maximum of 0\.9"),
    ("not YAML", "hub: [\n", r"not valid YAML \(line 3, column 1\)"),
    ("not a mapping", "- 1\n- 2\n", r"\(top level\): must be a mapping"),
]


@pytest.mark.parametrize("what,text,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_configuration_stops_up_with_a_message(tmp_path, what, text, message):
    config = tmp_path / "officina.yaml"
    state = tmp_path / "state"
    config.write_text(f"state_dir: {state}\n" + text if not text.startswith("-") else text)
    result = subprocess.run([OFFICINA, "up", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert re.search(message, result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was started: no process table was written.
    assert not (state / "run" / "officina.json").exists()


def test_missing_configuration_file_is_named(tmp_path):
    result = subprocess.run([OFFICINA, "up", "--config", str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "nope.yaml: cannot read the configuration file" in result.stderr


def test_valid_configuration_is_accepted(tmp_path):
    hub, internal, api, iam = free_ports(4)
    config = tmp_path / "officina.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\nhub: {{port: {hub}, internal_port: {internal}, proxy_api_port: {api}, base_url: /o/}}\n"
        f"iam: {{standin: {{port: {iam}}}}}\n"
    )
    result = subprocess.run([OFFICINA, "config", "--config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"public URL http://127.0.0.1:{hub}/o/" in result.stdout


def test_readme_configuration_reference_matches_the_schema():
    """The README's reference is generated from the schema; a new setting must appear there."""
    generated = subprocess.run([OFFICINA, "config", "--docs"], capture_output=True, text=True, check=True).stdout.strip()
    assert generated in README.read_text(), "README is stale: paste the output of `officina config --docs`"


@pytest.mark.root
def test_state_dir_unreachable_by_session_accounts_is_refused(tmp_path):
    """pytest's tmp folder is 0700: per-user accounts could not reach homes under it."""
    if os.geteuid() != 0:
        pytest.fail("this test must run as root (sessions as per-user system accounts)")
    hub, internal, api, iam = free_ports(4)
    config = tmp_path / "officina.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\nhub: {{port: {hub}, internal_port: {internal}, proxy_api_port: {api}}}\n"
        f"iam: {{standin: {{port: {iam}}}}}\n"
    )
    result = subprocess.run([OFFICINA, "up", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result
    assert re.search(r"state_dir: per-user accounts cannot reach their homes under .* is not traversable", result.stderr), result.stderr
    assert "Traceback" not in result.stderr


def test_readme_profile_catalogue_example_is_a_valid_configuration(tmp_path):
    block = re.search(r"## Profiles: what users may run.*?```yaml\n(.*?)```", README.read_text(), re.S).group(1)
    config = tmp_path / "officina.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n" + block)
    result = subprocess.run([OFFICINA, "config", "--config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


BAD_CATALOGUES = [
    ("duplicate slug", "profiles:\n  - {slug: a, display_name: A}\n  - {slug: a, display_name: B}\n",
     r"profiles\[1\]\.slug: 'a' is used by an earlier profile"),
    ("guarantee above limit", "profiles:\n  - {slug: a, display_name: A, memory: {guarantee: 4G, limit: 2G}}\n",
     r"profiles\[0\]\.memory\.guarantee: 4G is more than memory\.limit 2G"),
    ("bad size", "profiles:\n  - {slug: a, display_name: A, memory: {limit: lots}}\n",
     r"profiles\.0\.memory\.limit: 'lots' does not have the required form"),
    ("two defaults", "profiles:\n  - {slug: a, display_name: A, default: true}\n  - {slug: b, display_name: B, default: true}\n",
     r"profiles: more than one profile has default: true"),
]


@pytest.mark.parametrize("what,text,message", BAD_CATALOGUES, ids=[b[0] for b in BAD_CATALOGUES])
def test_bad_catalogue_is_refused_with_the_key(tmp_path, what, text, message):
    config = tmp_path / "officina.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n" + text)
    result = subprocess.run([OFFICINA, "config", "--config", str(config)], capture_output=True, text=True)
    assert result.returncode == 2, result
    assert re.search(message, result.stderr), result.stderr
