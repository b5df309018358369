# syntax=docker/dockerfile:1
#
# One Flotilla image for every role; the first argument picks it (docker/entrypoint.sh):
#   web | worker | beat | agent | migrate | any other command
#
#   docker build -t flotilla .                        # CPU torch: control plane, CPU agents
#   docker build -t flotilla:cuda --build-arg VARIANT=cuda .   # CUDA torch for GPU agents
#   docker build -t flotilla:slim --build-arg EXTRAS= .        # control plane only, no torch
#
# Environment a production deployment sets (each also as NAME_FILE, read from a file,
# for mounted Secrets; see controlplane/settings.py and docs/configuration.md):
#   SECRET_KEY            signs sessions and keys token HMACs; the same in every pod
#   DATABASE_URL          postgresql://user:password@host:5432/flotilla
#   CELERY_BROKER_URL     redis://:password@host:6379/0 (unset: the embedded filesystem
#                         broker, which only works when all roles share FLOTILLA_HOME)
#   ALLOWED_HOSTS         comma-separated host names the web role answers to
#   CSRF_TRUSTED_ORIGINS  https://flotilla.example.com, for the dashboard's forms
#   SECURE_SSL_REDIRECT   true by default; /healthz and /readyz are exempt for probes
#   LOG_LEVEL             INFO by default
#   web:    PORT (8000), FLOTILLA_WEB_WORKERS (2), FLOTILLA_WEB_THREADS (64),
#           FLOTILLA_WEB_GRACEFUL_TIMEOUT (30), GUNICORN_CMD_ARGS (extra flags)
#   worker: FLOTILLA_WORKER_CONCURRENCY (2)
#   agent:  FLOTILLA_SERVER, FLOTILLA_TOKEN or FLOTILLA_TOKEN_FILE, FLOTILLA_NODE_NAME,
#           FLOTILLA_ADVERTISE_HOST, FLOTILLA_POWER_BACKEND (off)
# FLOTILLA_HOME (/var/lib/flotilla) must be writable: with a read-only root filesystem,
# mount an emptyDir (or a volume, for the beat schedule) there.
#
# VARIANT selects the torch build the agent runs Workloads with:
#   cpu  (default) torch's CPU wheels from download.pytorch.org/whl/cpu: a small image.
#   cuda torch's CUDA wheels from PyPI, which carry the CUDA runtime libraries
#        (nvidia-*-cu12) themselves. The GPU driver (libcuda, libnvidia-ml) comes from the
#        NVIDIA container toolkit at run time (NVIDIA_VISIBLE_DEVICES=all on the agent), so
#        the base stays python:3.11-slim: an nvidia/cuda:12.x-runtime-ubuntu22.04 base would
#        add a second copy of CUDA and bring Python 3.10, older than Flotilla needs.
# EXTRAS selects the package extras (default "agent"); an empty value leaves torch out.

ARG VARIANT=cpu

FROM python:3.11-slim AS builder
ARG VARIANT
ARG EXTRAS=agent
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# Compilers live here only, for any dependency without a wheel for this platform.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/flotilla
ENV PATH=/opt/flotilla/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common ./common
COPY cli ./cli
COPY controlplane ./controlplane
COPY agents ./agents
COPY plugins ./plugins
COPY dashboard ./dashboard
RUN case "$VARIANT" in \
        cpu) export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu ;; \
        cuda) ;; \
        *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac \
    && pip install --upgrade pip \
    && pip install ".${EXTRAS:+[$EXTRAS]}"

FROM python:3.11-slim AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="flotilla" \
      org.opencontainers.image.description="Flotilla control plane and node agent" \
      org.opencontainers.image.licenses="Apache-2.0"
# tini reaps the processes the agent's Workloads leave behind and forwards signals.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 flotilla \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/flotilla --no-create-home \
        --shell /usr/sbin/nologin flotilla \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/flotilla
COPY --from=builder /opt/flotilla /opt/flotilla
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/flotilla-entrypoint
ENV PATH=/opt/flotilla/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=controlplane.settings \
    FLOTILLA_HOME=/var/lib/flotilla \
    STATIC_ROOT=/opt/flotilla/static \
    FLOTILLA_IMAGE_VARIANT=${VARIANT} \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# Static files collected now, so WhiteNoise serves them from the image (compressed,
# cached) and the root filesystem can be read-only. The key is a throwaway: settings
# need one to load, and nothing is signed at build time.
RUN SECRET_KEY=collectstatic-build-only FLOTILLA_HOME=/tmp/flotilla-build \
        python -m django collectstatic --noinput \
    && rm -rf /tmp/flotilla-build
USER 10001:10001
WORKDIR /var/lib/flotilla
EXPOSE 8000
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/flotilla-entrypoint"]
CMD ["web"]
