#!/usr/bin/env bash
# The Flotilla image's entrypoint: the first argument names the role to run.
#
#   web       gunicorn serving controlplane.wsgi on 0.0.0.0:${PORT:-8000}
#             (FLOTILLA_WEB_WORKERS processes x FLOTILLA_WEB_THREADS threads; extra
#             gunicorn flags through GUNICORN_CMD_ARGS)
#   worker    the Celery worker (FLOTILLA_WORKER_CONCURRENCY processes)
#   beat      Celery beat (run exactly one)
#   agent     the node agent: `flotilla agent` with FLOTILLA_SERVER, the bootstrap token
#             from FLOTILLA_TOKEN or the file FLOTILLA_TOKEN_FILE names, the node name from
#             FLOTILLA_NODE_NAME, and any further arguments (e.g. --cluster gpu)
#   migrate   apply the database migrations, then exit
#   anything else is executed as given (e.g. `flotilla get nodes`, `bash`).
#
# Further arguments after a role are passed on to its command. With
# FLOTILLA_ENTRYPOINT_DRY_RUN=1 the command is printed instead of executed
# (tests/test_dockerfile.py checks each role that way, without Docker).
set -euo pipefail

export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-controlplane.settings}"

run() {
    if [[ "${FLOTILLA_ENTRYPOINT_DRY_RUN:-}" == "1" ]]; then
        printf '%q ' "$@" | sed 's/ $//'
        printf '\n'
        exit 0
    fi
    exec "$@"
}

role="${1:-web}"
if [[ $# -gt 0 ]]; then
    shift
fi

case "$role" in
    web)
        threads="${FLOTILLA_WEB_THREADS:-64}"
        # Each agent holds a long-poll open plus a connection for its other calls, and
        # gunicorn stops accepting past worker_connections (same flags as `flotilla up`).
        connections=$((threads * 2 + 100))
        if ((connections < 1000)); then
            connections=1000
        fi
        run python -m gunicorn controlplane.wsgi:application \
            --bind "0.0.0.0:${PORT:-8000}" \
            --worker-class gthread \
            --worker-connections "$connections" \
            --workers "${FLOTILLA_WEB_WORKERS:-2}" \
            --threads "$threads" \
            --timeout 120 \
            --graceful-timeout "${FLOTILLA_WEB_GRACEFUL_TIMEOUT:-30}" \
            --worker-tmp-dir /dev/shm \
            --no-control-socket \
            --access-logfile - \
            "$@"
        ;;
    worker)
        run python -m celery -A controlplane.celeryapp worker \
            --loglevel "${LOG_LEVEL:-INFO}" \
            --concurrency "${FLOTILLA_WORKER_CONCURRENCY:-2}" \
            --without-gossip --without-mingle --without-heartbeat \
            -n "worker@%h" \
            "$@"
        ;;
    beat)
        run python -m celery -A controlplane.celeryapp beat \
            --loglevel "${LOG_LEVEL:-INFO}" \
            --schedule "${FLOTILLA_HOME:-/var/lib/flotilla}/celerybeat-schedule" \
            "$@"
        ;;
    agent)
        # The token travels in the environment, never on the command line (ps shows that).
        if [[ -z "${FLOTILLA_TOKEN:-}" && -n "${FLOTILLA_TOKEN_FILE:-}" ]]; then
            FLOTILLA_TOKEN="$(<"$FLOTILLA_TOKEN_FILE")"
            export FLOTILLA_TOKEN
        fi
        args=()
        if [[ -n "${FLOTILLA_NODE_NAME:-}" ]]; then
            # In a DaemonSet the host name is the Pod's; the Kubernetes node name is wanted.
            args+=(--name "$FLOTILLA_NODE_NAME")
        fi
        if [[ -n "${FLOTILLA_ADVERTISE_HOST:-}" ]]; then
            args+=(--advertise-host "$FLOTILLA_ADVERTISE_HOST")
        fi
        args+=(--power-backend "${FLOTILLA_POWER_BACKEND:-off}")
        run flotilla agent "${args[@]}" "$@"
        ;;
    migrate)
        run python -m django migrate --noinput "$@"
        ;;
    *)
        run "$role" "$@"
        ;;
esac
