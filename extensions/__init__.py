"""officina.lab: the session side of Officina.

A Jupyter server extension that every session loads (its REST API lives under
`<server>/officina/api/`), and the Python API users call from notebooks.
"""

from __future__ import annotations

from .handlers import setup_handlers

__version__ = "0.1.0"


def _jupyter_server_extension_points():
    return [{"module": "officina.lab"}]


def _load_jupyter_server_extension(serverapp):
    setup_handlers(serverapp.web_app)
    serverapp.log.info("officina.lab loaded: API at %sofficina/api/", serverapp.base_url)
