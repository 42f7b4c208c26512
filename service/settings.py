"""All configuration, in one place: the only module that reads the environment.

Every setting can be given as an environment variable with the ``BPTT_``
prefix (``BPTT_PORT=9000``) or, when started with ``python -m service``, as a
command-line option (``--port 9000``), which wins over the environment;
``python -m service --help`` lists them, and README's settings table is
``settings_table()`` (a test keeps the two equal).
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ENV_PREFIX", "Settings", "settings_table"]

ENV_PREFIX = "BPTT_"


class Settings(BaseSettings):
    """Settings of the bptt service."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    # Where uvicorn listens. 0.0.0.0 in the container.
    host: str = Field(default="127.0.0.1", description="interface to listen on (`0.0.0.0` in the image)")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0 picks a free one)")
    # The Open Inference Protocol over gRPC, on the same host, served by the same process and compute pool.
    grpc_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="TCP port of the Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, "
        "and `grpc.health.v1`); unset, no gRPC",
    )
    # One worker process per core is the usual choice on a dedicated machine.
    workers: int = Field(default=1, ge=1, le=64, description="worker processes")
    # Requests compute in worker threads (numpy releases the GIL in its kernels,
    # BLAS uses the cores); more threads than cores only contend for the GIL.
    threads: int = Field(default=2, ge=1, le=256, description="requests computing at once, per worker process")
    # OpenBLAS threads spin while they wait for each other; with two compute threads on two
    # cores, or a loaded machine, a multithreaded product per time step stalls (measured: a
    # 3 s request took 25 s). One BLAS thread per compute thread keeps every core busy.
    blas_threads: int = Field(default=1, ge=1, le=64, description="BLAS threads per compute thread")
    # Keep freed blocks for reuse instead of page-faulting them back in (service/runtime.py).
    tune_malloc: bool = Field(default=True, description="keep freed memory for reuse (docs/performance.md)")
    # The per-step loops compiled by Numba (the `fast` extra, service/kernel.py) where they pay.
    kernel: Literal["auto", "numba", "numpy"] = Field(
        default="auto",
        description="the engine's per-step loops: `numba` (compiled where faster, needs the `fast` extra), "
        "`numpy`, or `auto` (numba when installed); the self-check logs which runs",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(default="info", description="log level")
    # One line per request; "json" writes each line as a JSON object for log collectors.
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="one line per request (method, path, status, duration, size): `text` or `json` "
        "(`json` in the image)",
    )

    # -- limits: over one, a request gets 413 naming it ------------------------
    # 64 MiB holds the tutorial's model (C = 8000, H = 100, T = 50) as JSON lists (34 MB) with room.
    max_body_bytes: int = Field(
        default=64 << 20, ge=1024, description="largest request body in bytes; over it, 413 before it is read"
    )
    max_tokens: int = Field(default=10_000, ge=1, description="largest T of one sequence")
    # C x H: 10 million is a 100,000-word vocabulary at H = 100 (80 MB a matrix).
    max_weights: int = Field(default=10_000_000, ge=1, description="largest C x H")
    # The (tokens x C) probability matrix: 32 million float64 numbers are 256 MB.
    max_probabilities: int = Field(
        default=32_000_000, ge=1, description="largest tokens x C of one request (the softmax matrix)"
    )
    max_batch: int = Field(default=1024, ge=1, description="most sequences in one batch")
    max_batch_tokens: int = Field(default=100_000, ge=1, description="most tokens in one batch")
    # "trace": true returns T x lags x H delta values (O(T^2 H) without truncation).
    max_trace_values: int = Field(default=1_000_000, ge=1, description="most delta values in one trace")
    max_trace_delta_o: int = Field(
        default=100_000, ge=0, description="largest T x C `delta_o` in a trace; above it, `delta_o` is null"
    )
    max_queue: int = Field(
        default=64, ge=0, description="requests waiting for a compute thread, per worker; past it, 503 with Retry-After"
    )

    # -- the cost model: every compute request is priced from its shapes before it runs --
    # Predicted seconds (service/costs.py) over this: 413 before any work.
    max_request_seconds: float = Field(
        default=10.0, gt=0, description="largest predicted compute time of one request, in seconds; over it, 413"
    )
    # Predicted peak bytes of the computation plus the request's own arrays: with 2 threads,
    # 2 x 384 MiB plus bodies in flight and parsing fit the manifest's 2 GiB (tests/test_deploy.py).
    max_request_bytes: int = Field(
        default=384 << 20, ge=1 << 20, description="largest predicted memory of one request, in bytes; over it, 413"
    )
    # The cost model's constants were measured on a 2-core development machine.
    speed: float = Field(
        default=1.0,
        gt=0,
        description="this machine's speed relative to the cost model's calibration (2 = twice as fast)",
    )

    # -- time and memory: every request is bounded while it runs -----------------
    # Queue wait + compute; the work checks it between steps and stops with 504.
    request_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="deadline of one request in seconds (queue wait + compute); past it, 504",
    )
    # A body that trickles in holds memory and a queue slot: drop it with 408.
    body_timeout: float = Field(
        default=30.0, gt=0, le=60, description="seconds a request body may take to arrive; past it, 408"
    )
    # Bodies being read or waiting in the queue, summed over all connections.
    max_bytes_in_flight: int = Field(
        default=256 << 20,
        ge=1024,
        description="request bytes held at once (bodies arriving or queued, gRPC messages); past it, 503",
    )
    # JSON number text is parsed holding the GIL (about 0.1 us a number, 1.5 us a list);
    # the estimate from the body's commas and brackets is refused past this.
    max_parse_seconds: float = Field(
        default=0.5,
        gt=0,
        description="longest estimated parse of a JSON body's numbers and lists, in seconds; past it, 413 "
        "(base64 tensors parse in milliseconds)",
    )

    # -- stopping ----------------------------------------------------------------
    # After SIGTERM: readiness 503 at once, new work still accepted for this long (load balancers
    # take a few seconds to stop sending), then refused with 503 while the admitted work finishes
    # (within BPTT_REQUEST_TIMEOUT). 0 for a process no balancer sends to; the manifests set 10.
    drain_grace_seconds: float = Field(
        default=0.0,
        ge=0,
        le=600,
        description="after SIGTERM, seconds new work is still accepted while readiness answers 503; then new "
        "work is refused with 503 and the process exits once the admitted work finishes (service/lifecycle.py)",
    )

    # -- browsers on other origins ---------------------------------------------------
    # Empty: no cross-origin access. "https://a.example,http://localhost:8888": those pages may call.
    cors_origins: str = Field(
        default="",
        description="origins allowed to call from a browser (CORS), comma-separated; empty: none",
    )

    # -- authentication ---------------------------------------------------------
    api_key: SecretStr | None = Field(
        default=None,
        description="API key(s), `key` or `key1,key2`: every route but /healthz, /readyz and /metrics then needs "
        "`Authorization: Bearer <key>` (401 otherwise), and every gRPC call but the health service's the metadata "
        "`authorization: Bearer <key>` (UNAUTHENTICATED otherwise); unset, the service is open",
    )

    # A token bucket per key (service/quota.py): `rate` requests a second, `burst` at once after a pause.
    rate_limit_per_key: float | None = Field(
        default=None,
        gt=0,
        description="requests a second each API key may send (needs BPTT_API_KEY); past it, 429 with "
        "Retry-After; unset, no limit",
    )
    rate_limit_burst: int = Field(
        default=10,
        ge=1,
        description="requests a key may send at once, after a pause, under BPTT_RATE_LIMIT_PER_KEY",
    )

    # -- tracing --------------------------------------------------------------
    # OpenTelemetry (service/tracing.py): OTLP over HTTP, configured by the standard OTEL_* variables.
    tracing: bool = Field(
        default=False,
        description="send a trace of every request (queue wait, decode, engine, encode) by OpenTelemetry, "
        "configured by the standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, ...); "
        "needs the `tracing` extra",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        """Limits that contradict each other, and a key setting with no key, stop the start."""
        if self.max_bytes_in_flight < self.max_body_bytes:
            raise ValueError(
                f"max_bytes_in_flight ({self.max_bytes_in_flight:,}) must be at least max_body_bytes "
                f"({self.max_body_bytes:,}): a body the limit admits could never be held"
            )
        if self.grpc_port is not None and self.grpc_port == self.port != 0:
            raise ValueError(f"grpc_port and port are both {self.port}: gRPC and HTTP need ports of their own")
        if self.api_key is not None and not self.api_keys:
            raise ValueError("api_key is set but holds no key (only commas or spaces): the service would be open")
        if self.kernel == "numba" and importlib.util.find_spec("numba") is None:
            raise ValueError("kernel numba needs the fast extra: pip install 'bptt-service[fast]'")
        if self.tracing and importlib.util.find_spec("opentelemetry.sdk") is None:
            raise ValueError("tracing needs the tracing extra: pip install 'bptt-service[tracing]'")
        if self.rate_limit_per_key is not None and not self.api_keys:
            raise ValueError(
                "rate_limit_per_key needs api_key: the limit is per API key, and without keys the clients "
                "cannot be told apart"
            )
        return self

    @property
    def cors_allowed(self) -> list[str]:
        """The origins allowed by CORS (empty: no cross-origin access)."""
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def api_keys(self) -> list[str]:
        """The configured keys (empty: no authentication)."""
        if self.api_key is None:
            return []
        return [k.strip() for k in self.api_key.get_secret_value().split(",") if k.strip()]

    def to_env(self) -> dict[str, str]:
        """These settings as ``BPTT_*`` environment variables, for worker processes."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
            env[f"{ENV_PREFIX}{name.upper()}"] = text
        return env


def _shown(value: Any) -> str:
    """A default as the README shows it."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, int) and value >= 1 << 20 and value % (1 << 20) == 0:
        return f"{value >> 20} MiB"
    if isinstance(value, int | float) and value >= 10_000:
        return f"{value:,.0f}" if float(value).is_integer() and value < 1e9 else f"{value:g}"
    return f"`{value}`"


def settings_table() -> str:
    """The README's table of settings, generated from ``Settings``."""
    lines = ["| variable | option | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        option = "--" + name.replace("_", "-")
        lines.append(f"| `{ENV_PREFIX}{name.upper()}` | `{option}` | {_shown(field.default)} | {field.description} |")
    return "\n".join(lines) + "\n"
