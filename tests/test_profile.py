"""``flotilla profile``: the sample grid, the fit on real engine timings, the Profile document,
its model key against planning's, the CLI's output and errors, and storing through the API."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from agents.runtimes.serve.profiling import Grid, Target, fit_error_percent, measure, validate
from cli.main import main
from cli.profile import profile_name
from common.specs import NAME_MAX, DeploymentSpec, ProfileSpec, name_problem
from plugins.planning import demand_of, profile_for
from plugins.sim import GpuProfile, LengthDist, ModelShape
from tests.conftest import deployment

# A model small enough that a whole profile takes about a second on one CPU thread.
TINY = {"layers": 1, "hidden": 64, "heads": 4, "kvHeads": 2, "intermediate": 128, "maxSeqLen": 64}
SPEC = {"source": "builtin:tiny-llama", "config": TINY}
GRID = Grid(prompt_lengths=(8, 24, 48), batch_sizes=(1, 4), context_lengths=(8, 32), repeats=2, passes=2)
CLI = ["profile", "--model", "builtin:tiny-llama", "--model-config", json.dumps(TINY), "--gpu-type", "CPU",
       "--device", "cpu", "--threads", "1", "--quick", "-q"]  # fmt: skip


@pytest.fixture(scope="module")
def target() -> Target:
    return Target.build(SPEC, "cpu", threads=1)


@pytest.fixture(scope="module")
def measured(target):
    return measure(target, "CPU", GRID)


# -- the grid --------------------------------------------------------------------------------------


def test_the_default_grid_spreads_over_the_whole_sequence_and_stays_within_the_batch():
    grid = Grid.spread(max_seq_len=512, max_batch=32)
    assert min(grid.prompt_lengths) == 8 and max(grid.prompt_lengths) == 511
    assert len(grid.prompt_lengths) >= 8
    assert grid.batch_sizes[0] == 1 and max(grid.batch_sizes) == 32
    assert max(grid.context_lengths) + grid.repeats + 2 <= 512
    quick = Grid.spread(max_seq_len=512, max_batch=32, quick=True)
    cells = len(quick.batch_sizes) * len(quick.context_lengths)
    assert cells < len(grid.batch_sizes) * len(grid.context_lengths)
    assert Grid.spread(max_seq_len=64, max_batch=8).batch_sizes == (1, 2, 4, 8)


def test_a_grid_with_nothing_to_sample_is_refused():
    with pytest.raises(ValueError, match="prompt_lengths"):
        Grid((), (1,), (8,))
    with pytest.raises(ValueError, match="batch_sizes"):
        Grid((8,), (0,), (8,))
    with pytest.raises(ValueError, match="repeats"):
        Grid((8,), (1,), (8,), repeats=0)


def test_measuring_takes_one_sample_per_prompt_length_and_per_decode_cell(measured):
    assert [n for n, _ in measured.prefill_samples] == list(GRID.prompt_lengths)
    assert [b for b, _, _ in measured.decode_samples] == [1, 1, 4, 4]
    for rows, context, ms in measured.decode_samples:
        # rows x the longest sequence, which grows by one token per timed step
        assert rows * 8 <= context <= rows * (63) and ms > 0
    assert all(ms > 0 for _, ms in measured.prefill_samples)


def test_the_fit_on_measured_samples_has_no_negative_coefficient(measured):
    profile = measured.profile
    coefficients = [
        profile.prefill_base_ms, profile.prefill_ms_per_token, profile.prefill_ms_per_token_sq,
        profile.decode_base_ms, profile.decode_ms_per_seq, profile.decode_ms_per_context_token,
    ]  # fmt: skip
    assert all(c >= 0 and math.isfinite(c) for c in coefficients)
    assert profile.source == "measured" and profile.max_batch == 32 and profile.block_size == 16
    assert profile.kv_capacity_tokens % 16 == 0 and profile.kv_capacity_tokens > 0
    assert measured.fit_error_percent == pytest.approx(
        fit_error_percent(profile, measured.prefill_samples, measured.decode_samples)
    )
    assert 0 <= measured.fit_error_percent < 1000


def test_fit_error_is_zero_for_samples_the_model_reproduces_exactly():
    profile = GpuProfile("CPU", "m", "measured", 1.0, 0.1, 0.0, 2.0, 0.5, 0.01, 1024, 8, 0.0)
    prefill = [(n, profile.prefill_ms(n)) for n in (8, 64)]
    decode = [(b, c, profile.decode_ms(b, c)) for b, c in ((1, 16), (4, 256))]
    assert fit_error_percent(profile, prefill, decode) == pytest.approx(0.0)


# -- the document ------------------------------------------------------------------------------


def test_the_document_is_a_valid_profile_resource_that_round_trips(measured):
    name = profile_name("CPU", measured.profile.model)
    document = measured.document(name)
    assert document["kind"] == "Profile" and document["apiVersion"] == "flotilla.dev/v1"
    assert name_problem(document["metadata"]["name"]) is None
    spec = ProfileSpec.model_validate(document["spec"])
    assert spec.source == "measured" and spec.gpuType == "CPU"
    assert spec.fitErrorPercent is not None and spec.measuredOn and "float32" in spec.measuredOn
    known = {k: v for k, v in document["spec"].items() if k not in ("measuredOn", "fitErrorPercent")}
    assert GpuProfile.from_dict(known) == measured.profile


def test_the_model_key_is_the_one_planning_computes_for_a_deployment_of_that_model(measured):
    spec = deployment(model=SPEC, workload={"requestsPerSecond": 2}, slo={"ttftMs": 500})["spec"]
    assert measured.profile.model == demand_of(DeploymentSpec.model_validate(spec)).shape.key
    assert measured.profile.model == ModelShape.from_config(TINY).key


def test_an_explicit_dtype_changes_the_key_on_both_sides_alike():
    config = {**TINY, "dtype": "float32"}
    built = Target.build({"source": "builtin:tiny-llama", "config": config}, "cpu", threads=1)
    spec = deployment(model={"source": "builtin:tiny-llama", "config": config},
                      workload={"requestsPerSecond": 2}, slo={"ttftMs": 500})["spec"]  # fmt: skip
    assert built.shape.key == demand_of(DeploymentSpec.model_validate(spec)).shape.key
    assert built.shape.key.endswith("-b4") and built.shape.key != ModelShape.from_config(TINY).key


@pytest.mark.parametrize(
    ("gpu_type", "expected"),
    [
        ("H100", "h100-llama-l4-h256-a4-kv2-i688-v259-b2"),
        ("A100-80GB", "a100-80gb-llama-l4-h256-a4-kv2-i688-v259-b2"),
        ("RTX_4090.x", "rtx-4090-x-llama-l4-h256-a4-kv2-i688-v259-b2"),
    ],
)
def test_the_name_is_the_gpu_type_and_model_key_as_a_resource_name(gpu_type, expected):
    assert profile_name(gpu_type, ModelShape().key) == expected


def test_a_long_name_is_cut_to_a_valid_label_that_keeps_distinct_models_apart():
    first = profile_name("A100-80GB", ModelShape(80, 8192, 64, 8, 28672, 128256).key, tensor_parallel=8)
    second = profile_name("A100-80GB", ModelShape(80, 8192, 64, 8, 28672, 128000).key, tensor_parallel=8)
    assert len(first) <= NAME_MAX and name_problem(first) is None
    assert first != second


# -- validation ------------------------------------------------------------------------------------


def test_validate_replays_the_trace_and_reports_real_and_simulated_figures(target, measured):
    result = validate(target, measured.profile, rate=40.0, requests=12,
                      inputs=LengthDist.uniform(4, 24), outputs=LengthDist.uniform(2, 8), seed=3)  # fmt: skip
    assert set(result.figures) == {"ttft", "tpot"}
    for metric in ("ttft", "tpot"):
        assert set(result.figures[metric]) == {"mean", "p50", "p90"}
        for cell in result.figures[metric].values():
            assert cell["real"] > 0 and cell["sim"] > 0
    report = result.to_dict()
    assert report["requests"] == 12 and report["ttftMs"]["p90"]["errorPercent"] == pytest.approx(
        result.error_percent("ttft", "p90"), abs=0.06
    )


def test_validate_refuses_lengths_the_engine_would_cut_short(target, measured):
    with pytest.raises(ValueError, match="maxSeqLen"):
        validate(target, measured.profile, 1.0, 4, LengthDist.uniform(8, 48), LengthDist.uniform(2, 32))
    with pytest.raises(ValueError, match="TPOT"):
        validate(target, measured.profile, 1.0, 4, LengthDist.uniform(8, 16), LengthDist.uniform(1, 4))


# -- the command line ------------------------------------------------------------------------------


def test_dry_run_prints_a_profile_document_and_stores_nothing(capsys):
    assert main([*CLI, "--dry-run", "-o", "json"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["kind"] == "Profile"
    assert document["metadata"]["name"] == profile_name("CPU", ModelShape.from_config(TINY).key)
    ProfileSpec.model_validate(document["spec"])
    assert "not stored (dry run)" in captured.err


def test_dry_run_as_yaml_and_as_a_table(capsys):
    assert main([*CLI, "--dry-run", "-o", "yaml", "--name", "my-cpu-profile"]) == 0
    document = yaml.safe_load(capsys.readouterr().out)
    assert document["metadata"]["name"] == "my-cpu-profile"
    assert main([*CLI, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[:3] == ["PHASE", "BASE", "MS"]
    assert "kind: Profile" in out and "not stored (dry run)" in out


def test_validate_flag_prints_real_against_simulated_as_a_table_and_json(capsys):
    argv = [*CLI, "--dry-run", "--validate", "--rate", "40", "--requests", "8",
            "--input-tokens", "4-24", "--output-tokens", "2-8"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "METRIC" in out and "TTFT" in out and "TPOT" in out
    report = json.loads(out[out.index("{", out.index("METRIC")) :].split("\nprofile/")[0])
    assert report["requests"] == 8 and set(report["ttftMs"]) == {"mean", "p50", "p90"}
    assert main([*argv, "-o", "json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["profile"]["kind"] == "Profile" and both["validation"]["rateRps"] == 40


@pytest.mark.parametrize(
    ("extra", "flag", "fix"),
    [
        (["--rate", "5"], "--rate", "add --validate"),
        (["--validate", "--rate", "0"], "--rate", "--rate 5"),
        (["--validate", "--requests", "0"], "--requests", "positive"),
        (["--max-batch", "0"], "--max-batch", "positive"),
        (["--kv-blocks", "4"], "--kv-blocks", "at least 5"),
        (["--name", "Not_A_Name"], "--name", "--name"),
        (["--gpu-type", "H100"], "--device", "--device cuda"),
        (["--gpu-type", "bad type!"], "--gpu-type", "--gpu-type H100"),
        (["--model", "builtin:nope"], "--model", "model keys"),
        (["--model-config", "{layers: 2"], "--model-config", '{"layers": 2}'),
        (["--model-config", '{"layerz": 2}'], "--model-config", "model keys"),
        (
            ["--validate", "--input-tokens", "8-60", "--rate", "5"],
            "--input-tokens/--output-tokens",
            "shorter",
        ),
    ],
)
def test_bad_flags_name_the_flag_and_the_fix(capsys, extra, flag, fix):
    assert main([*CLI, "--dry-run", *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag}:")
    assert fix in err.split("(fix: ", 1)[1]


def test_a_missing_gpu_type_or_model_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["profile", "--model", "builtin:tiny-llama"])
    assert exc.value.code == 2 and "--gpu-type" in capsys.readouterr().err
    assert main(["profile", "--gpu-type", "CPU", "--device", "cpu", "--dry-run"]) == 1
    assert "error: --model: is required" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_one_says_to_use_the_cpu(capsys):
    assert main([*CLI, "--dry-run", "--device", "cuda"]) == 1
    assert "error: --device: cuda was asked for but torch sees no CUDA device (fix: use --device cpu)" in (
        capsys.readouterr().err
    )


def test_the_model_can_come_from_a_deployment_file(tmp_path, capsys):
    path = tmp_path / "chat.yaml"
    path.write_text(yaml.safe_dump(deployment(model=SPEC)))
    argv = [a for a in CLI if a not in ("--model", "builtin:tiny-llama", "--model-config", json.dumps(TINY))]
    assert main([*argv, "-f", str(path), "--dry-run", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["spec"]["model"] == ModelShape.from_config(TINY).key
    assert main([*argv, "-f", str(path), "--model", "builtin:tiny-llama", "--dry-run"]) == 1
    assert "error: -f: given together with --model" in capsys.readouterr().err
    path.write_text("kind: Cluster\nspec: {}\n")
    assert main([*argv, "-f", str(path), "--dry-run"]) == 1
    assert "has no Deployment with spec.model" in capsys.readouterr().err


# -- storing ---------------------------------------------------------------------------------------


class ApiApplier:
    """The CLI's client interface over the Django test client: the real apply endpoint, in-process."""

    def __init__(self, api):
        self.api = api

    def apply(self, text: str, dry_run: bool = False) -> dict:
        response = self.api.apply(text, dry_run=dry_run)
        assert response.status_code == 200, response.content
        return response.json()

    def close(self) -> None:
        pass


def test_a_stored_profile_replaces_the_estimate_in_planning(admin, capsys):
    from cli import profile as cli
    from cli.main import build_parser
    from controlplane.fleet import snapshot

    args = build_parser().parse_args(CLI)
    assert cli.run(args, connect=lambda: ApiApplier(admin)) == 0
    name = profile_name("CPU", ModelShape.from_config(TINY).key)
    assert f"profile/{name} created" in capsys.readouterr().out
    stored = admin.get(f"/profiles/{name}").json()
    assert stored["spec"]["source"] == "measured" and stored["spec"]["gpuType"] == "CPU"
    spec = deployment(model=SPEC, workload={"requestsPerSecond": 2}, slo={"ttftMs": 500})["spec"]
    chosen = profile_for("CPU", demand_of(DeploymentSpec.model_validate(spec)), snapshot())
    assert chosen is not None and chosen.source == "measured"
    assert chosen.decode_ms_per_seq == stored["spec"]["decode"]["msPerSequence"]


def test_a_server_that_refuses_says_the_profile_was_not_stored(capsys):
    from cli import profile as cli
    from cli.main import build_parser
    from common.client import ClientError

    class Refusing(ApiApplier):
        def apply(self, text: str, dry_run: bool = False) -> dict:
            raise ClientError("error: forbidden", 403)

    args = build_parser().parse_args(CLI)
    assert cli.run(args, connect=lambda: Refusing(None)) == 1
    err = capsys.readouterr().err
    assert "error: forbidden" in err and "not stored" in err and "flotilla apply -f" in err
