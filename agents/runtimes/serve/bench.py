"""``flotilla bench serve``: the continuous-batching engine against a one-request-at-a-time baseline.

Both serve the same prompts through the same model with greedy decoding and a fixed
output length (EOS ignored), driven by ``concurrency`` closed-loop clients. The baseline
is what a naive server does: a lock admits one request at a time and decodes it alone
(with a contiguous KV cache, so the ratio measures batching, not caching). TTFT includes
queueing, as a client sees it.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from agents.runtimes.model import ModelConfig, Transformer, build_model
from agents.runtimes.serve.engine import Engine
from agents.runtimes.serve.metrics import percentile
from agents.runtimes.serve.sampling import SamplingParams
from agents.runtimes.tokenizer import ByteTokenizer

Sample = tuple[float, float | None, int]  # ttft, tpot, tokens


def make_prompts(count: int, length: int, seed: int = 0) -> list[list[int]]:
    """``count`` deterministic prompts of ``length`` tokens (BOS + random bytes)."""
    gen = torch.Generator().manual_seed(seed)
    return [
        [ByteTokenizer.BOS, *torch.randint(0, 256, (length - 1,), generator=gen).tolist()]
        for _ in range(count)
    ]


@torch.inference_mode()
def baseline_generate(
    model: Transformer, prompt: list[int], max_tokens: int, on_first: Callable[[], None]
) -> int:
    """Greedy decode of one request alone, with a dense per-request KV cache."""
    c: ModelConfig = model.config
    param = next(model.parameters())
    dev = param.device
    total = min(len(prompt) + max_tokens, c.maxSeqLen)
    kv = torch.zeros((c.layers, 2, total, c.kvHeads, c.headDim), device=dev, dtype=param.dtype)
    ids, cached = list(prompt), 0
    while len(ids) < total:
        new = ids[cached:]
        n = len(ids)
        logits = model.forward_cached(
            torch.tensor([new], device=dev), torch.arange(cached, n, device=dev)[None],
            torch.arange(cached, n, device=dev)[None], torch.arange(n, device=dev)[None],
            torch.tensor([n], device=dev), kv, torch.tensor([len(new) - 1], device=dev),
        )  # fmt: skip
        cached = n
        ids.append(int(torch.argmax(logits[0]).item()))
        if len(ids) == len(prompt) + 1:
            on_first()
    return len(ids) - len(prompt)


def drive(
    concurrency: int, prompts: list[list[int]], serve_one: Callable[[list[int]], Sample]
) -> dict[str, Any]:
    """Run ``concurrency`` client threads over ``prompts``; summarise throughput and latency."""
    samples: list[Sample] = []
    lock = threading.Lock()
    next_index = iter(range(len(prompts)))

    def client() -> None:
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            result = serve_one(prompts[index])
            with lock:
                samples.append(result)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ttfts = [s[0] for s in samples]
    tpots = [s[1] for s in samples if s[1] is not None]
    tokens = sum(s[2] for s in samples)
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    return {
        "requests": len(samples),
        "tokens": tokens,
        "wallSeconds": round(wall, 4),
        "tokensPerSecond": round(tokens / wall, 2),
        "ttftMsP50": ms(percentile(ttfts, 50)),
        "ttftMsP99": ms(percentile(ttfts, 99)),
        "tpotMsP50": ms(percentile(tpots, 50)),
        "tpotMsP99": ms(percentile(tpots, 99)),
    }


def bench_engine(
    model: Transformer, concurrency: int, prompts: list[list[int]], max_tokens: int
) -> dict[str, Any]:
    engine = Engine(model, max_batch=max(concurrency, 1)).start()
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    try:
        engine.submit(prompts[0], SamplingParams(max_tokens=2, ignore_eos=True)).result()  # warm-up

        def serve_one(prompt: list[int]) -> Sample:
            r = engine.submit(prompt, params).result()
            return (r.ttft or 0.0, r.tpot, len(r.token_ids))

        return drive(concurrency, prompts, serve_one)
    finally:
        engine.stop(drain_s=0)


def bench_baseline(
    model: Transformer, concurrency: int, prompts: list[list[int]], max_tokens: int
) -> dict[str, Any]:
    one_at_a_time = threading.Lock()
    baseline_generate(model, prompts[0], 2, lambda: None)  # warm-up

    def serve_one(prompt: list[int]) -> Sample:
        submitted = time.perf_counter()
        first: list[float] = []
        with one_at_a_time:
            tokens = baseline_generate(model, prompt, max_tokens, lambda: first.append(time.perf_counter()))
            done = time.perf_counter()
        tpot = (done - first[0]) / (tokens - 1) if tokens > 1 else None
        return (first[0] - submitted, tpot, tokens)

    return drive(concurrency, prompts, serve_one)


def run_bench(
    device: str = "auto",
    concurrency: tuple[int, ...] = (1, 8, 32),
    requests: int = 32,
    prompt_tokens: int = 32,
    max_tokens: int = 32,
    model_spec: dict | None = None,
) -> dict[str, Any]:
    """Benchmark both servers at each concurrency level; returns JSON-ready results."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model_spec = model_spec or {"source": "builtin:tiny-llama"}
    model, config = build_model(model_spec, device)
    if prompt_tokens + max_tokens > config.maxSeqLen:
        raise ValueError(f"prompt-tokens + max-tokens must be <= maxSeqLen ({config.maxSeqLen})")
    prompts = make_prompts(requests, prompt_tokens)
    results = []
    for level in concurrency:
        engine = bench_engine(model, level, prompts, max_tokens)
        baseline = bench_baseline(model, level, prompts, max_tokens)
        ratio = (
            engine["tokensPerSecond"] / baseline["tokensPerSecond"] if baseline["tokensPerSecond"] else None
        )
        results.append(
            {
                "concurrency": level,
                "engine": engine,
                "baseline": baseline,
                "throughputRatio": round(ratio or 0, 3),
            }
        )
    return {
        "device": str(device),
        "deviceName": torch.cuda.get_device_name(device) if str(device).startswith("cuda") else "cpu",
        "dtype": str(config.torch_dtype(device)).removeprefix("torch."),
        "model": model_spec,
        "settings": {"requests": requests, "promptTokens": prompt_tokens, "maxTokens": max_tokens},
        "results": results,
    }


def format_table(report: dict[str, Any]) -> str:
    """An aligned text table: one row per concurrency level and server."""
    header = ["conc", "server", "tok/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms", "ratio"]
    rows = [header]
    for r in report["results"]:
        for kind in ("engine", "baseline"):
            m = r[kind]
            cells = [m["tokensPerSecond"], m["ttftMsP50"], m["ttftMsP99"], m["tpotMsP50"], m["tpotMsP99"]]
            ratio = f"{r['throughputRatio']:.2f}x" if kind == "engine" else ""
            rows.append(
                [str(r["concurrency"]), kind, *("-" if c is None else f"{c:.1f}" for c in cells), ratio]
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def handle(args: argparse.Namespace) -> int:
    model_spec = {"source": args.model_source, "config": json.loads(args.model_config or "{}")}
    report = run_bench(
        args.device, args.concurrency, args.requests, args.prompt_tokens, args.max_tokens, model_spec
    )
    print(f"serve bench on {report['deviceName']} ({report['dtype']}), {args.requests} requests, "
          f"{args.prompt_tokens} prompt + {args.max_tokens} output tokens each")  # fmt: skip
    print(format_table(report))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0
