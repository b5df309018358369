"""A pure-Python serving simulator: GPU latency profiles, request traces, an engine-faithful
discrete-event simulation, SLO goodput search, and the replay of a recorded trace.

Schedulers (Mélange, DistServe), ``flotilla plan`` and the benchmarks all size fleets with it,
so it imports only the standard library: no Django, no torch, no NumPy.
"""

from plugins.sim.hardware import HARDWARE, Hardware, get_hardware
from plugins.sim.prefix import PrefixCache, Turn, shared_prefix_hashes
from plugins.sim.profiles import SHAPES, GpuProfile, ModelShape, estimate, fit
from plugins.sim.simulator import InstanceView, RequestResult, SimResult, simulate, simulate_disaggregated
from plugins.sim.slo import Slo, goodput, goodput_per_gpu, judged_length, max_rate, meets, steady
from plugins.sim.trace import Trace, TraceError, load_trace, replay, with_poisson_arrivals
from plugins.sim.workload import (
    DEFAULT_BUCKETS,
    Buckets,
    LengthDist,
    Request,
    gamma,
    load_burstgpt,
    mixed_80_20,
    poisson,
    short_chat,
    summarisation,
)

__all__ = [
    "DEFAULT_BUCKETS",
    "HARDWARE",
    "SHAPES",
    "Buckets",
    "GpuProfile",
    "Hardware",
    "InstanceView",
    "LengthDist",
    "ModelShape",
    "PrefixCache",
    "Request",
    "RequestResult",
    "SimResult",
    "Slo",
    "Trace",
    "TraceError",
    "Turn",
    "estimate",
    "fit",
    "gamma",
    "get_hardware",
    "goodput",
    "goodput_per_gpu",
    "judged_length",
    "load_burstgpt",
    "load_trace",
    "max_rate",
    "meets",
    "mixed_80_20",
    "poisson",
    "replay",
    "shared_prefix_hashes",
    "short_chat",
    "simulate",
    "simulate_disaggregated",
    "steady",
    "summarisation",
    "with_poisson_arrivals",
]
