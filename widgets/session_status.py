"""`SessionStatus`: who you are, your IAM groups and when your session's token expires."""

from __future__ import annotations

import html
import time

import ipywidgets as widgets

from officina.lab.token_keeper import read_status

_STATE_TEXT = {
    "valid": ("#1a7f37", "valid"),
    "expired": ("#cf222e", "expired"),
    "login_required": ("#cf222e", "log in again at the hub"),
    "error": ("#9a6700", "not available"),
    "starting": ("#57606a", "starting"),
    "disabled": ("#57606a", "no token path"),
}


def _countdown(seconds: int) -> str:
    minutes, seconds = divmod(max(0, int(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


def render(status: dict) -> str:
    colour, word = _STATE_TEXT.get(status.get("state"), ("#57606a", status.get("state", "?")))
    rows = [("User", status.get("user") or "?"), ("Token", f'<b style="color:{colour}">{word}</b>')]
    if "expires_at" in status:
        at = time.strftime("%H:%M:%S", time.localtime(status["expires_at"]))
        rows.append(("Expires", f"{at} (in {_countdown(status.get('expires_in', 0))}); renewed automatically"))
    if status.get("groups"):
        rows.append(("Groups", ", ".join(html.escape(g) for g in status["groups"])))
    if status.get("audience"):
        aud = status["audience"]
        rows.append(("Audience", html.escape(", ".join(aud) if isinstance(aud, list) else str(aud))))
    if status.get("file"):
        rows.append(("File", f"<code>{html.escape(status['file'])}</code> ($BEARER_TOKEN_FILE)"))
    for key in ("message", "last_error"):
        if status.get(key):
            rows.append(("Note", html.escape(status[key])))
    cells = "".join(
        f'<tr><th style="text-align:left;padding-right:1em">{k}</th><td style="text-align:left">{v}</td></tr>'
        for k, v in rows
    )
    return f"<table>{cells}</table>"


class SessionStatus(widgets.VBox):
    """Shows the session's identity and token; press Refresh to read it again."""

    def __init__(self, **kwargs):
        self.view = widgets.HTML()
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.refresh_button.on_click(lambda _: self.refresh())
        super().__init__(children=[self.view, self.refresh_button], **kwargs)
        self.refresh()

    def refresh(self) -> dict:
        status = read_status()
        self.view.value = render(status)
        return status
