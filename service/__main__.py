"""``python -m service``: start the HTTP server with uvicorn.

Options are the fields of ``service.settings.Settings``; each is also an
environment variable with the ``BPTT_`` prefix, and an option given on the
command line wins over the environment. ``python -m service --help`` lists them.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import signal
import socket
import sys
import typing
from typing import Any

import pydantic
import uvicorn

from . import __version__
from .settings import ENV_PREFIX, Settings

__all__ = ["SHUTDOWN_GRACE", "main", "parser", "stop_seconds"]

SHUTDOWN_GRACE = 5.0  # seconds past the drain that a stop may take (answers still being written)


# Where the last word of a setting's name would mislead as the name of its value.
METAVARS = {"api_key": "KEYS", "rate_limit_per_key": "RATE"}


def stop_seconds(settings: Settings) -> float:
    """The longest a stop on SIGTERM takes: the drain's grace, the deadline of the work admitted
    before it ended (service/lifecycle.py), then uvicorn's own graceful shutdown."""
    return settings.drain_grace_seconds + settings.request_timeout + SHUTDOWN_GRACE


def parser() -> argparse.ArgumentParser:
    """The command line, one option per setting, with its environment variable and default."""
    p = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve the bptt service (loss and BPTT gradients of an RNN) over HTTP. Every option is also "
        f"an environment variable with the {ENV_PREFIX} prefix (--max-tokens: {ENV_PREFIX}MAX_TOKENS); an option "
        "given here wins over the environment.",
    )
    p.add_argument("--version", action="version", version=f"bptt-service {__version__}")
    for name, field in Settings.model_fields.items():
        option = "--" + name.replace("_", "-")
        env = f"{ENV_PREFIX}{name.upper()}"
        shown = "unset" if field.default is None else field.default
        help_text = f"{field.description} [{env}; default: {shown}]".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if field.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(field.annotation) is typing.Literal:
            kwargs["choices"] = typing.get_args(field.annotation)
        else:
            kwargs["metavar"] = METAVARS.get(name, name.split("_")[-1].upper())
        p.add_argument(option, **kwargs)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse the settings, then serve until SIGINT or SIGTERM."""
    given = vars(parser().parse_args(sys.argv[1:] if argv is None else argv))
    try:
        settings = Settings(**given)
    except pydantic.ValidationError as exc:
        for e in exc.errors(include_url=False):
            name = ".".join(str(p) for p in e["loc"])
            if not name:  # a rule across settings
                print(f"invalid settings: {e['msg'].removeprefix('Value error, ')}", file=sys.stderr)
                continue
            print(
                f"invalid setting {name} (--{name.replace('_', '-')} or {ENV_PREFIX}{name.upper()}): "
                f"{e['msg']}, got {e['input']!r}",
                file=sys.stderr,
            )
        return 2
    for option, port in (("port", settings.port), ("grpc-port", settings.grpc_port)):
        taken = None if port is None else _port_taken(settings.host, port, option=option)
        if taken:
            print(taken, file=sys.stderr)
            return 2
    # The app (in each worker process) reads its settings from the environment.
    os.environ.update(settings.to_env())
    # On SIGTERM the app drains (service/lifecycle.py) and then hands the signal to uvicorn,
    # which stops and re-raises it to the handler that was there before it started. Make
    # that handler a no-op, so a stop asked for by an orchestrator ends with status 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,  # service.ops writes one line per request, with duration and size
        server_header=False,  # no "server: uvicorn" in answers
        # The drain has waited for the admitted work (none runs past its deadline); uvicorn then
        # waits this long for answers still being written: a stop takes at most stop_seconds().
        timeout_graceful_shutdown=math.ceil(SHUTDOWN_GRACE),
    )
    return 0


def _port_taken(host: str, port: int, *, option: str = "port") -> str | None:
    """A message saying how to choose another port when ``host:port`` is in use, else None.

    ``option`` is the setting that chose it: ``port`` (HTTP) or ``grpc-port``.
    """
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return None  # uvicorn reports other problems itself
            env = f"{ENV_PREFIX}{option.replace('-', '_').upper()}"
            fixes = [f"--{option} {port + 1}", f"{env}={port + 1}"]
            if option == "port":
                fixes.append(f"`make run PORT={port + 1}`")
            return (
                f"port {port} on {host} is already in use (another `make run`?): choose another with "
                + ", ".join(fixes[:-1])
                + ", or "
                + fixes[-1]
            )
    return None


if __name__ == "__main__":
    sys.exit(main())
