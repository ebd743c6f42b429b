"""Checks, as the last step of an image build, that the image does what it says.

    python verify.py session        # a notebook image: what KubeSpawner and a user rely on
    python verify.py session gpu    # ... and TensorFlow built for CUDA
    python verify.py hub            # the hub image: the officina command and its proxy

Each Dockerfile runs it with the file bind-mounted (nothing of it stays in the image), so a
lock, a path or an environment variable that is wrong fails the build, not a user's first
session. It needs no GPU: it checks what TensorFlow was built with, not the device.
tests/test_images.py runs the session check against the project's own environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


class ImageCheckFailed(Exception):
    pass


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ImageCheckFailed(message)


def check_session() -> list[str]:
    from jupyter_core.paths import jupyter_config_path
    from jupyter_server.extension.config import ExtensionConfigManager

    # The same lookup jupyterhub-singleuser does at start: every folder of the Jupyter
    # config path, JUPYTER_CONFIG_PATH first, each one's jupyter_server_config.d merged.
    enabled = ExtensionConfigManager(read_config_path=jupyter_config_path()).get_jpserver_extensions()
    require(
        enabled.get("officina.lab") is True,
        "the officina.lab server extension is not enabled by any Jupyter config folder "
        f"(JUPYTER_CONFIG_PATH={os.environ.get('JUPYTER_CONFIG_PATH')!r}; enabled: {sorted(k for k, v in enabled.items() if v)})",
    )
    require(shutil.which("jupyterhub-singleuser") is not None, "jupyterhub-singleuser is not on PATH")
    import ipywidgets
    import officina.lab
    import officina.widgets  # noqa: F401

    return [
        "officina.lab enabled",
        f"jupyterhub-singleuser at {shutil.which('jupyterhub-singleuser')}",
        f"ipywidgets {ipywidgets.__version__}",
        f"officina.lab {officina.lab.__version__}",
    ]


def check_gpu() -> list[str]:
    import tensorflow as tf

    require(tf.test.is_built_with_cuda(), f"TensorFlow {tf.__version__} is not a CUDA build")
    info = tf.sysconfig.get_build_info()
    return [f"TensorFlow {tf.__version__}, CUDA {info.get('cuda_version')}, cuDNN {info.get('cudnn_version')}"]


def check_hub() -> list[str]:
    officina = shutil.which("officina")
    require(officina is not None, "the officina command is not on PATH")
    from officina.hub.supervisor import find_proxy_binary

    proxy = find_proxy_binary()
    version = subprocess.run([proxy, "--version"], capture_output=True, text=True, timeout=60)
    require(version.returncode == 0, f"{proxy} --version failed: {version.stderr.strip()}")
    config = subprocess.run([officina, "config"], capture_output=True, text=True, timeout=60)
    require(config.returncode == 0, f"officina config: {config.stderr.strip()}")
    return [f"officina at {officina}", f"configurable-http-proxy {version.stdout.strip()} at {proxy}", config.stdout.strip()]


CHECKS = {"session": check_session, "gpu": check_gpu, "hub": check_hub}


def main(argv: list[str]) -> int:
    unknown = [name for name in argv if name not in CHECKS]
    if not argv or unknown:
        print(f"usage: verify.py {{{','.join(CHECKS)}}}...; unknown: {unknown}", file=sys.stderr)
        return 2
    try:
        for name in argv:
            for line in CHECKS[name]():
                print(f"verify {name}: {line}")
    except ImageCheckFailed as failure:
        print(f"verify: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
