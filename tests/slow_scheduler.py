"""A scheduler plugin for the crash test: the first call stalls so the test can kill
the worker mid-reconcile; later calls behave like binpack.

Loaded into the end-to-end stack through FLOTILLA_PLUGIN_MODULES, which is how an
operator adds a plugin module without packaging it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from plugins.binpack import Binpack, BinpackParams
from plugins.hookspecs import hookimpl


class SlowParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    markerFile: str
    stallSeconds: float = 120.0


class StallOnce:
    name: ClassVar[str] = "stall-once"
    kind: ClassVar[str] = "scheduler"
    description: ClassVar[str] = "Test plugin: stalls on its first call, then packs like binpack."
    Params: ClassVar[type[BaseModel]] = SlowParams

    def place(self, *, request, fleet, params):
        marker = Path(params.markerFile)
        if not marker.exists():
            marker.write_text("entered\n")
            time.sleep(params.stallSeconds)
        return Binpack().place(request=request, fleet=fleet, params=BinpackParams())


@hookimpl
def register_schedulers():
    return [StallOnce()]
