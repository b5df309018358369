"""The Llama-style model, its config, safetensors weights, and the byte tokenizer."""

from __future__ import annotations

import pytest
import torch

from agents.runtimes.model import ModelConfig, Transformer, build_model, model_config_from_spec
from agents.runtimes.tokenizer import ByteTokenizer
from agents.runtimes.weights import save_weights, write_safetensors

TINY = {"layers": 2, "hidden": 64, "heads": 4, "kvHeads": 2, "intermediate": 128, "maxSeqLen": 128}


def tiny(**overrides) -> tuple[Transformer, ModelConfig]:
    return build_model({"source": "builtin:tiny-llama", "config": {**TINY, **overrides}}, "cpu")


def test_forward_returns_logits_over_the_vocabulary_for_every_position():
    model, config = tiny()
    logits = model(torch.randint(0, 259, (3, 17)))
    assert logits.shape == (3, 17, config.vocabSize)
    assert torch.isfinite(logits).all()


def test_builtin_tiny_llama_is_the_documented_default_shape():
    config = model_config_from_spec({"source": "builtin:tiny-llama"})
    assert config == ModelConfig()
    assert (config.vocabSize, config.layers, config.hidden, config.heads, config.kvHeads) == (
        259,
        4,
        256,
        4,
        2,
    )


def test_grouped_query_attention_projects_fewer_key_value_heads_than_query_heads():
    model, config = tiny(heads=8, kvHeads=2)
    attn = model.layers[0].attn
    assert attn.wq.weight.shape == (8 * config.headDim, config.hidden)
    assert attn.wk.weight.shape == (2 * config.headDim, config.hidden)
    assert attn.wv.weight.shape == (2 * config.headDim, config.hidden)
    assert model(torch.randint(0, 259, (2, 9))).shape == (2, 9, 259)


def test_attention_is_causal_so_later_tokens_do_not_change_earlier_logits():
    model, _ = tiny()
    tokens = torch.randint(0, 256, (1, 12))
    changed = tokens.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 256
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.allclose(a[0, :8], b[0, :8], atol=1e-6)
    assert not torch.allclose(a[0, 8:], b[0, 8:])


def test_the_same_seed_gives_identical_weights_and_another_seed_does_not():
    a, _ = tiny(seed=7)
    b, _ = tiny(seed=7)
    c, _ = tiny(seed=8)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.embed.weight, c.embed.weight)


def test_weights_round_trip_through_a_safetensors_directory_with_its_config(tmp_path):
    model, _ = tiny(seed=3)
    save_weights(model, tmp_path / "ckpt")
    loaded, config = build_model({"source": f"path:{tmp_path / 'ckpt'}"}, "cpu")
    assert config.layers == 2 and config.hidden == 64 and config.seed == 3
    tokens = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        assert torch.equal(model(tokens), loaded(tokens))


def test_weights_load_from_a_single_safetensors_file_with_the_spec_config(tmp_path):
    model, _ = tiny(seed=5)
    file = save_weights(model, tmp_path / "weights.safetensors")
    loaded, _ = build_model({"source": f"path:{file}", "config": TINY}, "cpu")
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_loading_weights_for_another_shape_names_the_missing_and_unexpected_tensors(tmp_path):
    model, _ = tiny(layers=1)
    file = save_weights(model, tmp_path / "one-layer.safetensors")
    with pytest.raises(ValueError, match=r"missing tensors: layers\.1\."):
        build_model({"source": f"path:{file}", "config": TINY}, "cpu")
    write_safetensors({**tiny()[0].state_dict(), "bogus.weight": torch.zeros(2)}, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match=r"unexpected tensors: bogus\.weight"):
        build_model({"source": f"path:{tmp_path / 'x.safetensors'}", "config": TINY}, "cpu")


def test_bfloat16_weights_survive_the_numpy_free_safetensors_writer(tmp_path):
    from safetensors.torch import load_file

    tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(7), "empty": torch.zeros(0, 4)}
    write_safetensors(tensors, tmp_path / "t.safetensors")
    loaded = load_file(str(tmp_path / "t.safetensors"))
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in tensors.items())


def test_a_missing_weights_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        build_model({"source": f"path:{tmp_path / 'nowhere'}"}, "cpu")


def test_an_unknown_config_key_is_rejected_naming_it_and_listing_the_known_keys():
    with pytest.raises(ValueError, match=r"'hiddenSize'.*known keys: vocabSize, layers, hidden"):
        model_config_from_spec({"source": "builtin:tiny-llama", "config": {"hiddenSize": 64}})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"layers": "2"}, "'layers' must be int"),
        ({"heads": 4, "kvHeads": 3}, "must divide by kvHeads"),
        ({"hidden": 66, "heads": 4}, "divisible by heads"),
        ({"dtype": "int8"}, "dtype"),
    ],
)
def test_an_invalid_config_value_is_rejected_with_the_reason(config, message):
    with pytest.raises(ValueError, match=message):
        model_config_from_spec({"source": "builtin:tiny-llama", "config": config})


def test_an_unknown_builtin_model_is_rejected():
    with pytest.raises(ValueError, match="unknown builtin model 'gpt-5'"):
        model_config_from_spec({"source": "builtin:gpt-5"})


def test_float64_dtype_is_honoured_and_auto_is_float32_on_the_cpu():
    model, config = tiny(dtype="float64")
    assert model.embed.weight.dtype == torch.float64
    assert ModelConfig().torch_dtype("cpu") == torch.float32
    assert ModelConfig().torch_dtype("cuda") == torch.bfloat16


def test_the_byte_tokenizer_round_trips_non_ascii_text():
    tok = ByteTokenizer()
    text = "naïve café — 東京 🚀"
    ids = tok.encode(text)
    assert ids[0] == ByteTokenizer.BOS and all(0 <= i < 256 for i in ids[1:])
    assert len(ids) == 1 + len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.encode(text, bos=False) == ids[1:]


def test_the_byte_tokenizer_skips_specials_and_replaces_broken_utf8():
    tok = ByteTokenizer()
    assert tok.decode([ByteTokenizer.BOS, 104, 105, ByteTokenizer.EOS, ByteTokenizer.PAD]) == "hi"
    assert tok.decode([0xE6, 0x9D]) == "\ufffd"
    assert tok.vocab_size == 259 == ModelConfig().vocabSize
