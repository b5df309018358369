"""GPU latency profiles: model shapes, the roofline estimate, the measured fit. Pure: no DB, no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from plugins.sim import HARDWARE, SHAPES, GpuProfile, ModelShape, estimate, fit
from plugins.sim.hardware import get_hardware

LLAMA_8B = SHAPES["llama-3-8b"]


def test_the_package_imports_without_django_or_torch():
    code = (
        "import sys, plugins.sim; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('django', 'torch', 'numpy')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hardware_catalogue_has_the_published_figures():
    assert set(HARDWARE) == {"H200", "H100", "A100-80GB", "A100-40GB", "L40S", "A10G", "L4", "V100"}
    assert (HARDWARE["H100"].tflops, HARDWARE["H100"].memory_bandwidth_gbs) == (989.0, 3350.0)
    assert (HARDWARE["H200"].memory_bandwidth_gbs, HARDWARE["H200"].memory_gib) == (4800.0, 141.0)
    assert HARDWARE["V100"].tflops == 125.0  # FP16 tensor: V100 has no BF16
    assert all(h.price_per_hour > 0 and h.tdp_watts > 0 for h in HARDWARE.values())
    with pytest.raises(ValueError, match="known types: H200, H100"):
        get_hardware("B200")


def test_tiny_llama_shape_counts_what_the_runtime_builds():
    shape = ModelShape()
    # sum(p.numel() for p in Transformer(ModelConfig()).parameters()) -- checked against torch
    assert shape.params == 3_034_880
    assert shape.head_dim == 64
    assert shape.kv_bytes_per_token == 2 * 4 * 2 * 64 * 2
    assert 1.9 * shape.params < shape.flops_per_token <= 2 * shape.params
    assert shape.key == "llama-l4-h256-a4-kv2-i688-v259-b2"
    assert SHAPES["tiny-llama"] == shape


def test_catalogue_shapes_have_their_published_sizes():
    assert SHAPES["llama-3-8b"].params == pytest.approx(8.03e9, rel=0.01)
    assert SHAPES["llama-2-13b"].params == pytest.approx(13.0e9, rel=0.01)
    assert SHAPES["llama-3-70b"].params == pytest.approx(70.6e9, rel=0.01)
    # GQA: 8 KV heads of 128 -> 128 KiB per token for Llama-3-8B in bf16
    assert LLAMA_8B.kv_bytes_per_token == 131072
    assert len({s.key for s in SHAPES.values()}) == len(SHAPES)


def test_from_config_reads_runtime_keys_and_names_bad_ones():
    shape = ModelShape.from_config(
        {"layers": 3, "hidden": 192, "heads": 6, "kvHeads": 3, "intermediate": 500, "vocabSize": 300,
         "dtype": "float32", "maxSeqLen": 1024, "seed": 7}
    )  # fmt: skip
    assert shape == ModelShape(3, 192, 6, 3, 500, 300, 4)
    assert ModelShape.from_config({"hidden": 512}).hidden == 512  # the rest are tiny-llama's
    assert ModelShape.from_config({"dtype": "auto"}).bytes_per_param == 2
    assert ModelShape.from_config({"dtype": "bfloat16"}).bytes_per_param == 2
    with pytest.raises(ValueError, match="'layers'"):
        ModelShape.from_config({"layers": 0})
    with pytest.raises(ValueError, match="'kvHeads'"):
        ModelShape.from_config({"kvHeads": "two"})
    with pytest.raises(ValueError, match="'dtype'"):
        ModelShape.from_config({"dtype": "int8"})
    with pytest.raises(ValueError, match="kvHeads"):
        ModelShape.from_config({"heads": 4, "kvHeads": 3})


def test_faster_memory_decodes_faster():
    step = {
        gpu: estimate(gpu, LLAMA_8B).decode_ms(32, 32 * 1024) for gpu in ("H200", "H100", "A100-80GB", "L4")
    }
    assert step["H200"] < step["H100"] < step["A100-80GB"] < step["L4"]
    # memory-bound: the H100/H200 ratio follows bandwidth, not (equal) FLOPs
    assert step["H100"] / step["H200"] == pytest.approx(4800 / 3350, rel=0.1)


def test_prefill_grows_with_tokens_and_is_compute_bound_when_long():
    profile = estimate("H100", LLAMA_8B)
    times = [profile.prefill_ms(t) for t in (1, 128, 512, 2048, 8192)]
    assert times == sorted(times) and len(set(times)) == len(times)
    # 8k tokens of 16 GFLOP each at 50% of 989 TFLOP/s is ~265 ms, plus attention and the floor
    assert 250 < profile.prefill_ms(8192) < 400
    assert profile.prefill_ms(1) == pytest.approx(profile.decode_ms(1, 0), rel=0.01)


def test_a_70b_model_needs_several_gpus():
    with pytest.raises(ValueError, match="does not fit on 1×L4"):
        estimate("L4", SHAPES["llama-3-70b"])
    four = estimate("H100", SHAPES["llama-3-70b"], tensor_parallel=4)
    two = estimate("H100", SHAPES["llama-3-70b"], tensor_parallel=2)
    assert four.gpus == 4 and four.kv_capacity_tokens > two.kv_capacity_tokens > 0
    assert four.decode_ms(16, 16 * 2048) < two.decode_ms(16, 16 * 2048)
    assert four.model == SHAPES["llama-3-70b"].key


def test_estimate_fields_and_errors():
    profile = estimate("A10G", ModelShape(), max_batch=64)
    assert profile.source == "estimated" and profile.max_batch == 64 and profile.block_size == 16
    assert profile.power_watts == pytest.approx(0.8 * 300)
    assert profile.kv_capacity_tokens > 1_000_000  # a tiny model leaves almost all 24 GiB to KV
    with pytest.raises(ValueError, match="known types"):
        estimate("TPU", LLAMA_8B)
    with pytest.raises(ValueError, match="tensor_parallel"):
        estimate("H100", LLAMA_8B, tensor_parallel=0)


def test_profile_dict_round_trip_and_errors():
    profile = estimate("L40S", LLAMA_8B, tensor_parallel=2)
    data = profile.to_dict()
    assert set(data) == {
        "gpuType", "model", "source", "tensorParallel", "prefill", "decode", "kvCapacityTokens", "maxBatch",
        "blockSize", "powerWatts",
    }  # fmt: skip
    assert set(data["prefill"]) == {"baseMs", "msPerToken", "msPerTokenSquared"}
    assert set(data["decode"]) == {"baseMs", "msPerSequence", "msPerContextToken"}
    assert GpuProfile.from_dict(data) == profile
    del data["decode"]["msPerSequence"]
    with pytest.raises(ValueError, match="'decode.msPerSequence'"):
        GpuProfile.from_dict(data)
    with pytest.raises(ValueError, match="'maxBatch'"):
        GpuProfile.from_dict({**profile.to_dict(), "maxBatch": "many"})
    with pytest.raises(ValueError, match="'source'"):
        GpuProfile.from_dict({**profile.to_dict(), "source": "guessed"})


def test_prefill_batch_charges_attention_per_sequence():
    profile = GpuProfile("X", "m", "measured", 1.0, 0.1, 0.001, 2.0, 0.5, 0.01, 1000, 8, 0.0)
    assert profile.prefill_batch_ms(1, 100) == profile.prefill_ms(100) == pytest.approx(1 + 10 + 10)
    assert profile.prefill_batch_ms(3, 100) == pytest.approx(1 + 30 + 30)  # not (300 tokens)**2
    assert profile.decode_ms(4, 1000) == pytest.approx(2 + 2 + 10)
    assert profile.kv_blocks == 62


def test_fit_recovers_known_coefficients():
    def prefill(t: int) -> float:
        return 3.0 + 0.05 * t + 2e-5 * t * t

    def decode(b: int, c: int) -> float:
        return 7.0 + 0.3 * b + 0.002 * c

    prefill_samples = [(t, prefill(t)) for t in (16, 64, 256, 1024, 4096)]
    decode_samples = [(b, b * ctx, decode(b, b * ctx)) for b in (1, 4, 16, 64) for ctx in (128, 1024)]
    profile = fit("H100", LLAMA_8B, prefill_samples, decode_samples, kv_capacity_tokens=100_000, max_batch=64,
                  power_watts=550.0)  # fmt: skip
    assert profile.source == "measured" and profile.model == LLAMA_8B.key
    prefill = (profile.prefill_base_ms, profile.prefill_ms_per_token, profile.prefill_ms_per_token_sq)
    decode = (profile.decode_base_ms, profile.decode_ms_per_seq, profile.decode_ms_per_context_token)
    assert prefill == pytest.approx((3.0, 0.05, 2e-5), rel=0.02)
    assert decode == pytest.approx((7.0, 0.3, 0.002), rel=0.02)
    assert (profile.kv_capacity_tokens, profile.max_batch, profile.power_watts) == (100_000, 64, 550.0)


def test_fit_keeps_coefficients_non_negative_on_noisy_samples():
    # Prefill that gets *cheaper* per token (noise) must not produce a negative slope.
    prefill_samples = [(16, 10.0), (64, 9.5), (256, 9.0)]
    decode_samples = [(1, 100, 5.0), (2, 200, 5.0), (8, 800, 5.1)]
    profile = fit("L4", ModelShape(), prefill_samples, decode_samples, 1000, 8)
    assert min(profile.to_dict()["prefill"].values()) >= 0
    assert min(profile.to_dict()["decode"].values()) >= 0
    assert profile.prefill_ms(64) == pytest.approx(9.5, abs=0.6)
    with pytest.raises(ValueError, match="prefill sample"):
        fit("L4", ModelShape(), [], decode_samples, 1000, 8)
    with pytest.raises(ValueError, match="decode sample 0"):
        fit("L4", ModelShape(), prefill_samples, [(1, 5.0)], 1000, 8)
