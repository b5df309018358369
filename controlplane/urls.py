from django.urls import include, path, re_path

from controlplane import agent_api, api, logs_api
from controlplane.metrics_view import metrics_view
from controlplane.telemetry import urls as telemetry_urls

api_v1 = [
    *telemetry_urls.urlpatterns,
    path("apply", api.apply_view),
    path("events", api.events_view),
    path("audit", api.audit_view),
    path("plugins", api.plugins_view),
    path("tokens", api.tokens_view),
    path("tokens/<str:prefix>", api.token_view),
    path("users", api.users_view),
    path("agent/register", agent_api.register_view),
    path("agent/heartbeat", agent_api.heartbeat_view),
    path("openapi.json", api.openapi_view),
    path("workloads/<str:name>/logs", logs_api.logs_view),
    path("<str:plural>", api.collection_view),
    path("<str:plural>/<str:name>", api.object_view),
    path("<str:plural>/<str:name>/status", api.status_view),
    path("<str:plural>/<str:name>/events", api.object_events_view),
    re_path(r"^(?P<path>.*)$", api.not_found),
]

urlpatterns = [
    path("api/v1/", include(api_v1)),
    path("healthz", api.healthz),
    path("readyz", api.readyz),
    path("metrics", metrics_view),
    path("", include("dashboard.urls")),
]
