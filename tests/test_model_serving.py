"""DEEPaaS model servers through the platform: started by the resource manager as their owner's
account from the model servers' own environment, reached through the hub by their owner and by
the groups they are shared with, with the model's own checks on what is sent."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from officina.lab.models import ModelError, ModelServer
from platform_harness import HubSession, start_platform, wait_for

pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "models" / "officina_digits" / "officina_digits" / "samples"
MODEL_ENV = Path(os.environ.get("OFFICINA_MODEL_ENV", "/var/cache/officina/model-env"))
PEOPLE = {  # carol shares alice's group; bob does not
    "alice": ("officina/users", "11111111-0000-4000-8000-000000000001"),
    "bob": ("officina/gpu", "11111111-0000-4000-8000-000000000002"),
    "carol": ("officina/users", "11111111-0000-4000-8000-000000000003"),
}
OWN_MODEL = '''
"""A model of alice's own: answers which version of its code served it."""
from webargs import fields

VERSION = {version}


def get_metadata():
    return {{"name": "echo_model", "description": "Echoes, with its code version.", "author": "alice",
            "license": "MIT", "version": str(VERSION)}}


def warm():
    pass


def get_train_args():
    return {{}}


def train(**args):
    return {{"trained": VERSION}}


def get_predict_args():
    return {{"text": fields.Str(required=True, metadata={{"location": "form"}})}}


def predict(**args):
    return {{"version": VERSION, "echo": args["text"]}}
'''


@pytest.fixture(scope="module")
def platform(platform_roots):
    made = subprocess.run(["bash", str(REPO / "scripts" / "model-env.sh"), str(MODEL_ENV)],
                          capture_output=True, text=True, timeout=1800)
    assert made.returncode == 0, made.stderr[-3000:]
    root = platform_roots("models")
    users = root / "users.yaml"
    with os.fdopen(os.open(users, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        yaml.safe_dump({"users": [
            {"username": name, "sub": sub, "password": f"{name}-models", "name": name.title(),
             "email": f"{name}@example.org", "groups": [group]}
            for name, (group, sub) in PEOPLE.items()]}, handle)
    p = start_platform(root, iam={"standin": {"users_file": str(users)}}, dask={"enabled": False},
                       resources={"model": {"env": str(MODEL_ENV)}})
    yield p
    try:
        p.down()
    finally:
        p.emergency_stop()


class Person:
    def __init__(self, platform, name: str):
        self.name = name
        self.session = HubSession(platform, name, f"{name}-models")
        self.session.login()
        self.session.start_server()
        self.token = self.session.token()
        self.api = httpx.Client(base_url=f"{platform.url}services/resources/api/", timeout=120,
                                headers={"Authorization": f"token {self.token}"})
        wait_for(lambda: self.api.get("kinds").status_code == 200, 60, "the resource manager to answer")

    def serve(self, timeout: float = 300, **request) -> dict:
        created = self.api.post("resources", json={"kind": "model", **request})
        assert created.status_code == 202, created.text
        rid = created.json()["id"]

        def running():
            record = self.api.get(f"resources/{rid}").json()
            assert record["phase"] != "failed", record
            return record if record["phase"] == "running" else None
        return wait_for(running, timeout, f"model server {rid} to run")

    def client(self, record: dict) -> ModelServer:
        return ModelServer(record, token=self.token)


@pytest.fixture(scope="module")
def people(platform):
    return {name: Person(platform, name) for name in PEOPLE}


@pytest.fixture(scope="module")
def digits(people):
    record = people["alice"].serve(model="officina_digits", share_with=["officina/users"])
    yield record
    people["alice"].api.delete(f"resources/{record['id']}")


def test_the_kind_is_declared_once(people):
    kinds = people["alice"].api.get("kinds").json()
    model = kinds["model"]["properties"]
    assert model["model"]["enum"] == ["officina_digits"]
    assert model["share_with"]["type"] == "array" and model["workers"]["maximum"] == 1
    bad = people["alice"].api.post("resources", json={"kind": "model", "model": "nope"})
    assert bad.status_code == 400 and "model: one of officina_digits, got 'nope'" in bad.json()["error"]
    foreign = people["alice"].api.post("resources", json={"kind": "model", "share_with": ["officina/gpu"]})
    assert foreign.status_code == 400
    assert "share_with: you can share only with groups you are in (officina, officina/users), not officina/gpu" in foreign.json()["error"]
    escape = people["alice"].api.post("resources", json={"kind": "model", "package": "../bob/x"})
    assert escape.status_code == 400 and "package: a folder inside your home" in escape.json()["error"]


def test_train_and_predict_through_the_hub_as_the_owner(platform, people, digits):
    assert digits["endpoints"]["api"] == f"{platform.url}services/resources/models/{digits['id']}/"
    server = people["alice"].client(digits)
    assert server.metadata()["name"] == "officina_digits"
    # The server runs as alice's account, from the model servers' environment.
    servers = [p for p in psutil.process_iter(["cmdline", "uids"])
               if "deepaas-run" in " ".join(p.info["cmdline"] or []) and digits["endpoints"]["model"] in " ".join(p.info["cmdline"] or [])]
    assert servers and {p.info["uids"].real for p in servers} == {pwd.getpwnam("officina-alice").pw_uid}
    done = server.train(epochs=1, plot=False)
    output = done["result"]["output"]
    assert done["status"] == "done" and output["test_accuracy"] > 0.5, output  # chance is 0.1
    run = Path(output["path"])
    assert run.is_relative_to(platform.state_dir / "homes" / "alice" / ".officina" / "models" / "officina_digits")
    assert (run / "metrics.json").is_file() and (run / "model.keras").is_file()
    right = 0
    for sample in sorted(SAMPLES.glob("*.png")):
        answer = server.predict(sample)
        assert len(answer["probabilities"]) == 10 and abs(sum(answer["probabilities"]) - 1) < 1e-3
        assert answer["run"] == output["run"]
        right += answer["label"] == int(sample.name.split("-")[0])
    assert right >= 7, right


def test_bad_input_gets_a_clear_4xx_through_the_hub(people, digits):
    server = people["alice"].client(digits)
    with pytest.raises(ModelError, match=r"not a PNG or JPEG image.*\(HTTP 422\)"):
        server.predict(b"just words\n", "note.txt")
    for epochs in (0, 1000):
        with pytest.raises(ModelError, match=r"epochs.*(HTTP 422)"):
            server.start_training(epochs=epochs)
    with pytest.raises(ModelError, match=r"image.*\(HTTP 422\)"):
        server._call("POST", f"{server.path}predict/", data={"x": "1"})


def test_only_the_owner_and_the_shared_groups_may_call_it(platform, people, digits):
    sample = next(SAMPLES.glob("3-*.png"))
    # carol (officina/users, as shared): listed for her, and she may predict.
    listed = people["carol"].api.get("models").json()
    assert [m["id"] for m in listed] == [digits["id"]] and listed[0]["owner"] == "alice"
    assert people["carol"].client(listed[0]).predict(sample)["label"] == 3
    # bob (officina/gpu): not listed, 403 naming why; and he cannot stop it.
    assert people["bob"].api.get("models").json() == []
    with pytest.raises(ModelError, match=r"is alice's and not shared with any group of yours.*\(HTTP 403\)"):
        people["bob"].client(digits).predict(sample)
    assert people["bob"].api.delete(f"resources/{digits['id']}").status_code == 404
    # Nobody without a token.
    anonymous = httpx.post(digits["endpoints"]["api"] + "v2/models/officina_digits/predict/", timeout=30)
    assert anonymous.status_code in (302, 403)
    # The server's own port is loopback only.
    assert people["alice"].api.get(f"resources/{digits['id']}").json()["endpoints"]["api"].startswith(platform.url)


def test_the_train_panel_trains_with_progress_and_cancels(platform, people, digits):
    """The owner's notebook: the form from the model's declaration, Start, the epochs bar and
    the live curves, the result; then a long training cancelled."""
    from platform_harness import run_in_kernel

    cell = run_in_kernel(platform, "alice", people["alice"].token, f"""
import time
import officina.lab as lab
from officina.widgets import TrainPanel
server = [lab.ModelServer(r) for r in lab.model_servers() if r["id"] == "{digits['id']}"][0]
panel = TrainPanel(server, poll=0.2)
print("fields", sorted(panel.fields), panel.fields["epochs"].min, panel.fields["epochs"].max)
panel.fields["epochs"].value = 3
panel.start()
result = panel.wait(300)
print("progress", panel.progress.value, "of", panel.progress.max)
print("note", panel.note.value)
print("curves", len(panel.plot.outputs))
print("epochs-run", len(result["result"]["output"]["history"]["loss"]))
panel.fields["epochs"].value = 50
panel.start()
time.sleep(3)
panel.cancel()
panel.wait(120)
print("cancelled", panel.note.value)
""", timeout=420)
    assert cell["error"] is None, cell
    out = cell["stdout"]
    assert "fields ['batch_size', 'epochs', 'learning_rate', 'seed', 'validation_split'] 1 50" in out, out
    assert "progress 3 of 3" in out and "Done: " in out and "accuracy 0." in out, out
    assert "curves 1" in out and "epochs-run 3" in out, out
    assert re.search(r"^cancelled .*Cancelled [0-9a-f-]+", out, re.M), out


def test_the_swagger_spec_holds_through_the_platform(people, digits):
    """schemathesis generates requests from the server's own Swagger spec (valid and invalid
    ones) and sends them through the hub's proxy: no answer may be a server error."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    auth = {"Authorization": f"token {people['alice'].token}"}
    base = digits["endpoints"]["api"].rstrip("/")
    schema = schemathesis.openapi.from_dict(httpx.get(base + "/swagger.json", headers=auth, timeout=30).json())
    errors, calls = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        # Each valid training request trains: a few of those, many of everything else.
        trains = operation.method.upper() == "POST" and operation.path.endswith("/train/")
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=2 if trains else 25, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def call(case):
                nonlocal calls
                calls += 1
                response = case.call(base_url=base, headers=auth, timeout=120)
                if response.status_code >= 500:
                    errors.append(f"{case.method} {case.formatted_path} {case.query} -> "
                                  f"{response.status_code} {response.text[:200]}")
            try:
                call()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE, operation.path  # nothing to get wrong in it
    server = people["alice"].client(digits)
    for training in server.trainings():  # what the fuzzing started
        if training.get("status") in ("running", "pending"):
            server.cancel_training(training["uuid"])
    assert calls > 50
    assert not errors, errors


def test_a_published_app_serves_a_basic_user_of_the_chosen_group(platform, people, digits, chromium):
    """alice publishes the Voila app to officina/users; carol (a basic user of that group) opens
    its address, picks alice's model, uploads a picture and sees the answer; bob (another
    group) is refused; and the app stops with its owner's word."""
    from playwright.sync_api import expect

    alice, carol, bob = people["alice"], people["carol"], people["bob"]
    # The app answers with the model's latest training, and the fuzzing before may have left a
    # barely trained one (random learning rate, one epoch): train a proper one first.
    trained = alice.client(digits).train(epochs=3, plot=False)
    assert trained["status"] == "done", trained
    app = json.loads((REPO / "example-notebooks" / "digits-app.ipynb").read_text())
    contents = f"{platform.url}user/alice/api/contents/"
    auth = {"Authorization": f"token {alice.token}"}
    alice.session.http.put(contents + "apps", headers=auth, json={"type": "directory"}, timeout=30)
    r = alice.session.http.put(contents + "apps/digits-app.ipynb", headers=auth, timeout=30,
                               json={"type": "notebook", "format": "json", "content": app})
    assert r.status_code in (200, 201), r.text
    # Bad requests: named, and nothing started.
    for request, error in (({}, "notebook: which notebook of your home to publish"),
                           ({"notebook": "apps/notes.txt"}, "notebook: a notebook (.ipynb) inside your home"),
                           ({"notebook": "../bob/x.ipynb"}, "notebook: a folder inside your home"),
                           ({"notebook": "apps/digits-app.ipynb", "share_with": ["officina/gpu"]},
                            "share_with: you can share only with groups you are in")):
        refused = alice.api.post("resources", json={"kind": "app", **request})
        assert refused.status_code == 400 and error in refused.json()["error"], (request, refused.text)
    missing = alice.api.post("resources", json={"kind": "app", "notebook": "apps/nowhere.ipynb"})
    assert missing.status_code == 202
    failed = wait_for(lambda: (lambda r: r if r["phase"] in ("failed", "running") else None)(
        alice.api.get(f"resources/{missing.json()['id']}").json()), 60, "the app without a notebook to fail")
    assert failed["phase"] == "failed" and "there is no apps/nowhere.ipynb in your home" in failed["message"], failed

    from platform_harness import run_in_kernel

    cell = run_in_kernel(platform, "alice", alice.token, """
import json
import officina.lab as lab
app = lab.publish("apps/digits-app.ipynb", share_with=["officina/users"])
print("APP", json.dumps(app))
""", timeout=300)
    assert cell["error"] is None, cell
    published = json.loads(cell["stdout"].split("APP ", 1)[1])
    assert published["phase"] == "running", published
    url = published["endpoints"]["app"]
    assert url == f"{platform.url}services/resources/apps/{published['id']}/"
    try:
        # Listed for the group, not for others; Voila runs as alice's account, on loopback.
        assert [a["id"] for a in carol.api.get("apps").json()] == [published["id"]]
        assert bob.api.get("apps").json() == []
        voila = [p for p in psutil.process_iter(["cmdline", "uids"])
                 if "voila" in " ".join(p.info["cmdline"] or []) and published["id"] in " ".join(p.info["cmdline"] or [])]
        assert voila and {p.info["uids"].real for p in voila} == {pwd.getpwnam("officina-alice").pw_uid}
        refused = httpx.get(url, headers={"Authorization": f"token {bob.token}"}, timeout=30)
        assert refused.status_code == 403 and "published by alice to officina/users, not to any group of yours" in refused.text
        assert httpx.get(url, timeout=30).status_code in (302, 403)  # nobody without a login
        # Voila's own port wants its token, which only the manager's proxy has.
        port = next(a.split("=", 1)[1] for p in voila for a in p.info["cmdline"] if a.startswith("--port="))
        direct = httpx.get(f"http://127.0.0.1:{port}/services/resources/apps/{published['id']}/", timeout=30)
        assert direct.status_code in (302, 403) and "Predict" not in direct.text
        # The app's kernel holds a token of alice's, for this app only.
        tokens = lambda: [t["note"] for t in httpx.get(f"{platform.url}hub/api/users/alice/tokens", headers=auth,
                                                       timeout=30).json()["api_tokens"]]
        assert f"Officina app {published['id']} (apps/digits-app.ipynb)" in tokens()

        sample = next(SAMPLES.glob("7-*.png"))
        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        try:
            context.add_cookies([{"name": c.name, "value": c.value, "domain": "127.0.0.1", "path": c.path}
                                 for c in carol.session.http.cookies.jar])
            page.goto(url, timeout=180_000)
            expect(page.locator("select").first).to_contain_text(f"officina_digits of alice ({digits['id']})", timeout=180_000)
            # ipywidgets' upload button opens the browser's file chooser (its input is not in the page).
            with page.expect_file_chooser() as chooser:
                page.locator(".widget-upload").click()
            chooser.value.set_files(str(sample))
            page.get_by_role("button", name="Predict").click()
            expect(page.get_by_text(re.compile(r"Predicted digit: 7 \(\d+%\)"))).to_be_visible(timeout=60_000)
            expect(page.locator("img").last).to_be_visible()  # the probability chart
            # A text file: the model's refusal, in its words.
            with page.expect_file_chooser() as chooser:
                page.locator(".widget-upload").click()
            chooser.value.set_files(files=[{"name": "note.txt", "mimeType": "text/plain", "buffer": b"not a picture"}])
            page.get_by_role("button", name="Predict").click()
            expect(page.get_by_text(re.compile(r"The model refused it: .*not a PNG or JPEG image"))).to_be_visible(timeout=60_000)
        except Exception:
            page.screenshot(path=str(REPO / "test-artifacts" / "digits-app.png"), full_page=True)
            for log in (platform.state_dir / "resources" / "app" / published["id"] / "voila.log",
                        platform.state_dir / "logs" / "jupyterhub.log"):
                if log.is_file():
                    shutil.copy(log, REPO / "test-artifacts" / f"digits-app-{log.name}")
            raise
        finally:
            context.close()
    finally:
        assert alice.api.delete(f"resources/{published['id']}").status_code in (200, 202)
    wait_for(lambda: alice.api.get(f"resources/{published['id']}").json()["phase"] == "stopped", 60, "the app to stop")
    assert not [p for p in psutil.process_iter(["cmdline"]) if published["id"] in " ".join(p.info["cmdline"] or [])]
    assert carol.api.get("apps").json() == []
    assert f"Officina app {published['id']} (apps/digits-app.ipynb)" not in tokens()  # revoked with it


def test_own_package_is_served_and_reloaded_after_a_code_change(platform, people):
    alice = people["alice"]
    home = platform.state_dir / "homes" / "alice"
    package = home / "models" / "echo_model"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(OWN_MODEL.format(version=1))
    account = pwd.getpwnam("officina-alice")
    for path in (home / "models", package, package / "__init__.py"):
        os.chown(path, account.pw_uid, account.pw_gid)
    record = alice.serve(package="models/echo_model")
    try:
        server = alice.client(record)
        assert server.model == "echo_model"
        answer = server._call("POST", f"{server.path}predict/", data={"text": "hi"})
        # (DEEPaaS wraps the answer of a model that declares no response schema.)
        assert answer["predictions"] == {"version": 1, "echo": "hi"}, answer
        time.sleep(1.1)  # a newer modification time than the served code's
        (package / "__init__.py").write_text(OWN_MODEL.format(version=2))

        def reloaded():
            try:
                return server._call("POST", f"{server.path}predict/", data={"text": "hi"})["predictions"]["version"] == 2
            except (ModelError, httpx.HTTPError):
                return False  # restarting
        wait_for(reloaded, 90, "the server to serve the changed code")
    finally:
        alice.api.delete(f"resources/{record['id']}")
        shutil.rmtree(home / "models", ignore_errors=True)


def test_training_results_survive_the_server(people, digits):
    alice = people["alice"]
    trained = alice.client(digits).metadata()["latest_run"]
    assert trained and trained["origin"] == "train"
    alice.api.delete(f"resources/{digits['id']}")
    again = alice.serve(model="officina_digits")
    try:
        assert alice.client(again).metadata()["latest_run"]["run"] == trained["run"]
    finally:
        alice.api.delete(f"resources/{again['id']}")
