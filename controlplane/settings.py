"""Django settings, read from the environment.

Embedded defaults (no variables set): SQLite in WAL mode and a filesystem Celery
broker under ``FLOTILLA_HOME``, so one machine runs everything with no servers.
Production sets ``DATABASE_URL`` (PostgreSQL) and ``CELERY_BROKER_URL`` (Redis).
"""

from __future__ import annotations

import secrets
from pathlib import Path

import dj_database_url

from common.envhelpers import (
    ConfigError,
    envbool,
    envfloat,
    envint,
    envlist,
    envstr,
    flotilla_home,
)

BASE_DIR = Path(__file__).resolve().parent.parent
FLOTILLA_HOME = flotilla_home()
FLOTILLA_HOME.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """SECRET_KEY / SECRET_KEY_FILE, else a random key kept in FLOTILLA_HOME.

    The key signs sessions and keys the token HMACs, so it must survive a
    restart: embedded mode writes it once with owner-only permissions.
    """
    key = envstr("SECRET_KEY")
    if key:
        return key
    path = FLOTILLA_HOME / "secret_key"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = envbool("DEBUG", False)
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
# In a pod (the Helm chart sets it from status.podIP): Prometheus scrapes /metrics by the
# pod's IP, and that Host must be allowed too.
if envstr("FLOTILLA_POD_IP"):
    ALLOWED_HOSTS.append(envstr("FLOTILLA_POD_IP"))
# GET /metrics: aggregate counts for Prometheus, without a token (controlplane/metrics_view.py).
FLOTILLA_METRICS = envbool("FLOTILLA_METRICS", True)
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "controlplane",
    "controlplane.telemetry",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (the dashboard's CSS and vendored htmx) straight from the app
    # directories, compressed and with cache headers; no separate file server.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
WSGI_APPLICATION = "controlplane.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "dashboard.roles.context",
            ],
        },
    },
]


def _databases() -> dict:
    url = envstr("DATABASE_URL")
    if url:
        try:
            db = dj_database_url.parse(url, conn_max_age=envint("DB_CONN_MAX_AGE", 60))
        except ValueError as exc:
            raise ConfigError(f"DATABASE_URL is not a database URL Flotilla knows: {exc}") from exc
        if db["ENGINE"].endswith("sqlite3"):
            db["OPTIONS"] = _sqlite_options()
        elif db["ENGINE"].endswith("postgresql"):
            # A bounded pool per process, not a connection per thread: the web server
            # runs a thread per held long-poll, far more than PostgreSQL's connection limit.
            db["CONN_MAX_AGE"] = 0
            db.setdefault("OPTIONS", {})["pool"] = {
                "min_size": envint("DB_POOL_MIN_SIZE", 2, minimum=0),
                "max_size": envint("DB_POOL_MAX_SIZE", 16, minimum=1),
                "timeout": envfloat("DB_POOL_TIMEOUT", 30.0, minimum=1.0),
            }
    else:
        db = {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(FLOTILLA_HOME / "flotilla.sqlite3"),
            "OPTIONS": _sqlite_options(),
        }
    if db["ENGINE"].endswith("sqlite3"):
        # Tests share the database with a real worker process, so it must be a file.
        db.setdefault("TEST", {})["NAME"] = str(FLOTILLA_HOME / "test.sqlite3")
    return {"default": db}


def _sqlite_options() -> dict:
    # WAL lets readers run beside the one writer; IMMEDIATE takes the write lock at
    # BEGIN so two writers queue on the busy timeout instead of failing mid-transaction.
    return {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }


DATABASES = _databases()
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
# Serve from the apps' static folders without a collectstatic step (embedded mode);
# an image may still run collectstatic into STATIC_ROOT.
WHITENOISE_USE_FINDERS = True
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"
STATIC_ROOT = envstr("STATIC_ROOT") or str(FLOTILLA_HOME / "static")
try:
    Path(STATIC_ROOT).mkdir(parents=True, exist_ok=True)  # whitenoise warns when it is missing
except OSError:
    pass  # a read-only image: the folder was made (and filled) at build time, or is not needed

# Security: HTTPS redirect, secure cookies and HSTS whenever we are not in DEBUG,
# so `manage.py check --deploy` is clean for production settings. Embedded mode
# serves plain http://127.0.0.1, so `flotilla up` turns these off explicitly.
SECURE_COOKIES = envbool("SECURE_COOKIES", not DEBUG)
SESSION_COOKIE_SECURE = SECURE_COOKIES
CSRF_COOKIE_SECURE = SECURE_COOKIES
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_REDIRECT_EXEMPT = [
    r"^healthz$",
    r"^readyz$",
    r"^metrics$",
]  # probes speak plain HTTP inside the cluster
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SILENCED_SYSTEM_CHECKS = envlist("SILENCED_SYSTEM_CHECKS")

# Size limits on every input.
FLOTILLA_MAX_BODY_BYTES = envint("FLOTILLA_MAX_BODY_BYTES", 1024 * 1024, minimum=1024)
FLOTILLA_MAX_DOCUMENTS = envint("FLOTILLA_MAX_DOCUMENTS", 500, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = FLOTILLA_MAX_BODY_BYTES

# Reconciliation.
FLOTILLA_NODE_TIMEOUT = envfloat("FLOTILLA_NODE_TIMEOUT", 40.0, minimum=1.0)
FLOTILLA_RESYNC_SECONDS = envfloat("FLOTILLA_RESYNC_SECONDS", 60.0, minimum=0.5)
FLOTILLA_RECONCILE_LOCK_SECONDS = envfloat("FLOTILLA_RECONCILE_LOCK_SECONDS", 30.0, minimum=1.0)
# Finished requests a Deployment's measured length histogram needs behind it before it is
# published in status.observedWorkload (see controlplane.observed_traffic).
FLOTILLA_OBSERVED_MIN_REQUESTS = envint("FLOTILLA_OBSERVED_MIN_REQUESTS", 200, minimum=1)
# How long a web process trusts a token it has verified (seconds; 0 checks every request).
FLOTILLA_TOKEN_CACHE_SECONDS = envfloat("FLOTILLA_TOKEN_CACHE_SECONDS", 60.0, minimum=0.0)
FLOTILLA_WATCH_RETENTION = envint("FLOTILLA_WATCH_RETENTION", 100_000, minimum=100)
FLOTILLA_WATCH_MAX_SECONDS = envint("FLOTILLA_WATCH_MAX_SECONDS", 60, minimum=1)
# One change-log reader per web process wakes all long-polls (see controlplane.watch_hub).
FLOTILLA_WATCH_HUB = envbool("FLOTILLA_WATCH_HUB", True)
FLOTILLA_LOG_BYTES = envint("FLOTILLA_LOG_BYTES", 1024 * 1024, minimum=4096)

# Plugins: FLOTILLA_PLUGINS restricts which plugins load (names, comma separated);
# FLOTILLA_PLUGIN_MODULES adds plugin modules by dotted path.
FLOTILLA_PLUGINS = envlist("FLOTILLA_PLUGINS")
FLOTILLA_PLUGIN_MODULES = envlist("FLOTILLA_PLUGIN_MODULES")
FLOTILLA_LOAD_ENTRYPOINTS = envbool("FLOTILLA_LOAD_ENTRYPOINTS", True)

# Celery. The embedded default is kombu's filesystem transport: no server, and it
# works across processes on one machine.
_broker_dir = FLOTILLA_HOME / "broker"
CELERY_BROKER_URL = envstr("CELERY_BROKER_URL") or "filesystem://"
CELERY_TASK_DEFAULT_QUEUE = envstr("FLOTILLA_CELERY_QUEUE") or "flotilla"
if CELERY_BROKER_URL.startswith("filesystem://"):
    # kombu's filesystem transport with atomic message writes (see controlplane.broker).
    CELERY_BROKER_TRANSPORT = "controlplane.broker:Transport"
    for sub in ("queue", "processed", "control"):
        (_broker_dir / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
        "polling_interval": 0.1,
    }
else:
    # Redis redelivers an unacknowledged task after this long (acks_late).
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": envint("FLOTILLA_VISIBILITY_TIMEOUT", 300, minimum=10)
    }

# Celery beat: the resync catches whatever a lost message missed; the node check
# marks nodes without a recent heartbeat NotReady.
# Power capping (docs/powercap.md): a pass per Cluster with a budget every
# FLOTILLA_POWERCAP_SECONDS, and on telemetry arrival at most every
# FLOTILLA_POWERCAP_MIN_INTERVAL; a node silent for FLOTILLA_POWERCAP_STALE_SECONDS (three
# heartbeats by default) counts as drawing its GPUs' limits.
FLOTILLA_POWERCAP_SECONDS = envfloat("FLOTILLA_POWERCAP_SECONDS", 5.0, minimum=0.5)
FLOTILLA_POWERCAP_MIN_INTERVAL = envfloat("FLOTILLA_POWERCAP_MIN_INTERVAL", 1.0, minimum=0.1)
FLOTILLA_POWERCAP_STALE_SECONDS = envfloat(
    "FLOTILLA_POWERCAP_STALE_SECONDS", 3 * max(1.0, FLOTILLA_NODE_TIMEOUT / 8), minimum=1.0
)

CELERY_BEAT_SCHEDULE = {
    "powercap": {"task": "controlplane.tasks.powercap_all", "schedule": FLOTILLA_POWERCAP_SECONDS},
    "resync": {"task": "controlplane.tasks.resync", "schedule": FLOTILLA_RESYNC_SECONDS},
    "telemetry-downsample": {"task": "controlplane.telemetry.tasks.downsample", "schedule": 60.0},
    "check-nodes": {
        "task": "controlplane.tasks.check_nodes",
        "schedule": min(10.0, FLOTILLA_NODE_TIMEOUT / 4),
    },
    # Each serving Deployment's request rate and lengths, measured from its telemetry.
    "observe-traffic": {"task": "controlplane.tasks.observe_traffic", "schedule": 60.0},
}

# Kubernetes node discovery (docs/kubernetes.md): off unless FLOTILLA_KUBERNETES is set.
# FLOTILLA_KUBECONFIG names a kubeconfig; without it the pod's service account is used.
# Beat re-lists every 5 minutes; `manage.py kube_nodes` watches for prompt updates.
FLOTILLA_KUBERNETES = envbool("FLOTILLA_KUBERNETES", False)
FLOTILLA_KUBECONFIG = envstr("FLOTILLA_KUBECONFIG")
if FLOTILLA_KUBERNETES:
    CELERY_BEAT_SCHEDULE["kube-nodes"] = {"task": "controlplane.tasks.sync_kube_nodes", "schedule": 300.0}
# The Kubernetes executor (docs/kubernetes.md, "Executor"): Workloads on Clusters with
# `executor: kubernetes` run as Pods in FLOTILLA_KUBERNETES_NAMESPACE, from the image
# FLOTILLA_KUBERNETES_IMAGE (required once a Workload needs a Pod). Beat syncs every 30
# seconds; `manage.py kube_pods` watches the Pods for prompt status.
FLOTILLA_KUBERNETES_EXECUTOR = envbool("FLOTILLA_KUBERNETES_EXECUTOR", False)
FLOTILLA_KUBERNETES_NAMESPACE = envstr("FLOTILLA_KUBERNETES_NAMESPACE") or "default"
FLOTILLA_KUBERNETES_IMAGE = envstr("FLOTILLA_KUBERNETES_IMAGE")
if FLOTILLA_KUBERNETES_EXECUTOR:
    CELERY_BEAT_SCHEDULE["kube-pods"] = {"task": "controlplane.tasks.sync_kube_pods", "schedule": 30.0}

# The agents' bootstrap token, when made outside (the Helm chart's Secret): stored as an
# agent token after every migrate (controlplane/apps.py). Never logged.
FLOTILLA_AGENT_BOOTSTRAP_TOKEN = envstr("FLOTILLA_AGENT_BOOTSTRAP_TOKEN")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL") or "INFO"},
    "loggers": {"django.db.backends": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
}
