"""``GET /metrics``: the control plane's own numbers in Prometheus text format.

What the Helm chart's ServiceMonitor scrapes. Aggregates only -- counts by kind,
condition and GPU type, never a name -- because Prometheus scrapes without a token
(``FLOTILLA_METRICS=false`` turns the endpoint off: it answers 404). The serving
runtimes' request metrics are on each replica's own ``/metrics``.
"""

from __future__ import annotations

from collections import Counter

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from controlplane import fleet
from controlplane.conditions import is_true
from controlplane.models import Resource

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    for labels, value in samples:
        inner = ",".join(f'{key}="{_escape(val)}"' for key, val in sorted(labels.items()))
        lines.append(f"{name}{{{inner}}} {value:g}" if inner else f"{name} {value:g}")
    return lines


def render() -> str:
    kinds = Counter(Resource.objects.values_list("kind", flat=True))
    view = fleet.snapshot()
    gpus: Counter[tuple[str, str]] = Counter()
    for node in view.nodes:
        for gpu in node.gpus:
            state = "unhealthy" if not gpu.healthy else "allocated" if gpu.allocated_to else "free"
            gpus[(gpu.type, state)] += 1
    scheduled: Counter[str] = Counter()
    for kind in ("Deployment", "TrainingJob"):
        for status in Resource.objects.filter(kind=kind).values_list("status", flat=True):
            scheduled[kind] += is_true(status, "Scheduled")
    lines = _family(
        "flotilla_resources",
        "Stored resources by kind.",
        [({"kind": k}, n) for k, n in sorted(kinds.items())],
    )
    lines += _family(
        "flotilla_nodes",
        "Nodes by readiness.",
        [
            ({"ready": "true"}, sum(n.ready for n in view.nodes)),
            ({"ready": "false"}, sum(not n.ready for n in view.nodes)),
        ],
    )
    lines += _family(
        "flotilla_gpus",
        "GPUs by type and state (free, allocated, unhealthy).",
        [({"type": t, "state": s}, n) for (t, s), n in sorted(gpus.items())],
    )
    lines += _family(
        "flotilla_owners_scheduled",
        "Deployments and TrainingJobs whose Scheduled condition is True.",
        [({"kind": k}, scheduled[k]) for k in ("Deployment", "TrainingJob")],
    )
    return "\n".join(lines) + "\n"


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not settings.FLOTILLA_METRICS:
        off = {"code": "NotFound", "message": "metrics are off (FLOTILLA_METRICS=false)"}
        return JsonResponse({"error": off}, status=404)
    return HttpResponse(render(), content_type=CONTENT_TYPE)
