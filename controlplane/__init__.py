"""The Flotilla control plane: resource store, REST API, reconcilers and CLI.

This package's ``__init__`` stays empty on purpose: agents and plugins import
``controlplane.specs`` without Django or Celery being loaded.
"""
