"""GPU power draw by phase of work, and how much a power cap slows each phase.

The power-cap controllers trade watts for speed, so the simulator needs both sides of that
trade per GPU type: what a GPU *wants* to draw while it prefills, decodes, trains or idles,
and how much slower each phase runs when its limit is below that demand. The shape comes
from published characterisations; most of the exact shares are estimates:

- **Phases draw differently.** Splitwise (Patel et al., ISCA'24) measured Llama-2-70B and
  BLOOM-176B on DGX-A100 and DGX-H100: the compute-bound prompt (prefill) phase draws close
  to the board's TDP, while the memory-bound token (decode) phase draws well below it, more
  with a larger batch. POLCA (Patel et al., ASPLOS'24) found the same on A100s and that
  training draws near TDP steadily. Ma et al. (arXiv 2605.11999, 2026) measured decode at
  137-300 W on a 700 W H200 at serving batch sizes. The shares below (prefill 0.95 of TDP,
  decode 0.40-0.65 by batch, training 0.90, idle 0.10-0.15) are *estimates* read off those
  descriptions, not measurements of ours.
- **A cap slows compute, not memory.** Under a power limit the GPU lowers its SM clock.
  Dynamic power goes with ``f * V**2`` and voltage roughly with ``f``, so the clock falls
  with the cube root of the dynamic power allowed: ``f = ((cap - idle) / (demand - idle))
  ** (1/3)``, the idle draw standing in for the static part. A compute-bound phase's time
  goes with ``1/f``; decode spends most of a step waiting on HBM, whose clock a power cap
  does not lower, so only its compute share (``COMPUTE_SHARE``, an estimate of 0.25) slows.
  Splitwise reports exactly this asymmetry: capping the token phase to about half the TDP
  costs it almost no latency, while the prompt phase slows as the cap falls. A phase whose
  demand is below the cap is not slowed at all. One published cross-check: the H100 PCIe
  (350 W) is rated at 756 dense BF16 TFLOPS against the 700 W SXM's 989, 0.76 of it at half
  the power; the law gives 0.78 for prefill at a 350 W cap. Below about 0.55 of the clock
  the voltage is at its floor and the clock falls linearly with power (an estimate that
  matters only for caps near a board's minimum).
- **Board figures** (TDP, the lowest limit the board accepts, boost and idle clocks) are the
  NVIDIA spec sheets' (``plugins.sim.hardware``) and what ``nvidia-smi -q`` reports for the
  power-limit range (an H100 SXM accepts 200-700 W; the 0.30 share here gives 210 W).

Everything here is a pure function of its arguments, so the agents' simulated telemetry
(``agents.telemetry``) and the closed-loop bench (``plugins.sim.power_bench``) agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from plugins.sim.hardware import get_hardware

Phase = Literal["idle", "prefill", "decode", "train"]
PHASES: tuple[Phase, ...] = ("idle", "prefill", "decode", "train")

# The share of a phase's time that scales with the SM clock (1: all of it). Estimates:
# prefill and training are dense matmuls (training also waits on all-reduces, hence 0.9);
# decode streams weights and KV from HBM and is mostly bound by its bandwidth.
COMPUTE_SHARE: dict[Phase, float] = {"idle": 0.0, "prefill": 1.0, "decode": 0.25, "train": 0.9}
# Decode draws more with more rows in the batch (more matmul work per weight read), up to
# about this many rows, where it is as busy as a memory-bound step gets (an estimate).
DECODE_SATURATION_ROWS = 64
# Below this share of its uncapped clock the GPU's voltage is at its floor, so dynamic power
# falls only linearly with the clock, not with its cube (an estimate; deep caps only).
VOLTAGE_FLOOR_CLOCK = 0.55


@dataclass(frozen=True)
class PowerModel:
    """One GPU type's draw per phase as shares of its TDP, its power-limit floor and clocks.

    ``decode_one`` is decode's share with a single row, ``decode_full`` with
    ``DECODE_SATURATION_ROWS`` rows or more; ``min_limit`` the lowest power limit the
    board accepts, as a share of its default (= TDP) limit.
    """

    gpu_type: str
    tdp_watts: float
    idle: float
    prefill: float
    decode_one: float
    decode_full: float
    train: float
    min_limit: float
    boost_mhz: float
    idle_mhz: float

    @property
    def idle_watts(self) -> float:
        return self.idle * self.tdp_watts

    @property
    def min_watts(self) -> float:
        """The lowest power limit the board accepts."""
        return round(self.min_limit * self.tdp_watts, 1)

    def demand_watts(self, phase: Phase, rows: float = 1.0) -> float:
        """What the GPU draws in ``phase`` with no cap; ``rows``: the decode batch size."""
        if phase == "decode":
            fill = min(1.0, max(0.0, (rows - 1) / (DECODE_SATURATION_ROWS - 1)))
            share = self.decode_one + (self.decode_full - self.decode_one) * fill
        else:
            share = {"idle": self.idle, "prefill": self.prefill, "train": self.train}[phase]
        return share * self.tdp_watts

    def draw_watts(self, phase: Phase, limit: float, rows: float = 1.0) -> float:
        """What it draws in ``phase`` under ``limit``: the demand, clamped to the limit."""
        return min(self.demand_watts(phase, rows), limit)

    def clock_share(self, demand: float, limit: float) -> float:
        """The SM clock under ``limit`` as a share of the uncapped clock for ``demand`` watts.

        The cube root of the share of dynamic power the limit leaves (dynamic power goes
        with ``f * V**2`` and ``V`` roughly with ``f``), down to the voltage floor, and
        linear below it; never below the idle clock.
        """
        if limit >= demand:
            return 1.0
        floor = self.idle_mhz / self.boost_mhz
        dynamic = demand - self.idle_watts
        allowed = limit - self.idle_watts
        if dynamic <= 0 or allowed <= 0:
            return floor
        share = allowed / dynamic
        knee = VOLTAGE_FLOOR_CLOCK**3
        clock = share ** (1.0 / 3.0) if share >= knee else VOLTAGE_FLOOR_CLOCK * share / knee
        return max(floor, clock)

    def slowdown(self, phase: Phase, limit: float, rows: float = 1.0) -> float:
        """How many times longer ``phase`` takes under ``limit`` (1.0: not at all).

        Only the clock-bound share of the phase stretches: ``1 + s * (1/f - 1)``.
        """
        share = COMPUTE_SHARE[phase]
        if share == 0.0:
            return 1.0
        f = self.clock_share(self.demand_watts(phase, rows), limit)
        return 1.0 + share * (1.0 / f - 1.0)

    def speed(self, phase: Phase, limit: float, rows: float = 1.0) -> float:
        """Throughput of ``phase`` under ``limit`` relative to uncapped (1.0: full speed)."""
        return 1.0 / self.slowdown(phase, limit, rows)

    def busy_watts(self, utilisation: float) -> float:
        """A GPU busy ``utilisation`` (0..1) of the time on mixed work, as the agent's simulated
        devices see their Workloads: from idle to the training draw."""
        busy = min(1.0, max(0.0, utilisation))
        return (self.idle + busy * (self.train - self.idle)) * self.tdp_watts


# Shares of TDP per type. Only the TDP, the limit ranges and the clocks are published
# figures; the phase shares are estimates (see the module docstring). Hopper and Ada parts
# idle near 10% of TDP; A100s and the L4 nearer 15%; the V100 in between.
_SHARES: dict[str, tuple[float, float, float, float, float, float, float, float]] = {
    # type: (idle, prefill, decode_one, decode_full, train, min_limit, boost_mhz, idle_mhz)
    "H200": (0.10, 0.95, 0.40, 0.65, 0.90, 0.30, 1980, 345),
    "H100": (0.10, 0.95, 0.40, 0.65, 0.90, 0.30, 1980, 345),
    "A100-80GB": (0.15, 0.95, 0.45, 0.70, 0.90, 0.375, 1410, 210),
    "A100-40GB": (0.15, 0.95, 0.45, 0.70, 0.90, 0.375, 1410, 210),
    "L40S": (0.10, 0.95, 0.45, 0.70, 0.90, 0.30, 2520, 210),
    "A10G": (0.10, 0.95, 0.45, 0.70, 0.90, 0.33, 1710, 210),
    "L4": (0.15, 0.95, 0.50, 0.75, 0.90, 0.50, 2040, 210),
    "V100": (0.12, 0.95, 0.45, 0.70, 0.90, 0.50, 1530, 135),
}
# A type the table does not know: middle-of-the-road estimates.
_DEFAULT_SHARES = (0.12, 0.95, 0.45, 0.70, 0.90, 0.40, 1500, 210)


def power_model(gpu_type: str, tdp_watts: float | None = None) -> PowerModel:
    """The :class:`PowerModel` of ``gpu_type``; ``tdp_watts`` overrides the spec sheet's TDP
    (a board configured to another default limit). Unknown types get middle-of-the-road
    shares and need ``tdp_watts``."""
    if tdp_watts is None:
        tdp_watts = get_hardware(gpu_type).tdp_watts
    if not math.isfinite(tdp_watts) or tdp_watts <= 0:
        raise ValueError(f"tdp_watts must be a positive number of watts, got {tdp_watts!r}")
    shares = _SHARES.get(gpu_type, _DEFAULT_SHARES)
    return PowerModel(gpu_type, float(tdp_watts), *shares)


def known_types() -> list[str]:
    """The GPU types with their own shares (others get the defaults)."""
    return list(_SHARES)
