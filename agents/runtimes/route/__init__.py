"""The cache-aware request router: one OpenAI-compatible endpoint in front of a model's replicas.

Run as ``python -m agents.runtimes.route --config FILE --port N [--backend URL ...]``.
``config`` reads the Workload's config, ``replicas`` keeps each replica's load and cache
contents (polled, plus the router's own record of what it sent), ``source`` says which
replicas there are (``--backend`` flags, or the router's own Workload watched on the
control plane), ``forward`` sends one request to one replica, and ``proxy`` is the HTTP
server that ties them together. None of it imports torch: a router is placed without a GPU.
"""
