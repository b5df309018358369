"""A local tokenizer file (Hugging Face tokenizers format) instead of the built-in
byte tokenizer. The tests train a tiny BPE offline, so nothing is downloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from tokenizers import decoders as tk_decoders

from agents.runtimes.serve.engine import Engine
from agents.runtimes.serve.sampling import SamplingParams
from agents.runtimes.tokenizer import ByteTokenizer, FileTokenizer, load_tokenizer
from common.ports import free_port
from common.specs import ModelSource

CORPUS = ["the fleet serves models", "the fleet trains models", "gpus serve the fleet"] * 20


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> str:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk_decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tokenizer.save(str(path))
    return str(path)


def test_a_tokenizer_file_round_trips_text_and_finds_its_specials(tokenizer_path):
    tok = FileTokenizer(tokenizer_path)
    ids = tok.encode("the fleet serves models")
    assert ids[0] == tok.BOS and len(ids) < len("the fleet serves models")  # merges happened
    assert tok.decode(ids) == "the fleet serves models"
    assert {tok.BOS, tok.EOS, tok.PAD} == {1, 2, 3}
    assert b"".join(tok.piece(i) for i in ids[1:]).decode() == "the fleet serves models"


def test_the_default_is_the_byte_tokenizer_and_bad_names_are_refused(tmp_path):
    assert isinstance(load_tokenizer(None), ByteTokenizer)
    assert isinstance(load_tokenizer("builtin:bytes"), ByteTokenizer)
    with pytest.raises(ValueError, match="cannot read"):
        load_tokenizer(f"path:{tmp_path / 'missing.json'}")
    with pytest.raises(ValueError, match="builtin:bytes"):
        load_tokenizer("hub:meta-llama")
    with pytest.raises(ValueError, match="builtin:bytes or path:"):
        ModelSource.model_validate({"source": "builtin:tiny-llama", "tokenizer": "hub:x"})


def test_the_engine_generates_with_a_file_tokenizer(tokenizer_path):
    from agents.runtimes.model import build_model

    tok = FileTokenizer(tokenizer_path)
    config = {
        "layers": 1,
        "hidden": 32,
        "heads": 2,
        "kvHeads": 1,
        "intermediate": 64,
        "vocabSize": tok.vocab_size,
    }
    model, _ = build_model({"source": "builtin:tiny-llama", "config": config}, "cpu")
    engine = Engine(model, kv_blocks=64, max_batch=4, tokenizer=tok)
    engine.start()
    try:
        request = engine.submit(tok.encode("the fleet"), SamplingParams(max_tokens=6, ignore_eos=True))
        request.result(timeout=30)
        assert len(request.output_ids) == 6
        assert all(0 <= t < tok.vocab_size for t in request.output_ids)
        assert request.text == "".join(tok.piece(t).decode("utf-8", "replace") for t in request.output_ids)
    finally:
        engine.stop()


def test_the_serving_runtime_loads_a_tokenizer_file_named_in_the_spec(tokenizer_path, tmp_path):
    vocab = FileTokenizer(tokenizer_path).vocab_size
    config = {
        "model": {
            "source": "builtin:tiny-llama",
            "tokenizer": f"path:{tokenizer_path}",
            "config": {
                "layers": 1,
                "hidden": 32,
                "heads": 2,
                "kvHeads": 1,
                "intermediate": 64,
                "vocabSize": vocab,
            },
        }
    }
    path = tmp_path / "serve.json"
    path.write_text(json.dumps(config))
    port = free_port()
    argv = [sys.executable, "-m", "agents.runtimes.serve", "--config", str(path), "--port", str(port)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        body = {"prompt": "the fleet", "max_tokens": 5}
        result = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=30).json()
        assert result["usage"]["prompt_tokens"] < len("the fleet") + 1  # BPE, not bytes
        assert result["usage"]["completion_tokens"] <= 5
    finally:
        process.terminate()
        process.wait(timeout=20)
