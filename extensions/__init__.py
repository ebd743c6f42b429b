"""officina.lab: the session side of Officina.

(Terminals run an interactive, non-login bash: a login shell would let /etc/profile replace
the PATH the spawner sets, and the platform's python, pip and jupyter would vanish from it.)

A Jupyter server extension that every session loads (its REST API lives under
`<server>/officina/api/`), and the Python API users call from notebooks:
`officina.lab.token_status()` says who you are, your groups and when your token expires.
"""

from __future__ import annotations

from . import data
from .apps import publish, published_apps, unpublish
from .clusters import connect_dask, dask, dask_clusters, stop_dask
from .condor import condor_dask, condor_worker_sets, condor_workers, schedd, stop_condor_workers, submit
from .handlers import setup_handlers
from .models import ModelServer, model_servers, serve, stop_model
from .resources import spark, spark_clusters, stop_spark
from .token_keeper import read_status as token_status

__version__ = "0.1.0"


def _jupyter_server_extension_points():
    return [{"module": "officina.lab"}]


def _load_jupyter_server_extension(serverapp):
    from .token_keeper import TokenKeeper

    setup_handlers(serverapp.web_app)
    keeper = TokenKeeper.from_environment()
    serverapp.web_app.settings["officina_token_keeper"] = keeper
    if keeper is not None:
        keeper.start()
        serverapp.log.info("officina.lab: keeping %s fresh", keeper.token_file)
    serverapp.log.info("officina.lab loaded: API at %sofficina/api/", serverapp.base_url)
