"""The `officina` command: up, down, status, config."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .settings import SettingsError, load_settings, reference_markdown
from .supervisor import Supervisor, SupervisorError, down, status


def _config_path(arg: str | None) -> str | None:
    """--config, else $OFFICINA_CONFIG, else ./officina.yaml when present, else the defaults."""
    if arg:
        return arg
    if os.environ.get("OFFICINA_CONFIG"):
        return os.environ["OFFICINA_CONFIG"]
    if Path("officina.yaml").is_file():
        return "officina.yaml"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="officina", description="Run the Officina analysis platform.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "start the embedded platform and supervise it until Ctrl-C or `officina down`"),
        ("down", "stop a running platform and every process it started"),
        ("status", "show each component and its health (exit 0 only when all are healthy)"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", "-c", help="platform configuration file (default: ./officina.yaml if present)")
    p = sub.add_parser("config", help="check a configuration file, or print the configuration reference")
    p.add_argument("--config", "-c")
    p.add_argument("--docs", action="store_true", help="print the reference of every setting (Markdown)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "config" and args.docs:
            print(reference_markdown())
            return 0
        settings = load_settings(_config_path(args.config))
        if args.command == "config":
            print(f"{settings.source}: valid; state in {settings.state_dir}; public URL {settings.public_url}")
            return 0
        if args.command == "up":
            return Supervisor(settings).up()
        if args.command == "down":
            return down(settings)
        if args.command == "status":
            return status(settings)
    except SettingsError as exc:
        print(f"officina: configuration error: {exc}", file=sys.stderr)
        return 2
    except SupervisorError as exc:
        print(f"officina: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
