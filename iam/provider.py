"""The Flask application: IAM's HTTP endpoints, the login page and the error handling.

Errors are always an OAuth JSON body (or, where IAM shows one, an HTML page), never a
traceback. The access log names method, path and status only: query strings and bodies
carry codes, tokens and passwords.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from authlib.oauth2 import OAuth2Error
from flask import Blueprint, Flask, current_app, jsonify, render_template, request, session
from werkzeug.exceptions import HTTPException

from .authorization import StandInAuthorizationServer, create_authorization_server
from .clients import ClientRegistry
from .config import StandInConfig
from .discovery import ENDPOINTS, provider_metadata
from .keys import (
    ensure_private_dir,
    load_or_create_session_secret,
    load_or_create_signing_key,
    public_jwks,
)
from .store import GrantStore
from .tokens import TokenService
from .users import User, UserDirectory

log = logging.getLogger(__name__)
access_log = logging.getLogger("officina.iam.access")

# Inline styles only: the login page must work with no network and load nothing external.
HTML_POLICY = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"


@dataclass
class StandIn:
    config: StandInConfig
    users: UserDirectory
    clients: ClientRegistry
    store: GrantStore
    tokens: TokenService
    server: StandInAuthorizationServer
    metadata: dict
    jwks: dict


def standin() -> StandIn:
    return current_app.extensions["officina.iam"]


bp = Blueprint("iam", __name__)


@bp.get("/.well-known/openid-configuration")
def openid_configuration():
    return jsonify(standin().metadata)


def jwk():
    return jsonify(standin().jwks)


def token():
    s = standin()
    # One token request at a time: a code or a refresh token is checked and consumed (or
    # rotated) without another request deciding on the same one in between.
    with s.store.exclusive():
        return s.server.create_token_response()


def userinfo():
    return standin().server.create_endpoint_response("userinfo")


def introspect():
    return standin().server.create_endpoint_response("introspection")


def revoke():
    s = standin()
    with s.store.exclusive():
        return s.server.create_endpoint_response("revocation")


@bp.get("/health")
def health():
    s = standin()
    return jsonify(status="ok", issuer=s.config.issuer, users=len(s.users), clients=len(s.clients))


# -- login and authorization --


def _session_user(users: UserDirectory) -> User | None:
    user = users.by_sub(session.get("sub"))
    if user is None or not user.active:
        session.pop("sub", None)
        session.pop("auth_time", None)
        return None
    return user


def _csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return session["csrf"]


def _html(body: str, status: int):
    return body, status, {"Content-Type": "text/html; charset=utf-8",
                          "Content-Security-Policy": HTML_POLICY,
                          "Cache-Control": "no-store"}


def _login_page(client, error: str | None, status: int, username: str = ""):
    return _html(
        render_template(
            "login.html",
            action=request.full_path,
            client_name=client.config.name if client else "",
            csrf=_csrf_token(),
            error=error,
            username=username,
        ),
        status,
    )


def _error_page(error: OAuth2Error):
    return _html(
        render_template(
            "error.html", error=error.error, description=error.get_error_description() or ""
        ),
        error.status_code if error.status_code >= 400 else 400,
    )


def _try_login(users: UserDirectory):
    """(user, error text, status) for the posted login form."""
    if not hmac.compare_digest(session.get("csrf", ""), request.form.get("csrf", "")):
        return None, "The login form expired. Please sign in again.", 400
    username = request.form.get("username", "").strip()
    user = users.authenticate(username, request.form.get("password", ""))
    if user is None:
        # Only a known username is logged: a password typed into the wrong field is not.
        known = users.by_username(username) is not None
        log.info("Failed login for %s", username if known else "an unknown username")
        return None, "Invalid username or password.", 401
    if not user.active:
        log.info("Refused login of suspended user %s", user.username)
        return None, f"User {user.username} is not active.", 401
    session.clear()
    session["sub"] = user.sub
    session["auth_time"] = int(time.time())
    log.info("User %s logged in", user.username)
    return user, None, 200


def authorize():
    s = standin()
    user = _session_user(s.users)
    error, status, fresh_login = None, 200, False
    if request.method == "POST":
        user, error, status = _try_login(s.users)
        fresh_login = user is not None
    try:
        grant = s.server.get_consent_grant(end_user=user)
    except OAuth2Error as err:
        if err.redirect_uri:
            # The client and its redirect_uri are valid: report the error to the client.
            return s.server.handle_error_response(None, err)
        # Unknown client or unregistered redirect_uri: IAM shows a page and never redirects.
        return _error_page(err)
    if user is None or error or (grant.prompt == "login" and not fresh_login):
        return _login_page(
            grant.request.client, error, status, request.form.get("username", "")
        )
    # No consent page: the stand-in approves every registered client, as IAM does for
    # clients whose scopes the administrator pre-approved.
    grant.request.auth_time = session.get("auth_time")
    return s.server.create_authorization_response(grant=grant, grant_user=user)


@bp.get("/logout")
def logout():
    session.clear()
    return _html(render_template("logout.html"), 200)


_VIEWS = {
    "authorization_endpoint": (authorize, ["GET", "POST"]),
    "token_endpoint": (token, ["POST"]),
    "userinfo_endpoint": (userinfo, ["GET", "POST"]),
    "jwks_uri": (jwk, ["GET"]),
    "introspection_endpoint": (introspect, ["POST"]),
    "revocation_endpoint": (revoke, ["POST"]),
}
for _name, (_view, _methods) in _VIEWS.items():
    bp.add_url_rule("/" + ENDPOINTS[_name], view_func=_view, methods=_methods)


# -- errors --


def _http_error(err: HTTPException):
    names = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
    body = {"error": names.get(err.code, "invalid_request"), "error_description": err.description}
    return jsonify(body), err.code


def _server_error(err: Exception):
    log.exception("Unexpected error on %s %s", request.method, request.path)
    body = {"error": "server_error", "error_description": "Internal error of the IAM stand-in."}
    return jsonify(body), 500


def _log_request(response):
    access_log.info("%s %s %s", request.method, request.path, response.status_code)
    return response


def create_app(config: StandInConfig) -> Flask:
    """Build the stand-in; creates the state directory, signing key and grant store."""
    if urlsplit(config.issuer).scheme == "http":
        # authlib refuses plain http except on loopback; the stand-in also runs as
        # http://iam:8080/ inside a pod or a compose network, which is its job.
        os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")

    state_dir = ensure_private_dir(config.state_dir)
    key = load_or_create_signing_key(state_dir)
    users = UserDirectory(config.users_file)
    clients = ClientRegistry(config.clients)
    store = GrantStore(state_dir / "grants.sqlite3")
    tokens = TokenService(
        issuer=config.issuer,
        key=key,
        store=store,
        users=users,
        clients=clients,
        organisation=config.organisation_name,
    )
    server = create_authorization_server(
        clients=clients, users=users, store=store, tokens=tokens,
        organisation=config.organisation_name,
    )

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=load_or_create_session_secret(state_dir),
        # Hub and stand-in often share a host (127.0.0.1), and cookies ignore ports.
        SESSION_COOKIE_NAME="officina-iam-session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=urlsplit(config.issuer).scheme == "https",
        MAX_CONTENT_LENGTH=1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False
    app.extensions["officina.iam"] = StandIn(
        config=config,
        users=users,
        clients=clients,
        store=store,
        tokens=tokens,
        server=server,
        metadata=provider_metadata(config.issuer, clients),
        jwks=public_jwks(key),
    )
    app.register_blueprint(bp)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _server_error)
    app.after_request(_log_request)
    return app
