# bptt-service image. BASE_IMAGE may be any Debian-based image with python3 and
# the venv module: the official python image (default) or a local stand-in
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

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN mkdir service && echo '__version__ = "0"' > service/__init__.py \
    && pip install . && pip uninstall --yes bptt-service && rm -rf service build *.egg-info

COPY service ./service
RUN pip install --no-deps . && rm -rf build *.egg-info \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin bptt

USER 10001
ENV BPTT_HOST=0.0.0.0 BPTT_PORT=8000
EXPOSE 8000
CMD ["python", "-m", "service"]
