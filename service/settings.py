"""All configuration, in one place: the only module that reads the environment.

Every setting can be given as an environment variable with the ``BPTT_``
prefix (``BPTT_PORT=9000``) or, when started with ``python -m service``, as a
command-line option (``--port 9000``); ``python -m service --help`` lists them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Settings of the bptt service."""

    model_config = SettingsConfigDict(
        env_prefix="BPTT_",
        extra="forbid",
        cli_prog_name="python -m service",
        cli_kebab_case=True,
        cli_implicit_flags=True,
    )

    # Where uvicorn listens. 0.0.0.0 in the container.
    host: str = Field(default="127.0.0.1", description="Interface to listen on.")
    # 8000, as in the README's examples.
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0 picks a free one).")
    # One worker process per core is the usual choice on a dedicated machine.
    workers: int = Field(default=1, ge=1, le=64, description="Worker processes.")
    # Requests compute in worker threads (numpy releases the GIL in its kernels,
    # BLAS uses the cores); more threads than cores only contend for the GIL.
    threads: int = Field(default=2, ge=1, le=256, description="Requests computing at once, per worker process.")
    # Keep freed blocks for reuse instead of page-faulting them back in
    # (see service/runtime.py); off only to compare.
    tune_malloc: bool = Field(default=True, description="Raise glibc's malloc mmap/trim thresholds.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="Log level."
    )
    # One line per request (method, path, status, duration, request size);
    # "json" writes each line as a JSON object for log collectors.
    log_format: Literal["text", "json"] = Field(default="text", description="Log line format.")

    def to_env(self) -> dict[str, str]:
        """These settings as ``BPTT_*`` environment variables, for worker processes."""
        prefix = self.model_config["env_prefix"]
        return {f"{prefix}{name.upper()}": str(value) for name, value in self.model_dump().items()}
