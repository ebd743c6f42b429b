"""JupyterHub configuration derived from the platform settings (one declaration, many uses)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .limits import detect_mode

from .settings import Settings
from .state import StateDir


def configure(c, raw_settings: dict) -> None:
    settings = Settings(raw=raw_settings, source="supervisor")
    state = StateDir(settings.state_dir)
    hub, iam, sessions = settings["hub"], settings["iam"], settings["sessions"]

    # --- network: the supervisor runs the proxy; the hub listens on loopback only ---
    c.JupyterHub.base_url = hub["base_url"]
    c.JupyterHub.bind_url = f"http://{hub['ip']}:{hub['port']}{hub['base_url']}"
    c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{hub['internal_port']}"
    c.JupyterHub.proxy_class = "officina.hub.proxy.SupervisedProxy"
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{hub['proxy_api_port']}"
    c.ConfigurableHTTPProxy.auth_token = state.secret("proxy_auth_token")

    # --- state that survives restarts ---
    c.JupyterHub.db_url = f"sqlite:///{state.hub / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(state.hub / "jupyterhub_cookie_secret")
    c.JupyterHub.pid_file = str(state.run / "jupyterhub.pid")
    # The supervisor restarts a crashed hub; sessions must outlive that, and `officina down`
    # (a clean hub shutdown) stops them.
    c.JupyterHub.cleanup_servers = True
    c.JupyterHub.cleanup_proxy = False

    # --- login with IAM ---
    c.JupyterHub.authenticator_class = "officina.hub.authenticator.IAMAuthenticator"
    a = c.IAMAuthenticator
    a.issuer = settings.issuer
    a.client_id = iam["client_id"]
    secret_file = iam["client_secret_file"] or str(state.secrets_dir / "iam_client_secret")
    a.client_secret = Path(secret_file).expanduser().read_text().strip()
    a.oauth_callback_url = f"{settings.public_url}hub/oauth_callback"
    # The claim the groups are read from needs its scope asked for at login.
    claim_scope = {"groups": None, "wlcg.groups": "wlcg.groups", "eduperson_entitlement": "eduperson_entitlement"}
    scopes = list(iam["scopes"])
    if claim_scope[iam["groups_claim"]] and claim_scope[iam["groups_claim"]] not in scopes:
        scopes.append(claim_scope[iam["groups_claim"]])
    a.scope = scopes
    a.username_claim = iam["username_claim"]
    a.groups_claim = iam["groups_claim"]
    a.allowed_groups = set(iam["allowed_groups"])
    a.admin_groups = set(iam["admin_groups"])
    a.blocked_groups = list(iam["blocked_groups"])
    a.identity_db = str(state.hub / "identities.sqlite")
    a.token_exchange = iam["token_exchange"]
    a.token_refresh_margin = iam["token_refresh_margin"]
    # Auth state (the refresh token) is encrypted with the crypt key the supervisor passes.
    a.enable_auth_state = True
    a.enable_pkce = True
    # How often a browser request makes the hub look at the user's token (a local check;
    # IAM is asked only when the token is past its refresh point).
    a.auth_refresh_age = 30
    c.JupyterHub.template_paths = [str(Path(__file__).parent / "templates")]

    # --- the token service: sessions get access tokens with their server's own token ---
    from .token_service import SCOPE, SCOPE_DESCRIPTION

    c.JupyterHub.custom_scopes = {SCOPE: {"description": SCOPE_DESCRIPTION}}
    user_scopes = [f"{SCOPE}!user"]
    services = []
    dask = settings["dask"]
    if dask["enabled"]:
        from .dask_services import DASHBOARDS_SERVICE, GATEWAY_SERVICE, gateway_db

        # The gateway is a JupyterHub service: users reach it with their own tokens (the
        # session's server token included), which need access to the service.
        services.append({
            "name": GATEWAY_SERVICE,
            "api_token": state.secret("dask_gateway_api_token"),
            "url": f"http://127.0.0.1:{dask['port']}",
            "display": False,
        })
        user_scopes.append(f"access:services!service={GATEWAY_SERVICE}")
        # Dashboards: a hub-managed service with its own OAuth client (see dask_dashboards).
        services.append({
            "name": DASHBOARDS_SERVICE,
            "url": f"http://127.0.0.1:{dask['dashboards_port']}",
            "command": [sys.executable, "-m", "officina.hub.dask_dashboards"],
            "environment": {"OFFICINA_DASK_DB": str(gateway_db(state))},
            "oauth_no_confirm": True,
            "display": False,
        })
        user_scopes.append(f"access:services!service={DASHBOARDS_SERVICE}")
    resources = settings["resources"]
    if resources["enabled"]:
        from .resources.service import SCOPE as RESOURCES_SCOPE, SCOPE_DESCRIPTION as RESOURCES_DESCRIPTION

        # Spark clusters (and next kinds) are started on the hub's side, by this service, for
        # users whose tokens carry the scope; sessions hold no power to start anything.
        c.JupyterHub.custom_scopes[RESOURCES_SCOPE] = {"description": RESOURCES_DESCRIPTION}
        services.append({
            "name": "resources",
            "url": f"http://127.0.0.1:{resources['port']}",
            "command": [sys.executable, "-m", "officina.hub.resources.service"],
            "environment": {
                "OFFICINA_SETTINGS": str(state.settings_file),
                "OFFICINA_RESOURCES_PUBLIC": f"{settings.public_url}services/resources/",
            },
            "oauth_no_confirm": True,
            "display": False,
        })
        user_scopes += [f"{RESOURCES_SCOPE}!user", "access:services!service=resources"]
    from .data.service import SERVICE as DATA_SERVICE, federation_runs, session_environment

    data_env = session_environment(settings) if federation_runs(settings) else {}
    if data_env:
        # Sites a user may read, cache statistics, dataset mounts (see data.service).
        services.append({
            "name": DATA_SERVICE,
            "url": f"http://127.0.0.1:{settings['data']['service_port']}",
            "command": [sys.executable, "-m", "officina.hub.data.service"],
            "environment": {"OFFICINA_SETTINGS": str(state.settings_file)},
            "display": False,
        })
        user_scopes.append(f"access:services!service={DATA_SERVICE}")
    roles = [
        {"name": "server", "scopes": ["users:activity!user", "access:servers!server", "read:users:groups!user", *user_scopes]},
        {"name": "user", "scopes": ["self", *user_scopes]},
    ]
    if resources["enabled"]:
        # A published Voila app's kernel calls model servers as its owner: the manager mints
        # that token (limited to reaching the manager, see resources.app_local) and revokes it.
        roles.append({"name": "resources-service", "scopes": ["tokens"], "services": ["resources"]})

    # --- sessions ---
    c.JupyterHub.spawner_class = "officina.hub.spawner.LocalSessionSpawner"
    s = c.LocalSessionSpawner
    s.run_as_system_accounts = settings.run_as_system_accounts
    s.homes_dir = str(state.homes)
    s.pid_dir = str(state.servers)
    s.profiles = settings["profiles"]
    s.gpu_inventory = sessions["gpus"]
    s.gpu_table = str(state.run / "gpus.json")
    condor = settings["condor"]
    if condor["enabled"] is not False:
        # The supervisor runs the pool when the host can; each session start mints a token.
        s.condor_pool = {"root": condor["root"], "state": str(state.root / "condor"), "port": condor["port"],
                         "token_lifetime": condor["token_lifetime"]}
    s.limits_mode = detect_mode() if settings.run_as_system_accounts or os.geteuid() == 0 else "rlimit"
    if sessions["spawner"] == "kubernetes":
        from .kubernetes import kubespawner_config

        c.merge(kubespawner_config(settings))
        c.OfficinaKubeSpawner.environment = {"BEARER_TOKEN_FILE": "/home/jovyan/.officina/bearer_token"}
        c.OfficinaKubeSpawner.default_url = sessions["default_url"]
        c.OfficinaKubeSpawner.start_timeout = sessions["start_timeout"]
    c.JupyterHub.allow_named_servers = sessions["max_named_servers"] > 0
    c.JupyterHub.named_server_limit_per_user = sessions["max_named_servers"]
    s.default_url = sessions["default_url"]
    s.start_timeout = sessions["start_timeout"]
    s.http_timeout = sessions["start_timeout"]
    # A hub shutdown waits on each session: keep the grace periods short.
    s.interrupt_timeout = 3
    s.term_timeout = 3
    s.kill_timeout = 2

    # --- the idle culler, a service the supervisor runs ---
    if sessions["idle_timeout"] or sessions["max_age"]:
        services.append({"name": "idle-culler", "api_token": state.secret("culler_api_token")})
        roles.append(
            {
                "name": "idle-culler",
                "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
                "services": ["idle-culler"],
            }
        )
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles
    session_env = {}
    if resources["enabled"]:
        session_env["OFFICINA_RESOURCES_URL"] = (
            f"http://127.0.0.1:{resources['port']}{settings['hub']['base_url']}services/resources/")
    if dask["enabled"]:
        # Sessions find the gateway with no configuration (dask-gateway reads these).
        session_env.update({
            "DASK_GATEWAY__ADDRESS": f"http://127.0.0.1:{dask['port']}",
            "DASK_GATEWAY__PROXY_ADDRESS": f"gateway://127.0.0.1:{dask['port']}",
            "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
            # Dashboard links point at the hub's proxy, behind the login.
            "DASK_GATEWAY__PUBLIC_ADDRESS": f"{settings.public_url}services/{DASHBOARDS_SERVICE}",
        })
    session_env.update(data_env)
    c.LocalSessionSpawner.environment = session_env

    c.JupyterHub.log_level = "INFO"
