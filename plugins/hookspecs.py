"""The hooks a Flotilla plugin may implement.

Kind hooks *register* named implementations (datasette's ``register_*``
pattern); a Policy then selects one by name, so a call reaches the chosen
implementation only; each kind's objects satisfy its Protocol in
``plugins/types.py``, and ``PLUGIN_KIND_TABLE`` there names the hook of each kind.
Observer hooks are broadcast to every plugin. All hooks take keyword arguments of
plain data, never ORM objects.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("flotilla")
hookimpl = pluggy.HookimplMarker("flotilla")


@hookspec
def register_schedulers():
    """Return a list of Scheduler objects that place replicas on nodes and GPUs."""


@hookspec
def register_caches():
    """Return a list of CachePolicy objects: KV-cache eviction, session pinning and routing."""


@hookspec
def register_checkpointers():
    """Return a list of Checkpointer objects that save and restore training state."""


@hookspec
def register_powercaps():
    """Return a list of PowerCap objects that set GPU power limits under a budget."""


@hookspec
def event_recorded(event):
    """Observe an event the control plane recorded (a plain dict)."""
