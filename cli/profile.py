"""``flotilla profile``: measure the serving engine on this machine and store it as a ``Profile``.

A stored ``measured`` Profile replaces the roofline estimate wherever the schedulers and
``flotilla plan`` size a Deployment of the same model shape on the same GPU type
(``plugins.planning.profile_for``), so the model is named exactly as a Deployment names it --
``--model`` / ``--model-config`` are ``spec.model.source`` / ``spec.model.config``, or ``-f``
reads them from a Deployment file -- and the stored ``model`` key is the one planning derives
from that spec.

torch loads only when the command runs (never for ``flotilla --help``), and nothing is
downloaded: builtin models are random weights, ``path:`` models are local files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TextIO

import yaml

from cli.output import dump, table
from common.problems import Problem
from common.specs import NAME_MAX, ProfileSpec, name_problem

GPU_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# The validation workload: short chat-like requests that fit the builtin models' 512 tokens.
DEFAULT_INPUTS = (32, 160)
DEFAULT_OUTPUTS = (16, 64)
# --validate without --rate: half the engine's measured capacity. A batching engine is already
# busy ~90% of the time there; much above it, latency turns so steep in each step's cost that
# a 1% wobble in the profile moves P90 by 10% and the check measures the knee, not the model.
DEFAULT_UTILISATION = 0.5


class ProfileError(Problem):
    """A flag that cannot be used as given; the message names it and says what to do."""

    def __init__(self, flag: str, message: str, fix: str):
        super().__init__(message, flag, fix)
        self.flag = flag

    def __str__(self) -> str:
        return f"{self.flag}: {self.message} (fix: {self.fix})"


class Applier(Protocol):
    def apply(self, text: str, dry_run: bool = False) -> dict[str, Any]: ...

    def close(self) -> None: ...


def profile_name(gpu_type: str, model_key: str, tensor_parallel: int = 1) -> str:
    """``<gpu type>-<model key>`` as a DNS-1123 label; a long one keeps a hash of the whole."""
    raw = f"{gpu_type}-{model_key}" + (f"-tp{tensor_parallel}" if tensor_parallel > 1 else "")
    name = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", raw.lower())).strip("-") or "profile"
    if len(name) > NAME_MAX:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
        name = name[: NAME_MAX - 9].rstrip("-") + "-" + digest
    return name


def _lengths(text: str) -> tuple[int, int]:
    """``N`` or ``LO-HI`` token counts."""
    lo, _, hi = text.partition("-")
    try:
        pair = (int(lo), int(hi or lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LO-HI token counts, got {text!r}") from None
    if pair[0] < 1 or pair[1] < pair[0]:
        raise argparse.ArgumentTypeError(f"expected 1 <= LO <= HI, got {text!r}")
    return pair


def model_spec(args: argparse.Namespace) -> dict[str, Any]:
    """``spec.model`` as a Deployment would declare it, from ``-f`` or ``--model``/``--model-config``."""
    if args.filename:
        if args.model or args.model_config:
            raise ProfileError("-f", "given together with --model/--model-config", "use one or the other")
        path = Path(args.filename)
        if not path.is_file():
            raise ProfileError("-f", f"{path} does not exist", "give a Deployment YAML file")
        try:
            documents = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
        except yaml.YAMLError as exc:
            raise ProfileError("-f", f"{path} is not valid YAML ({exc})", "fix the file") from None
        for document in documents:
            if document.get("kind") == "Deployment" and isinstance(
                document.get("spec", {}).get("model"), dict
            ):
                return document["spec"]["model"]
        raise ProfileError("-f", f"{path} has no Deployment with spec.model", "give a Deployment file")
    if not args.model:
        raise ProfileError("--model", "is required", "e.g. --model builtin:tiny-llama, or -f deployment.yaml")
    config: Any = {}
    if args.model_config:
        try:
            config = json.loads(args.model_config)
        except json.JSONDecodeError as exc:
            raise ProfileError(
                "--model-config", f"is not JSON ({exc})", "e.g. --model-config '{\"layers\": 2}'"
            ) from None
        if not isinstance(config, dict):
            raise ProfileError(
                "--model-config", "must be a JSON object", "e.g. --model-config '{\"layers\": 2}'"
            )
    return {"source": args.model, "config": config}


def check(args: argparse.Namespace) -> None:
    """Flag combinations argparse cannot express, before anything slow happens."""
    if not GPU_TYPE_RE.match(args.gpu_type) or len(args.gpu_type) > 64:
        raise ProfileError("--gpu-type", f"{args.gpu_type!r} is not a GPU type name", "e.g. --gpu-type H100")
    if not args.validate:
        for flag, value in (("--rate", args.rate), ("--requests", args.requests)):
            if value is not None:
                raise ProfileError(flag, "only applies with --validate", f"add --validate or drop {flag}")
    if args.rate is not None and not args.rate > 0:
        raise ProfileError("--rate", f"must be > 0 requests/s, got {args.rate}", "e.g. --rate 5")
    for flag, value in (
        ("--requests", args.requests), ("--max-batch", args.max_batch), ("--kv-blocks", args.kv_blocks),
        ("--threads", args.threads),
    ):  # fmt: skip
        if value is not None and value < 1:
            raise ProfileError(flag, f"must be >= 1, got {value}", f"give a positive {flag}")
    if args.name is not None and (problem := name_problem(args.name)):
        raise ProfileError("--name", f"{args.name!r} {problem}", "e.g. --name h100-tiny-llama")
    if args.power_watts is not None and args.power_watts < 0:
        raise ProfileError("--power-watts", "must be >= 0", "give the board's draw at load in watts")


def resolve_device(name: str, gpu_type: str) -> str:
    import torch

    from plugins.sim import HARDWARE

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ProfileError(
            "--device", f"{name} was asked for but torch sees no CUDA device", "use --device cpu"
        )
    if name == "cpu" and gpu_type in HARDWARE:
        raise ProfileError(
            "--device",
            f"cpu would store CPU timings as {gpu_type}'s",
            "run it on a machine with that GPU with --device cuda, or profile the CPU as --gpu-type CPU",
        )
    if name != "cpu" and not name.startswith("cuda"):
        raise ProfileError("--device", f"unknown device {name!r}", "use auto, cpu, cuda or cuda:N")
    return name


def _check_lengths(args: argparse.Namespace, max_seq_len: int) -> None:
    """The validation trace must run to its full length: the simulator knows no truncation."""
    longest = args.input_tokens[1] + args.output_tokens[1]
    if longest > max_seq_len:
        raise ProfileError(
            "--input-tokens/--output-tokens",
            f"the longest prompt plus output is {longest} tokens, "
            f"more than the model's maxSeqLen ({max_seq_len})",
            "use shorter lengths",
        )
    if args.output_tokens[0] < 2:
        raise ProfileError("--output-tokens", "must be at least 2: TPOT needs two tokens", "e.g. 16-64")


def coefficients_table(measurement: Any) -> str:
    p = measurement.profile
    rows = [
        ["prefill", f"{p.prefill_base_ms:.4g}", f"{p.prefill_ms_per_token:.4g}",
         f"{p.prefill_ms_per_token_sq:.4g}", "-", "-", str(len(measurement.prefill_samples))],
        ["decode", f"{p.decode_base_ms:.4g}", "-", "-", f"{p.decode_ms_per_seq:.4g}",
         f"{p.decode_ms_per_context_token:.4g}", str(len(measurement.decode_samples))],
    ]  # fmt: skip
    headers = ["PHASE", "BASE MS", "MS/TOKEN", "MS/TOKEN²", "MS/SEQ", "MS/CONTEXT TOKEN", "SAMPLES"]
    return table(rows, headers)


def validation_table(validation: Any) -> str:
    rows = []
    for metric, stats in validation.figures.items():
        for stat, cell in stats.items():
            error = validation.error_percent(metric, stat)
            rows.append([metric.upper(), stat, f"{cell['real']:.2f}", f"{cell['sim']:.2f}", f"{error:+.1f}%"])
    return table(rows, ["METRIC", "STAT", "REAL MS", "SIM MS", "ERROR"])


def run(
    args: argparse.Namespace,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    connect: Callable[[], Applier] | None = None,
) -> int:
    """Measure, print, store; return the exit status. ``connect`` makes the API client
    (by default from ``--server``/``--token``); streams default to ``sys``'s at call time."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        check(args)
        spec = model_spec(args)
        try:
            from agents.runtimes.serve import profiling
            from plugins.sim import LengthDist
        except ImportError as exc:
            raise ProfileError(
                "--model",
                f"the serving runtime cannot load ({exc})",
                "install it: pip install 'flotilla[agent]'",
            ) from None
        device = resolve_device(args.device, args.gpu_type)
        try:
            target = profiling.Target.build(spec, device, args.threads, args.max_batch, args.kv_blocks)
        except ValueError as exc:
            flag = "-f" if args.filename else "--model-config" if "config" in str(exc) else "--model"
            raise ProfileError(
                flag, f"cannot build the model: {exc}", "use the runtime's model keys"
            ) from None
        if args.kv_blocks is not None and args.kv_blocks * 16 <= target.config.maxSeqLen:
            need = target.config.maxSeqLen // 16 + 1
            raise ProfileError(
                "--kv-blocks", f"{args.kv_blocks} blocks of 16 tokens cannot hold one full sequence",
                f"give at least {need} (maxSeqLen {target.config.maxSeqLen}), or leave it out",
            )  # fmt: skip
        if args.validate:
            _check_lengths(args, target.config.maxSeqLen)
        grid = profiling.Grid.spread(target.config.maxSeqLen, target.max_batch, quick=args.quick)
        progress = (lambda line: print(line, file=err, flush=True)) if not args.quiet else None
        measurement = profiling.measure(target, args.gpu_type, grid, args.power_watts, progress)
        name = args.name or profile_name(args.gpu_type, measurement.profile.model)
        document = measurement.document(name)
        ProfileSpec.model_validate(document["spec"])  # a bug here, not a user error: fail loudly
        validation = None
        if args.validate:
            inputs, outputs = LengthDist.uniform(*args.input_tokens), LengthDist.uniform(*args.output_tokens)
            rate, utilisation = args.rate, None
            if rate is None:
                full = profiling.capacity(target, inputs, outputs)
                rate, utilisation = DEFAULT_UTILISATION * full, DEFAULT_UTILISATION
                if progress:
                    progress(f"capacity {full:.2f} requests/s; validating at {utilisation:.0%} of it")
            validation = profiling.validate(
                target, measurement.profile, rate, args.requests or 200, inputs, outputs,
                seed=args.seed, utilisation=utilisation, progress=progress,
            )  # fmt: skip
    except ProfileError as exc:
        print(f"error: {exc}", file=err)
        return 1
    _print(args.output, document, measurement, validation, out)
    if args.dry_run:
        print(f"profile/{name} not stored (dry run)", file=err if args.output != "table" else out)
        return 0
    return _store(document, connect or (lambda: _client(args)), out if args.output == "table" else err, err)


def _print(fmt: str, document: dict[str, Any], measurement: Any, validation: Any, out: TextIO) -> None:
    if fmt in ("json", "yaml"):
        body = document if validation is None else {"profile": document, "validation": validation.to_dict()}
        print(dump(body, fmt), file=out)
        return
    spec = document["spec"]
    print(f"profile/{document['metadata']['name']}: {spec['model']} on {spec['gpuType']} "
          f"({spec['measuredOn']}), measured in {measurement.seconds:.0f} s", file=out)  # fmt: skip
    print(coefficients_table(measurement), file=out)
    print(f"fit error {spec['fitErrorPercent']}% (mean over the samples); KV capacity "
          f"{spec['kvCapacityTokens']} tokens, max batch {spec['maxBatch']}; "
          f"{measurement.cpu_per_second:.2f} CPU-seconds per second while sampling", file=out)  # fmt: skip
    print("---", file=out)
    print(dump(document, "yaml"), file=out)
    if validation is not None:
        load = f", {validation.utilisation:.0%} of capacity" if validation.utilisation else ""
        print(f"\nvalidation: {validation.requests} requests at {validation.rate:.2f}/s{load}, "
              f"real engine vs simulator on the same trace", file=out)  # fmt: skip
        print(validation_table(validation), file=out)
        busy, cpu = validation.busy_fraction, validation.cpu_per_busy_second
        print(f"the engine was busy {busy:.0%} of the replay with {cpu:.2f} CPU-seconds per busy second "
              "(well below --threads: other work took the CPU, and the real figures include waiting for it)",
              file=out)  # fmt: skip
        print(json.dumps(validation.to_dict(), indent=2), file=out)


def _client(args: argparse.Namespace) -> Applier:
    from common.client import Client

    return Client(getattr(args, "server", None), getattr(args, "token", None))


def _store(document: dict[str, Any], connect: Callable[[], Applier], out: TextIO, err: TextIO) -> int:
    """Store it through the apply endpoint, as ``flotilla apply`` does. The document is
    already printed, so a refused or unreachable server costs no re-measurement."""
    from common.client import ClientError

    client = connect()
    try:
        result = client.apply(yaml.safe_dump(document, sort_keys=False))
    except ClientError as exc:
        message = str(exc) if str(exc).startswith("error:") else f"error: {exc}"
        print(message, file=err)
        print("the Profile printed above was not stored; save it to a file and `flotilla apply -f` it, "
              "or pass --dry-run", file=err)  # fmt: skip
        return 1
    finally:
        client.close()
    for item in result["results"]:
        print(f"{item['kind'].lower()}/{item['name']} {item['action']}", file=out)
    return 0


def handle(args: argparse.Namespace) -> int:
    return run(args)


def add_profile_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``profile`` to the ``flotilla`` sub-commands."""
    parser = sub.add_parser(
        "profile",
        help="measure the serving engine on this machine and store it as a Profile",
        description="Measure the torch serving engine on this machine, fit the simulator's latency "
        "model, print it as a Profile and store it (it then replaces the roofline estimate in planning).",
    )
    parser.add_argument("--model", help="spec.model.source, e.g. builtin:tiny-llama or path:/models/x")
    parser.add_argument("--model-config", help="spec.model.config as JSON, e.g. '{\"layers\": 2}'")
    parser.add_argument("-f", "--filename", help="take spec.model from this Deployment file instead")
    parser.add_argument(
        "--gpu-type", required=True, help="the type it is stored under: H100, L4, ... (CPU for a CPU node)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--quick", action="store_true", help="a smaller sample grid (a quick look, noisier)")
    parser.add_argument("--threads", type=int, help="torch threads for profiling and --validate alike")
    parser.add_argument("--max-batch", type=int, default=32, help="the runtime's maxBatch (default 32)")
    parser.add_argument(
        "--kv-blocks", type=int, help="the runtime's kvCacheBlocks (default: sized as it does)"
    )
    parser.add_argument("--power-watts", type=float, help="draw at load (default: the type's estimate)")
    parser.add_argument("--name", help="metadata.name (default: <gpu type>-<model key>)")
    parser.add_argument("--validate", action="store_true", help="replay a trace: real engine vs simulator")
    parser.add_argument("--rate", type=float, help="--validate: requests/s (default 50%% of capacity)")
    parser.add_argument("--requests", type=int, help="--validate: how many requests (default 200)")
    parser.add_argument("--input-tokens", type=_lengths, default=DEFAULT_INPUTS, metavar="LO-HI",
                        help="--validate: prompt lengths, uniform (default 32-160)")  # fmt: skip
    parser.add_argument("--output-tokens", type=_lengths, default=DEFAULT_OUTPUTS, metavar="LO-HI",
                        help="--validate: output lengths, uniform (default 16-64)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="--validate: the trace's seed")
    parser.add_argument("--dry-run", action="store_true", help="print the Profile; do not store it")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    parser.set_defaults(handler=handle)
    return parser
