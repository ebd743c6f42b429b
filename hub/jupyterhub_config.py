# JupyterHub configuration of the embedded platform. The supervisor starts JupyterHub with
# this file; everything here comes from the validated platform settings (officina.yaml).
import json
import os

from officina.hub.hub_config import configure

with open(os.environ["OFFICINA_SETTINGS"]) as f:
    configure(c, json.load(f))  # noqa: F821 (c is JupyterHub's config object)
