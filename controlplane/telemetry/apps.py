from django.apps import AppConfig


class TelemetryConfig(AppConfig):
    name = "controlplane.telemetry"
    label = "telemetry"
    verbose_name = "Flotilla telemetry"
    default_auto_field = "django.db.models.BigAutoField"
