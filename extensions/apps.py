"""Publish a notebook as a Voila app for the people of your groups.

    app = officina.lab.publish("digits-app.ipynb", share_with=["officina/users"])
    app["endpoints"]["app"]              # its address, behind the hub's login
    officina.lab.published_apps()        # yours and those published to your groups
    officina.lab.unpublish(app["id"])

The hub's resource manager runs Voila on the notebook as your account, with a token of yours
that may only list and call model servers (yours and those shared with you); members of the
`share_with` groups open it at its address without a session of their own.
"""

from __future__ import annotations

import os
from pathlib import Path

from .resources import ResourceError, Resources, create_running


def publish(notebook: str | os.PathLike, share_with: list[str] | None = None, timeout: float = 180,
            **options) -> dict:
    """Publish `notebook` (a path in your home, or relative to it) to the groups `share_with`;
    the running app's record (its address in `endpoints.app`)."""
    path = Path(notebook)
    if path.is_absolute():
        home = Path(os.environ.get("HOME", "/")).resolve()
        try:
            path = path.resolve().relative_to(home)
        except ValueError:
            raise ResourceError(f"notebook: {notebook} is not in your home ({home})") from None
    request = dict(options, notebook=path.as_posix())
    if share_with is not None:
        request["share_with"] = list(share_with)
    return create_running("app", None, timeout, **request)


def published_apps() -> list[dict]:
    """The published apps you may open: yours and those published to a group of yours."""
    return Resources()._call("GET", "api/apps")


def unpublish(app_id: str) -> dict:
    return Resources().delete(app_id)
