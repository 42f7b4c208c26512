# bptt-service image. BASE_IMAGE may be any Debian-based image with python3 and
# its venv module: the official python image (the default) or a local stand-in
# (../shared/container/make-base-image.sh builds one where no registry is reachable).
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

WORKDIR /app
RUN python3 -m venv /opt/venv

# Dependencies first, in a layer of their own: rebuilt only when pyproject.toml
# changes. A stub package stands in for the source so pip can resolve them.
COPY pyproject.toml README.md ./
# fast: the engine's loops compiled by Numba (BPTT_KERNEL; compiled at start-up, before readiness).
# EXTRAS=server,fast,tracing adds OpenTelemetry (BPTT_TRACING, configured by the OTEL_* variables);
# EXTRAS=server leaves numba out and the engine runs numpy's loops.
ARG EXTRAS=server,fast
RUN mkdir service && echo '__version__ = "0"' > service/__init__.py \
    && pip install ".[${EXTRAS}]" && pip uninstall --yes bptt-service \
    && rm -rf service build ./*.egg-info

COPY service ./service
RUN pip install --no-deps . \
    && rm -rf build ./*.egg-info service \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin bptt

USER 10001
# Every Settings field can be set here or at run time as BPTT_<NAME>.
ENV BPTT_HOST=0.0.0.0 \
    BPTT_PORT=8000 \
    BPTT_LOG_FORMAT=json
# 8001: the Open Inference Protocol over gRPC, when BPTT_GRPC_PORT=8001 is set (off by default).
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('BPTT_PORT', '8000')}/healthz\", timeout=2)"]
CMD ["python", "-m", "service"]
