"""Published figures for the GPU types the simulator knows.

The roofline estimate in :mod:`plugins.sim.profiles` needs only a handful of numbers per GPU:
peak dense tensor throughput, memory bandwidth and capacity, board power, and a price so that
cost-aware schedulers (Mélange) can compare a mix of types. They come from the vendors' spec
sheets (SXM variants where there is a choice); the prices are *estimates* of typical on-demand
cloud list prices per GPU-hour and differ by provider and over time -- a Cluster's
``spec.gpuPrices`` overrides them wherever an operator knows better.

Capacities: the spec sheets' "80 GB" (HBM/GDDR) are binary sizes, so they are used as GiB;
``nvidia-smi`` shows slightly less once ECC and the driver take their share, which the 0.9
usable fraction in the estimate absorbs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    """One GPU type's published capabilities and an estimated on-demand price (USD per hour)."""

    type: str
    tflops: float  # dense BF16 tensor TFLOP/s (no 2:4 sparsity)
    memory_bandwidth_gbs: float  # GB/s
    memory_gib: float
    tdp_watts: float
    price_per_hour: float  # USD, a typical on-demand cloud price: an estimate, not a quote
    # Per-GPU bandwidth for tensor-parallel all-reduce (GB/s, one direction): NVLink where the
    # part has it, PCIe Gen4 x16 otherwise. Only used for the TP overhead of the estimate.
    interconnect_gbs: float = 25.0


HARDWARE: dict[str, Hardware] = {
    # H200 SXM: 989 TFLOPS dense BF16 (1,979 with sparsity), 4.8 TB/s HBM3e, 141 GB, 700 W;
    # NVLink 4 900 GB/s bidirectional. Price: ~20% above H100 at the same providers.
    "H200": Hardware("H200", 989.0, 4800.0, 141.0, 700.0, 5.50, interconnect_gbs=450.0),
    # H100 SXM5: 989 TFLOPS dense BF16, 3.35 TB/s HBM3, 80 GB, 700 W; NVLink 4.
    "H100": Hardware("H100", 989.0, 3350.0, 80.0, 700.0, 4.50, interconnect_gbs=450.0),
    # A100 80GB SXM: 312 TFLOPS dense BF16, 2,039 GB/s HBM2e, 400 W; NVLink 3 600 GB/s
    # bidirectional. $3.67/h is the A100-80GB price the Mélange paper uses.
    "A100-80GB": Hardware("A100-80GB", 312.0, 2039.0, 80.0, 400.0, 3.67, interconnect_gbs=300.0),
    # A100 40GB SXM: 312 TFLOPS dense BF16, 1,555 GB/s HBM2, 400 W (GCP lists ~$2.93/GPU-hour).
    "A100-40GB": Hardware("A100-40GB", 312.0, 1555.0, 40.0, 400.0, 2.93, interconnect_gbs=300.0),
    # L40S: 362 TFLOPS dense BF16 (733 sparse), 864 GB/s GDDR6, 48 GB, 350 W; PCIe Gen4,
    # no NVLink. Price: AWS g6e.xlarge ~$1.86/h.
    "L40S": Hardware("L40S", 362.0, 864.0, 48.0, 350.0, 1.86),
    # A10G (AWS g5 only): ~70 TFLOPS dense BF16 tensor, 600 GB/s GDDR6, 24 GB, 300 W;
    # g5.xlarge ~$1.01/h, the A10G price in the Mélange paper.
    "A10G": Hardware("A10G", 70.0, 600.0, 24.0, 300.0, 1.01),
    # L4: 121 TFLOPS dense BF16 (242 sparse), 300 GB/s GDDR6, 24 GB, 72 W; ~$0.70/h (GCP g2,
    # and the Mélange paper's L4 price).
    "L4": Hardware("L4", 121.0, 300.0, 24.0, 72.0, 0.70),
    # V100 SXM2 32GB: no BF16 at all -- 125 TFLOPS is its FP16 tensor-core figure, used here
    # as the nearest equivalent; 900 GB/s HBM2, 300 W; NVLink 2 300 GB/s bidirectional.
    # ~$2.48/GPU-hour on GCP.
    "V100": Hardware("V100", 125.0, 900.0, 32.0, 300.0, 2.48, interconnect_gbs=150.0),
}


def get_hardware(gpu_type: str) -> Hardware:
    """The :class:`Hardware` for ``gpu_type``; a ValueError naming the known types otherwise."""
    try:
        return HARDWARE[gpu_type]
    except KeyError:
        raise ValueError(f"unknown GPU type {gpu_type!r}; known types: {', '.join(HARDWARE)}") from None
