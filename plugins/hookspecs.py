"""The hooks a Flotilla plugin may implement.

Kind hooks *register* named implementations (datasette's ``register_*``
pattern); a Policy then selects one by name, so a call reaches the chosen
implementation only. Observer hooks are broadcast to every plugin. All hooks
take keyword arguments of plain data, never ORM objects.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("flotilla")
hookimpl = pluggy.HookimplMarker("flotilla")


@hookspec
def register_schedulers():
    """Return a list of scheduler objects that place replicas on nodes and GPUs."""


@hookspec
def register_caches():
    """Return a list of KV-cache policy objects for served models."""


@hookspec
def register_checkpointers():
    """Return a list of checkpointer objects that save and restore training state."""


@hookspec
def register_powercaps():
    """Return a list of power-cap controllers that set GPU power limits under a budget."""


@hookspec
def event_recorded(event):
    """Observe an event the control plane recorded (a plain dict)."""
