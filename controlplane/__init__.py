"""The Flotilla control plane: the resource store, the REST API and the reconcilers.

The only writer of desired state (DESIGN §1). It imports ``common`` and ``plugins``;
nothing in ``common``, ``plugins`` or ``agents`` imports it back, so an agent runs
without Django or Celery (``tests/test_layering.py`` holds that line).
"""
