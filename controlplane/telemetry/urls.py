"""Telemetry routes, relative to ``api/v1/``; they must come before the generic resource routes."""

from django.urls import path

from controlplane.telemetry import views

urlpatterns = [
    path("nodes/<str:name>/telemetry", views.node_telemetry_view),
    path("telemetry/latest", views.latest_view),
]
