"""All configuration, in one place: the only module that reads the environment.

Every setting can be given as an environment variable with the ``BPTT_``
prefix (``BPTT_PORT=9000``) or, when started with ``python -m service``, as a
command-line option (``--port 9000``); ``python -m service --help`` lists them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
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

    # -- limits: over one, a request gets 413 naming it ------------------------
    # 128 MiB holds the tutorial's model (C = 8000, H = 100) as JSON lists (34 MB)
    # with room; checked from Content-Length before reading, and while reading.
    max_body_bytes: int = Field(default=128 << 20, ge=1024, description="Largest request body, bytes.")
    # Tokens in one sequence; the backward pass is linear in T.
    max_tokens: int = Field(default=10_000, ge=1, description="Largest T of one sequence.")
    # C x H: 10 million is a 100,000-word vocabulary at H = 100 (80 MB a matrix).
    max_weights: int = Field(default=10_000_000, ge=1, description="Largest C x H.")
    # The (tokens x C) probability matrix, the largest array a request makes:
    # 32 million float64 numbers are 256 MB.
    max_probabilities: int = Field(default=32_000_000, ge=1, description="Largest tokens x C of one request.")
    max_batch: int = Field(default=1024, ge=1, description="Most sequences in one batch.")
    max_batch_tokens: int = Field(default=100_000, ge=1, description="Most tokens in one batch.")
    # "trace": true returns T x lags x H delta values (O(T^2 H) without truncation).
    max_trace_values: int = Field(default=1_000_000, ge=1, description="Most delta values in one trace.")
    # The trace's delta_o is T x C; above this it is left out (null), the rest kept.
    max_trace_delta_o: int = Field(default=100_000, ge=0, description="Largest T x C delta_o in a trace.")
    # /gradient-check and /bptt/compare redo the forward pass (or the tutorial's
    # loop) many times; 2e9 operations are a few seconds here.
    max_check_flops: float = Field(default=2e9, gt=0, description="Largest estimated work of one check.")
    # Requests waiting for a compute thread; past this, 503 with Retry-After.
    max_queue: int = Field(default=64, ge=0, description="Most requests waiting to compute, per worker.")

    # -- authentication ---------------------------------------------------------
    # Unset: the service is open. Set: "key" or "key1,key2"; every route but
    # /healthz, /readyz and /metrics needs "Authorization: Bearer <key>".
    api_key: SecretStr | None = Field(default=None, description="API key(s), comma-separated.")

    @property
    def api_keys(self) -> list[str]:
        """The configured keys (empty: no authentication)."""
        if self.api_key is None:
            return []
        return [k.strip() for k in self.api_key.get_secret_value().split(",") if k.strip()]

    def to_env(self) -> dict[str, str]:
        """These settings as ``BPTT_*`` environment variables, for worker processes."""
        prefix = self.model_config["env_prefix"]
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"{prefix}{name.upper()}"] = str(value)
        return env
