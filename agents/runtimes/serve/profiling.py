"""Measure the torch serving engine into a simulator profile, and check the simulator against it.

``flotilla profile`` runs this on the machine whose GPU type is being profiled. It times
whole :meth:`Engine.step` calls -- the Python bookkeeping, tensor building, forward pass and
sampling together -- because that is the unit the simulator in ``plugins/sim`` charges:

- **prefill samples**: one prompt alone in an idle engine, one step (``batch_tokens`` = the
  prompt length), over a spread of prompt lengths;
- **decode samples**: ``rows`` sequences of one context length, decode-only steps, over a
  grid of batch sizes x context lengths; ``context_tokens`` = rows x the longest sequence,
  the dense ``[rows, longest]`` cache the engine gathers.

:func:`plugins.sim.fit` turns them into a ``measured`` :class:`GpuProfile`. :func:`validate`
then replays one seeded Poisson trace through the real engine in real time and through
:func:`plugins.sim.simulate` with that profile, and compares TTFT and TPOT.

Threads: ``torch.set_num_threads`` is process-wide, and a CPU engine's step time depends on
it more than on anything else. Profiling and replay pin the *same* count (:attr:`Target.threads`),
or a profile measured at one parallelism would be checked against a replay at another. On a
small shared machine (the 2-core CI runner, where other jobs take cores at random) one thread
gives step times that barely move between runs, where two threads swing by several times.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from agents.runtimes.model import ModelConfig, Transformer, build_model
from agents.runtimes.serve.engine import Engine
from agents.runtimes.serve.kvcache import DEFAULT_BLOCK_SIZE
from agents.runtimes.serve.sampling import SamplingParams
from agents.runtimes.tokenizer import load_tokenizer
from plugins.sim import (
    HARDWARE,
    GpuProfile,
    LengthDist,
    ModelShape,
    RequestResult,
    SimResult,
    fit,
    poisson,
    simulate,
)
from plugins.sim.profiles import POWER_AT_LOAD

Progress = Callable[[str], None]
METRICS = ("ttft", "tpot")


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Grid:
    """What to sample: prompt lengths for prefill, batch sizes x context lengths for decode.

    The grid is walked ``passes`` times; each pass times ``repeats`` prefills per length and
    ``repeats`` consecutive decode steps per cell. A cell's sample is the *median over passes
    of each pass's mean*: the mean because the simulator charges a step's expected cost (its
    occasional slow step -- a GC pause, an allocator refill -- included), the median across
    passes because a burst of other work on a shared machine lands on one pass, not on all.
    """

    prompt_lengths: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    context_lengths: tuple[int, ...]
    repeats: int = 4
    passes: int = 3

    def __post_init__(self) -> None:
        for name in ("prompt_lengths", "batch_sizes", "context_lengths"):
            values = getattr(self, name)
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"grid {name} must be positive integers, got {values!r}")
        for name in ("repeats", "passes"):
            if getattr(self, name) < 1:
                raise ValueError(f"grid {name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def spread(cls, max_seq_len: int, max_batch: int, quick: bool = False) -> Grid:
        """A grid over the whole range the engine serves: short prompts densely (most traffic),
        then evenly up to ``max_seq_len`` (where the quadratic attention term shows)."""
        points = 4 if quick else 8
        longest = max_seq_len - 1
        linear = [round(longest * (i + 1) / points) for i in range(points)]
        prompts = sorted({n for n in (8, 16, 32, *linear) if 1 <= n <= longest})
        sizes = (1, 4, 16, max_batch) if quick else (1, 2, 4, 8, 16, 24, 32, 48, 64, max_batch)
        batches = sorted({b for b in sizes if b <= max_batch})
        repeats, passes = (3, 1) if quick else (4, 3)
        top = max_seq_len - repeats - 2  # room for the timed decode steps
        contexts = sorted(
            {c for c in (16, *(round(top * (i + 1) / points) for i in range(points))) if c >= 1}
        )
        return cls(tuple(prompts), tuple(batches), tuple(contexts), repeats, passes)


@dataclass
class Target:
    """The engine under test: one model on one device, with the serving runtime's batch and
    cache settings, and the torch thread count every measurement runs with."""

    model: Transformer
    config: ModelConfig
    model_spec: dict[str, Any]
    device: torch.device
    threads: int
    max_batch: int = 32
    kv_blocks: int | None = None

    @classmethod
    def build(
        cls,
        model_spec: dict[str, Any],
        device: str = "cpu",
        threads: int | None = None,
        max_batch: int = 32,
        kv_blocks: int | None = None,
    ) -> Target:
        """Build the model as the serving runtime does (``build_model``: fp32 on a CPU).

        ``threads`` None keeps torch's default, which is what the serving runtime runs with.
        """
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("torch sees no CUDA device")
        threads = threads or torch.get_num_threads()
        torch.set_num_threads(threads)
        model, config = build_model(model_spec, dev)
        return cls(model, config, model_spec, dev, threads, max_batch, kv_blocks)

    @property
    def shape(self) -> ModelShape:
        """The shape key planning computes for a Deployment serving this model.

        ``dtype: auto`` counts as 2 bytes there whatever the device (see
        ``ModelShape.from_config``), so the key names the Deployment's model, not the fp32
        the CPU happens to run it in.
        """
        return shape_of(self.config)

    def engine(self) -> Engine:
        torch.set_num_threads(self.threads)
        tokenizer = load_tokenizer(self.model_spec.get("tokenizer"))
        return Engine(self.model, kv_blocks=self.kv_blocks, max_batch=self.max_batch, tokenizer=tokenizer)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> str:
        """Host and device, for ``measuredOn``."""
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
        else:
            name = f"cpu ({self.threads} thread{'s' if self.threads != 1 else ''})"
        dtype = str(self.config.torch_dtype(self.device)).removeprefix("torch.")
        return f"{platform.node() or 'unknown-host'}: {name}, {dtype}"[:253]


def shape_of(config: ModelConfig) -> ModelShape:
    """The simulator's shape of a runtime ModelConfig, by the same keys a Deployment uses."""
    return ModelShape.from_config(
        {
            "layers": config.layers,
            "hidden": config.hidden,
            "heads": config.heads,
            "kvHeads": config.kvHeads,
            "intermediate": config.intermediate,
            "vocabSize": config.vocabSize,
            "dtype": config.dtype,
        }
    )


def prompt_of(length: int, vocab: int, seed: int) -> list[int]:
    """A deterministic prompt of ``length`` ids; the content does not change the work done."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, min(256, vocab), (length,), generator=gen).tolist()


@dataclass
class Measurement:
    """A fitted profile and the samples it was fitted to."""

    profile: GpuProfile
    prefill_samples: list[tuple[int, float]]
    decode_samples: list[tuple[int, int, float]]
    fit_error_percent: float
    measured_on: str
    seconds: float
    # Process CPU seconds per second while sampling: ~1.0 with one torch thread on a machine
    # that left the core alone; well below it, other work slowed the samples down.
    cpu_per_second: float = 0.0

    def document(self, name: str) -> dict[str, Any]:
        """The ``Profile`` resource: the spec is ``GpuProfile.to_dict()`` plus where it came from."""
        spec = {
            **self.profile.to_dict(),
            "measuredOn": self.measured_on,
            "fitErrorPercent": round(self.fit_error_percent, 2),
        }
        return {"apiVersion": "flotilla.dev/v1", "kind": "Profile", "metadata": {"name": name}, "spec": spec}


def fit_error_percent(
    profile: GpuProfile, prefill: list[tuple[int, float]], decode: list[tuple[int, int, float]]
) -> float:
    """Mean absolute error of the fitted model over all samples, in percent of the measured time."""
    errors = [abs(profile.prefill_ms(n) - ms) / ms for n, ms in prefill if ms > 0]
    errors += [abs(profile.decode_ms(b, c) - ms) / ms for b, c, ms in decode if ms > 0]
    return 100 * statistics.fmean(errors) if errors else 0.0


def _timed_step(target: Target, engine: Engine) -> float:
    target.sync()
    started = time.perf_counter()
    engine.step()
    target.sync()
    return (time.perf_counter() - started) * 1e3


def _warm_up(target: Target, engine: Engine, grid: Grid) -> None:
    """Allocator pools, kernel selection and (on CUDA) lazy module loading happen on first use."""
    vocab, room = target.config.vocabSize, max(1, target.config.maxSeqLen - 5)
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    for n in (min(grid.prompt_lengths), max(grid.prompt_lengths)):
        engine.generate([prompt_of(min(n, room), vocab, n)], params)
    rows = min(max(grid.batch_sizes), target.max_batch)
    engine.generate([prompt_of(min(min(grid.context_lengths), room), vocab, i) for i in range(rows)], params)


def _prefill_samples(target: Target, engine: Engine, grid: Grid, say: Progress) -> list[tuple[int, float]]:
    limit = min(target.config.maxSeqLen - 1, engine.max_prefill_tokens)
    lengths = [n for n in grid.prompt_lengths if n <= limit]
    if len(lengths) < len(grid.prompt_lengths):
        say(f"  prefill: skipping prompts longer than {limit} tokens")
    params = SamplingParams(max_tokens=1, ignore_eos=True)
    means: dict[int, list[float]] = {n: [] for n in lengths}
    for _ in range(grid.passes):
        for length in lengths:
            times = []
            for i in range(grid.repeats):
                engine.submit(prompt_of(length, target.config.vocabSize, i), params)
                times.append(_timed_step(target, engine))
            means[length].append(statistics.fmean(times))
    samples = [(n, statistics.median(values)) for n, values in means.items()]
    for n, ms in samples:
        say(f"  prefill {n:>5} tokens: {ms:8.2f} ms")
    return samples


def _decode_cell(target: Target, engine: Engine, rows: int, context: int, repeats: int) -> tuple[int, float]:
    """Mean decode-step time of ``rows`` sequences at ``context``, and the mean context read."""
    params = SamplingParams(max_tokens=_decode_tokens(engine, rows, context, repeats), ignore_eos=True)
    requests = [engine.submit(prompt_of(context, target.config.vocabSize, i), params) for i in range(rows)]
    while engine.waiting:  # prefill them all (the token budget may take several steps)
        engine.step()
    contexts, times = [], []
    for _ in range(repeats):
        contexts.append(len(engine.running) * max(r.seq_len for r in engine.running))
        times.append(_timed_step(target, engine))
    for request in requests:
        request.cancel()
    engine.run_until_idle()
    return round(statistics.fmean(contexts)), statistics.fmean(times)


def _decode_tokens(engine: Engine, rows: int, context: int, repeats: int) -> int:
    """Tokens each request must be allowed so that none finishes before the timed steps end:
    the first ones admitted decode while the prefill budget admits the rest."""
    prefill_steps = math.ceil(rows / max(1, engine.max_prefill_tokens // context))
    return prefill_steps + repeats + 1


def _decode_cells(target: Target, engine: Engine, grid: Grid, say: Progress) -> list[tuple[int, int]]:
    """The (rows, context) cells that fit the batch, ``maxSeqLen`` and the KV cache."""
    cells = []
    blocks, bs, limit = engine.cache.num_blocks, engine.cache.block_size, target.config.maxSeqLen
    for rows in grid.batch_sizes:
        for context in grid.context_lengths:
            context = min(context, limit - 1)
            while context > 1 and context + _decode_tokens(engine, rows, context, grid.repeats) >= limit:
                context -= 1
            longest = context + _decode_tokens(engine, rows, context, grid.repeats)
            if rows > target.max_batch or longest >= limit:
                continue
            if rows * math.ceil((longest + 1) / bs) > blocks:
                say(f"  decode {rows} x {context}: skipped (the KV cache holds {blocks} blocks)")
                continue
            cells.append((rows, context))
    return cells


def _decode_samples(
    target: Target, engine: Engine, grid: Grid, say: Progress
) -> list[tuple[int, int, float]]:
    cells = _decode_cells(target, engine, grid, say)
    runs: dict[tuple[int, int], list[tuple[int, float]]] = {cell: [] for cell in cells}
    for index in range(grid.passes):
        started = time.perf_counter()
        for rows, context in cells:
            runs[rows, context].append(_decode_cell(target, engine, rows, context, grid.repeats))
        seconds = time.perf_counter() - started
        say(f"  decode pass {index + 1}/{grid.passes}: {len(cells)} cells in {seconds:.1f} s")
    samples = []
    for (rows, context), results in runs.items():
        tokens = round(statistics.fmean(t for t, _ in results))
        ms = statistics.median(ms for _, ms in results)
        samples.append((rows, tokens, ms))
        say(f"  decode {rows:>3} seqs x {context:>5} context: {ms:8.2f} ms")
    return samples


def measure(
    target: Target,
    gpu_type: str,
    grid: Grid | None = None,
    power_watts: float | None = None,
    progress: Progress | None = None,
) -> Measurement:
    """Time the engine over ``grid`` and fit a ``measured`` profile for ``gpu_type``.

    ``power_watts`` None takes the at-load draw the roofline estimate assumes for a known GPU
    type (0 for the CPU and unknown types): power is not measured here.
    """
    say = progress or _quiet
    started = time.perf_counter()
    engine = target.engine()
    grid = grid or Grid.spread(target.config.maxSeqLen, target.max_batch)
    say(f"profiling {target.shape.key} on {target.describe()}: warming up")
    _warm_up(target, engine, grid)
    say(f"prefill: {len(grid.prompt_lengths)} prompt lengths x {grid.repeats}, {grid.passes} passes")
    wall, cpu = time.perf_counter(), time.process_time()
    prefill = _prefill_samples(target, engine, grid, say)
    say(
        f"decode: {len(grid.batch_sizes)} batch sizes x {len(grid.context_lengths)} context lengths, "
        f"{grid.passes} passes"
    )
    decode = _decode_samples(target, engine, grid, say)
    cpu_per_second = (time.process_time() - cpu) / (time.perf_counter() - wall)
    if not prefill or not decode:
        raise ValueError("the grid left no prefill or no decode sample that fits this model and cache")
    if power_watts is None:
        hardware = HARDWARE.get(gpu_type)
        power_watts = POWER_AT_LOAD * hardware.tdp_watts if hardware else 0.0
    profile = fit(
        gpu_type, target.shape, prefill, decode,
        kv_capacity_tokens=engine.cache.num_blocks * engine.cache.block_size,
        max_batch=target.max_batch, power_watts=power_watts, block_size=DEFAULT_BLOCK_SIZE,
    )  # fmt: skip
    error = fit_error_percent(profile, prefill, decode)
    seconds = time.perf_counter() - started
    say(
        f"fitted {len(prefill)} prefill and {len(decode)} decode samples in {seconds:.1f} s; "
        f"mean error {error:.1f}%"
    )
    return Measurement(profile, prefill, decode, error, target.describe(), seconds, cpu_per_second)


# -- validation: the same trace through the engine and the simulator ------------------------------


@dataclass
class Validation:
    """Real vs simulated latency on one trace; ``figures[metric][stat]`` in milliseconds."""

    rate: float
    requests: int
    seed: int
    utilisation: float | None
    duration_s: float
    max_submit_lag_ms: float
    figures: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # How the engine fared on the machine: the share of the replay it spent in steps, and
    # the CPU seconds the process got per second in a step. With one torch thread on a CPU
    # the latter is ~1.0 on an idle machine; well below it, other work took the core and the
    # real latencies include waiting for it, which no profile can predict.
    busy_fraction: float = 0.0
    cpu_per_busy_second: float = 0.0

    def error_percent(self, metric: str, stat: str) -> float:
        """(simulated - real) / real, in percent."""
        cell = self.figures[metric][stat]
        return 100 * (cell["sim"] - cell["real"]) / cell["real"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rateRps": round(self.rate, 4),
            "requests": self.requests,
            "seed": self.seed,
            "utilisation": None if self.utilisation is None else round(self.utilisation, 3),
            "durationS": round(self.duration_s, 2),
            "maxSubmitLagMs": round(self.max_submit_lag_ms, 2),
            "busyFraction": round(self.busy_fraction, 3),
            "cpuPerBusySecond": round(self.cpu_per_busy_second, 3),
            **{
                f"{metric}Ms": {
                    stat: {
                        "real": round(cell["real"], 3),
                        "sim": round(cell["sim"], 3),
                        "errorPercent": round(self.error_percent(metric, stat), 1),
                    }
                    for stat, cell in stats.items()
                }
                for metric, stats in self.figures.items()
            },
        }


def _stats(result: SimResult, metric: str) -> dict[str, float]:
    """Mean, P50 and P90 in ms, by ``SimResult.percentile`` so real and simulated are read alike."""
    values = [getattr(r, f"{metric}_s") for r in result.requests]
    return {
        "mean": 1e3 * statistics.fmean(values),
        "p50": 1e3 * result.percentile(metric, 50),
        "p90": 1e3 * result.percentile(metric, 90),
    }


def capacity(
    target: Target, inputs: LengthDist, outputs: LengthDist, count: int = 64, seed: int = 1
) -> float:
    """Requests/s the real engine completes with ``count`` requests of these lengths all queued."""
    engine = target.engine()
    trace = poisson(1.0, count=count, inputs=inputs, outputs=outputs, seed=seed)
    vocab = target.config.vocabSize
    prompts = [prompt_of(r.input_tokens, vocab, r.id) for r in trace]
    engine.generate(prompts[:2], SamplingParams(max_tokens=2, ignore_eos=True))  # warm-up
    started = time.perf_counter()
    params = [SamplingParams(max_tokens=r.output_tokens, ignore_eos=True) for r in trace]
    engine.generate(prompts, params)
    target.sync()
    return count / (time.perf_counter() - started)


def validate(
    target: Target,
    profile: GpuProfile,
    rate: float,
    requests: int,
    inputs: LengthDist,
    outputs: LengthDist,
    seed: int = 0,
    utilisation: float | None = None,
    progress: Progress | None = None,
) -> Validation:
    """Replay a seeded Poisson trace through the engine in real time, simulate the same trace
    with ``profile``, and compare TTFT and TPOT as the serving runtime defines them.

    The engine runs on its own background thread as it does behind the HTTP server; this
    thread submits each request at its arrival time. TTFT is ``first_token_at - submitted_at``
    and TPOT ``(finished_at - first_token_at) / (tokens - 1)`` (``Request.ttft``/``tpot``,
    what ``/metrics`` reports). Every request generates exactly its ``output_tokens``
    (EOS ignored), as the simulator assumes.
    """
    say = progress or _quiet
    if not rate > 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate!r}")
    if requests < 1:
        raise ValueError(f"requests must be >= 1, got {requests!r}")
    if inputs.hi + outputs.hi > target.config.maxSeqLen:
        raise ValueError(
            f"the longest prompt plus output ({inputs.hi} + {outputs.hi}) exceeds the model's "
            f"maxSeqLen ({target.config.maxSeqLen}); the engine would cut it short"
        )
    if outputs.lo < 2:
        raise ValueError("outputs must be at least 2 tokens: TPOT needs two")
    trace = poisson(rate, count=requests, inputs=inputs, outputs=outputs, seed=seed)
    vocab = target.config.vocabSize
    prompts = [prompt_of(r.input_tokens, vocab, r.id) for r in trace]
    engine = target.engine()
    _warm_up(target, engine, Grid((inputs.lo, inputs.hi), (1, target.max_batch), (inputs.hi,)))
    say(f"replaying {requests} requests at {rate:.2f}/s in real time (~{trace[-1].arrival_s:.0f} s)")
    busy = _time_steps(engine)
    engine.start()
    handles, lags = [], []
    try:
        origin = time.monotonic() + 0.05
        for request, prompt in zip(trace, prompts, strict=True):
            due = origin + request.arrival_s
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            params = SamplingParams(max_tokens=request.output_tokens, ignore_eos=True)
            handles.append(engine.submit(prompt, params))
            lags.append(time.monotonic() - due)
        for handle in handles:
            handle.result(timeout=600)
    finally:
        engine.stop(drain_s=0)
    duration = max(h.finished_at or 0.0 for h in handles) - origin
    real = SimResult(
        [
            RequestResult(
                r.id, r.arrival_s, h.ttft, h.tpot, h.finished_at - h.submitted_at, h.preemptions, False
            )
            for r, h in zip(trace, handles, strict=True)
        ],
        duration,
        1,
    )
    simulated = simulate(trace, profile)
    figures = {}
    for metric in METRICS:
        measured, predicted = _stats(real, metric), _stats(simulated, metric)
        figures[metric] = {stat: {"real": measured[stat], "sim": predicted[stat]} for stat in measured}
    return Validation(
        rate, requests, seed, utilisation, duration, 1e3 * max(lags), figures,
        busy_fraction=busy[0] / duration, cpu_per_busy_second=busy[1] / busy[0] if busy[0] else 0.0,
    )  # fmt: skip


def _time_steps(engine: Engine) -> list[float]:
    """Wrap this engine's ``step`` to add up its wall and process CPU seconds: ``[wall, cpu]``.

    Only the instance is wrapped; the loop calls ``self.step()`` and so runs through it.
    """
    totals = [0.0, 0.0]
    step = engine.step

    def timed() -> int:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return step()
        finally:
            totals[0] += time.perf_counter() - wall
            totals[1] += time.process_time() - cpu

    engine.step = timed  # type: ignore[method-assign]
    return totals
