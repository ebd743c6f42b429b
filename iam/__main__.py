"""`python -m officina.iam --config FILE`: serve the IAM stand-in with waitress."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from .config import ConfigError, load_config

log = logging.getLogger("officina.iam")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # authlib logs whole token responses at DEBUG ("Issue token ..."): keep it above that
    # whatever the configured level, so a debug run never writes tokens to the log.
    logging.getLogger("authlib").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m officina.iam",
        description="Officina's IAM stand-in: an OpenID Connect provider behaving like "
        "INDIGO-IAM v1.12, for development and tests.",
    )
    parser.add_argument(
        "--config", required=True, metavar="FILE",
        help="YAML or JSON configuration (issuer, port, state_dir, users_file, clients, ...)",
    )
    args = parser.parse_args(argv)

    try:
        config = load_config(args.config)
        configure_logging(config.log_level)
        # Imported late so that a configuration error is reported without loading Flask.
        from .provider import create_app

        app = create_app(config)
    except ConfigError as err:
        print(f"officina-iam: configuration error: {err}", file=sys.stderr)
        return 2

    from waitress import create_server

    try:
        server = create_server(
            app, host=config.host, port=config.port, threads=config.threads, ident="officina-iam"
        )
    except OSError as err:
        print(f"officina-iam: cannot listen on {config.host}:{config.port}: {err.strerror}",
              file=sys.stderr)
        return 1

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    store = app.extensions["officina.iam"].store
    log.info(
        "IAM stand-in for issuer %s: %d users, %d clients, listening on %s:%d",
        config.issuer, len(app.extensions["officina.iam"].users), len(config.clients),
        config.host, config.port,
    )
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
