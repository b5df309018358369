"""The dashboard's pages; each module owns its routes."""

from django.urls import include, path

from dashboard import accounts, applypage, clusters, deployments, eventlog, jobs, nodes, overview, policies

urlpatterns = [
    path("", include(overview.urlpatterns)),
    path("", include(accounts.urlpatterns)),
    path("", include(nodes.urlpatterns)),
    path("", include(clusters.urlpatterns)),
    path("", include(deployments.urlpatterns)),
    path("", include(jobs.urlpatterns)),
    path("", include(policies.urlpatterns)),
    path("", include(applypage.urlpatterns)),
    path("", include(eventlog.urlpatterns)),
]
