"""The Flotilla control plane: the resource store, the REST API and the reconcilers.

The only writer of desired state (DESIGN §1). It imports ``common`` and ``plugins``, and
a few pure pieces of ``agents`` (the GPU name mapping, the Workload command, the serving
metric names); nothing in ``common``, ``plugins``, ``agents`` or ``cli`` imports it back,
so an agent, a plugin and the CLI run without Django or Celery
(``tests/test_layering.py`` holds that line).
"""
