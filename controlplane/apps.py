from django.apps import AppConfig
from django.db.models.signals import post_migrate


def register_agent_bootstrap_token(**_: object) -> None:
    """After every migrate: store FLOTILLA_AGENT_BOOTSTRAP_TOKEN, when set, as an agent token.

    The Helm chart generates the agents' bootstrap token into a Secret and runs migrate
    as a hook before the control plane starts, so agents can register with it from their
    first start. Only the token's HMAC is stored; the value never reaches a log.
    """
    from django.conf import settings

    from controlplane import auth

    token = getattr(settings, "FLOTILLA_AGENT_BOOTSTRAP_TOKEN", None)
    if token:
        auth.ensure_token("agent-bootstrap", "agent", token)


class ControlPlaneConfig(AppConfig):
    name = "controlplane"
    label = "controlplane"
    verbose_name = "Flotilla control plane"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(register_agent_bootstrap_token, sender=self)
