"""``python -m service``: start the HTTP server with uvicorn.

Options and ``BPTT_*`` environment variables are the fields of
``service.settings.Settings``; ``python -m service --help`` lists them.
"""

from __future__ import annotations

import os
import signal
import sys

import pydantic
import uvicorn
from pydantic_settings import CliApp

from .settings import Settings


def main(argv: list[str] | None = None) -> int:
    """Parse the settings, then serve until SIGINT or SIGTERM."""
    try:
        settings = CliApp.run(Settings, cli_args=sys.argv[1:] if argv is None else argv)
    except pydantic.ValidationError as exc:
        for e in exc.errors(include_url=False):
            name = ".".join(str(p) for p in e["loc"])
            print(
                f"invalid setting {name} (--{name.replace('_', '-')} or BPTT_{name.upper()}): "
                f"{e['msg']}, got {e['input']!r}",
                file=sys.stderr,
            )
        return 2
    # The app (in each worker process) reads its settings from the environment.
    os.environ.update(settings.to_env())
    # uvicorn stops gracefully on SIGTERM (in-flight requests finish), then re-raises
    # the signal to the handler that was there before it started. Make that handler
    # a no-op, so a stop asked for by an orchestrator ends with status 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(
        "service.app:app",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,  # service.ops writes one line per request, with duration and size
        server_header=False,  # no "server: uvicorn" in answers
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
