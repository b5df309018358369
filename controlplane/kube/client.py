"""The Kubernetes API client: from ``FLOTILLA_KUBECONFIG``, else the pod's service account.

Credentials stay inside the client's Configuration: only the API server's URL is ever
logged or put in an error message, never a token or a client key.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from common.envhelpers import ConfigError

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def in_cluster() -> bool:
    """Running in a pod with a mounted service account token."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and SERVICE_ACCOUNT_TOKEN.exists()


def api_client() -> client.ApiClient:
    """An ApiClient for the configured cluster, or ConfigError saying what to set."""
    path = settings.FLOTILLA_KUBECONFIG
    if path:
        try:
            return config.new_client_from_config(config_file=str(Path(path).expanduser()))
        except (ConfigException, OSError) as exc:
            # The loader's messages name files and contexts, not credentials.
            raise ConfigError(f"FLOTILLA_KUBECONFIG={path!r} cannot be used: {exc}") from None
    if in_cluster():
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException as exc:
            raise ConfigError(f"the in-cluster Kubernetes configuration cannot be used: {exc}") from None
        return client.ApiClient(configuration)
    raise ConfigError(
        "Kubernetes node discovery and the executor need a cluster: run in a pod with a service account, "
        "or set FLOTILLA_KUBECONFIG to a kubeconfig file"
    )


def core_api() -> client.CoreV1Api:
    """The core API (Nodes, Pods) of the configured cluster; ConfigError as api_client."""
    return client.CoreV1Api(api_client())


def server_of(api: client.ApiClient) -> str:
    """What a log line may say about the connection: the API server's URL only."""
    return api.configuration.host
