"""dask-gateway-server's configuration file: `dask-gateway-server -f` this file.

The supervisor passes the platform settings in OFFICINA_SETTINGS (a file path), as it does
for JupyterHub; everything is derived in officina.hub.dask_gateway.configure.
"""

import json
import os

from officina.hub.dask_gateway import configure

with open(os.environ["OFFICINA_SETTINGS"]) as _settings:
    configure(c, json.load(_settings))  # noqa: F821 - `c` is provided by dask-gateway-server
