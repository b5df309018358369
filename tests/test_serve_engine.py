"""The paged KV cache and the continuous-batching engine, on real (tiny) models."""

from __future__ import annotations

import threading

import pytest
import torch

from agents.runtimes.model import Transformer, build_model
from agents.runtimes.serve.engine import Engine, EngineClosed
from agents.runtimes.serve.kvcache import BlockAllocator, PagedKVCache
from agents.runtimes.serve.sampling import SamplingParams
from agents.runtimes.tokenizer import ByteTokenizer

TINY = {"layers": 2, "hidden": 64, "heads": 4, "kvHeads": 2, "intermediate": 128, "maxSeqLen": 256}
PROMPT_LENGTHS = [1, 3, 7, 15, 16, 17, 30, 45, 2, 33, 9, 64]


def tiny_model(**overrides) -> Transformer:
    return build_model({"source": "builtin:tiny-llama", "config": {**TINY, **overrides}}, "cpu")[0]


def prompts(lengths: list[int], seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=gen).tolist() for n in lengths]


def reference_greedy(model: Transformer, prompt: list[int], max_tokens: int) -> list[int]:
    """Greedy decode with the no-cache training forward, re-running the whole sequence each token."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_tokens):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


def constant_model(token: int) -> Transformer:
    """A real model whose weights make greedy decoding always pick ``token``: every embedding is
    the same vector, the blocks add nothing, and only ``token``'s head row matches it."""
    model = tiny_model()
    with torch.no_grad():
        model.embed.weight.fill_(1.0)
        for block in model.layers:
            block.attn.wo.weight.zero_()
            block.mlp.w_down.weight.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[token] = 1.0
    return model


# -- the block allocator and cache ----------------------------------------------------------


def test_the_allocator_refuses_more_blocks_than_are_free_and_takes_nothing():
    alloc = BlockAllocator(4)
    first = alloc.allocate(3)
    assert first is not None and len(set(first)) == 3
    assert alloc.allocate(2) is None
    assert (alloc.used_count, alloc.free_count) == (3, 1)


def test_freed_blocks_are_reused_and_double_frees_are_rejected():
    alloc = BlockAllocator(2)
    blocks = alloc.allocate(2)
    assert alloc.allocate(1) is None
    alloc.free(blocks[:1])
    assert alloc.allocate(1) == blocks[:1]
    alloc.free(blocks)
    with pytest.raises(ValueError, match="not allocated"):
        alloc.free(blocks[:1])
    assert alloc.free_count == 2


def test_the_cache_is_sized_from_a_memory_budget_and_grows_tables_block_by_block():
    model = tiny_model()
    config = model.config
    per_block = PagedKVCache.bytes_per_block(config, torch.float32)
    assert per_block == 2 * 2 * 16 * 2 * 16 * 4  # layers * k/v * block * kvHeads * headDim * fp32
    blocks = PagedKVCache.blocks_for_budget(config, torch.float32, per_block * 5 + 100)
    cache = PagedKVCache(config, blocks, "cpu", torch.float32)
    assert cache.usage()["blocksTotal"] == 5 and cache.usage()["bytes"] == 5 * per_block
    table = cache.new_table()
    assert cache.grow(table, 17) and len(table.blocks) == 2
    assert cache.grow(table, 32) and len(table.blocks) == 2
    assert not cache.grow(table, 16 * 6) and len(table.blocks) == 2
    assert table.slots(15, 17) == [table.blocks[0] * 16 + 15, table.blocks[1] * 16]
    cache.release(table)
    assert cache.usage()["blocksFree"] == 5


# -- batched decoding equals sequential decoding ---------------------------------------------


GREEDY = SamplingParams(max_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module")
def f64_model() -> Transformer:
    # float64 so that the different summation orders of batched, paged and full attention
    # cannot flip an argmax; the float32 and bf16 paths run the very same code.
    return tiny_model(dtype="float64")


@pytest.fixture(scope="module")
def one_at_a_time(f64_model: Transformer) -> list[list[int]]:
    """Each prompt decoded alone through the engine, checked against the no-cache reference."""
    outputs = []
    for prompt in prompts(PROMPT_LENGTHS):
        alone = Engine(f64_model, kv_blocks=64, max_batch=1).generate([prompt], GREEDY)[0].output_ids
        assert alone == reference_greedy(f64_model, prompt, GREEDY.max_tokens)
        outputs.append(alone)
    return outputs


def test_one_request_at_a_time_through_the_engine_equals_the_no_cache_reference(one_at_a_time):
    assert len(one_at_a_time) == len(PROMPT_LENGTHS) and all(len(o) == 10 for o in one_at_a_time)


def test_batched_greedy_output_equals_one_request_at_a_time_token_for_token(f64_model, one_at_a_time):
    engine = Engine(f64_model, kv_blocks=256, max_batch=8)
    together = engine.generate(prompts(PROMPT_LENGTHS), GREEDY)
    assert [r.output_ids for r in together] == one_at_a_time
    assert engine.cache.usage()["blocksUsed"] == 0


def test_batched_greedy_output_is_unchanged_when_a_small_cache_forces_preemption(f64_model, one_at_a_time):
    engine = Engine(f64_model, kv_blocks=12, max_batch=8)
    together = engine.generate(prompts(PROMPT_LENGTHS), GREEDY)
    assert sum(r.preemptions for r in together) > 0, "the small cache should have forced preemption"
    assert [r.output_ids for r in together] == one_at_a_time
    assert engine.cache.usage()["blocksUsed"] == 0


def test_float32_batched_greedy_matches_one_at_a_time():
    model = tiny_model(layers=1)
    batch = prompts([5, 20, 11, 40])
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    together = Engine(model, kv_blocks=64).generate(batch, params)
    alone = [Engine(model, kv_blocks=64).generate([p], params)[0] for p in batch]
    assert [r.output_ids for r in together] == [r.output_ids for r in alone]


# -- sampling and stopping ------------------------------------------------------------------


def test_seeded_sampling_is_reproducible_whatever_shares_the_batch():
    model = tiny_model()
    prompt = prompts([10])[0]
    seeded = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=42, ignore_eos=True)
    alone = Engine(model, kv_blocks=64).generate([prompt], seeded)[0]
    crowd = [SamplingParams(max_tokens=16, temperature=1.0, seed=s, ignore_eos=True) for s in range(4)]
    mixed = Engine(model, kv_blocks=64).generate([prompt, *prompts([3, 20, 7, 12])], [seeded, *crowd])
    other = Engine(model, kv_blocks=64).generate([prompt], SamplingParams(**{**seeded.__dict__, "seed": 43}))[
        0
    ]
    assert mixed[0].output_ids == alone.output_ids
    assert other.output_ids != alone.output_ids


def test_a_tiny_top_p_keeps_only_the_most_likely_token_so_it_matches_greedy():
    model = tiny_model()
    prompt = prompts([12])[0]
    greedy = Engine(model, kv_blocks=64).generate([prompt], SamplingParams(max_tokens=10, ignore_eos=True))[0]
    nucleus = SamplingParams(max_tokens=10, temperature=1.5, top_p=1e-6, seed=1, ignore_eos=True)
    assert Engine(model, kv_blocks=64).generate([prompt], nucleus)[0].output_ids == greedy.output_ids


def test_generation_stops_at_eos_unless_asked_to_ignore_it():
    model = constant_model(ByteTokenizer.EOS)
    engine = Engine(model, kv_blocks=16)
    stopped, ignored = engine.generate(
        [[1, 2, 3]] * 2, [SamplingParams(max_tokens=10), SamplingParams(max_tokens=10, ignore_eos=True)]
    )
    assert (stopped.finish_reason, stopped.output_ids, stopped.text) == ("stop", [ByteTokenizer.EOS], "")
    assert (ignored.finish_reason, len(ignored.output_ids)) == ("length", 10)


def test_generation_stops_at_max_tokens_with_finish_reason_length():
    request = Engine(constant_model(ord("a")), kv_blocks=16).generate([[5]], SamplingParams(max_tokens=7))[0]
    assert (request.finish_reason, request.text, len(request.output_ids)) == ("length", "aaaaaaa", 7)


def test_a_stop_string_ends_generation_and_is_cut_from_the_text():
    engine = Engine(constant_model(ord("a")), kv_blocks=16)
    cut, unmatched = engine.generate(
        [[5], [5]], [SamplingParams(max_tokens=10, stop=["aaa"]), SamplingParams(max_tokens=6, stop=["aaab"])]
    )
    assert (cut.finish_reason, cut.text, len(cut.output_ids)) == ("stop", "", 3)
    assert (unmatched.finish_reason, unmatched.text) == ("length", "aaaaaa")
    assert "".join(unmatched.stream(timeout=1)) == "aaaaaa"


def test_streamed_deltas_add_up_to_the_final_text_and_latencies_are_measured():
    model = tiny_model()
    engine = Engine(model, kv_blocks=64).start()
    try:
        request = engine.submit(
            prompts([8])[0], SamplingParams(max_tokens=20, temperature=0.8, seed=3, ignore_eos=True)
        )
        streamed = "".join(request.stream(timeout=30))
        result = request.result(timeout=30)
    finally:
        engine.stop()
    assert streamed == result.text and len(result.token_ids) == 20
    assert result.ttft is not None and result.ttft > 0
    assert result.tpot is not None and result.tpot > 0
    stats = engine.stats()
    assert stats["generatedTokensTotal"] == 20 and stats["requests"] == {"length": 1}


def test_requests_submitted_from_many_threads_all_complete_on_the_background_loop():
    engine = Engine(tiny_model(), kv_blocks=64, max_batch=4).start()
    results: list = []

    def client(seed: int) -> None:
        request = engine.submit(prompts([4 + seed], seed)[0], SamplingParams(max_tokens=5, ignore_eos=True))
        results.append(request.result(timeout=30))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.stop()
    assert len(results) == 10 and all(r.finish_reason == "length" and len(r.token_ids) == 5 for r in results)
    assert engine.gauges()["kvBlocksUsed"] == 0


def test_stopping_without_a_drain_aborts_in_flight_requests_and_refuses_new_ones():
    engine = Engine(tiny_model(maxSeqLen=512), kv_blocks=64).start()
    request = engine.submit([1, 2, 3], SamplingParams(max_tokens=500, ignore_eos=True))
    next(request.stream(timeout=30))
    engine.stop(drain_s=0)
    assert request.result(timeout=5).finish_reason == "abort"
    with pytest.raises(EngineClosed):
        engine.submit([1], SamplingParams())


def test_a_cancelled_request_leaves_the_batch_and_frees_its_blocks():
    engine = Engine(tiny_model(), kv_blocks=64)
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    keep, drop = engine.submit([1, 2], params), engine.submit([3, 4], params)
    engine.step()
    drop.cancel()
    engine.run_until_idle()
    assert drop.finish_reason == "cancelled" and len(drop.output_ids) == 1
    assert keep.finish_reason == "length" and len(keep.output_ids) == 6
    assert engine.gauges()["kvBlocksUsed"] == 0


def test_requests_that_can_never_fit_are_rejected_at_submit():
    engine = Engine(tiny_model(), kv_blocks=2)
    with pytest.raises(ValueError, match="cannot fit the KV cache"):
        engine.submit([1] * 20, SamplingParams(max_tokens=20))
    with pytest.raises(ValueError, match="maxSeqLen"):
        engine.submit([1] * 256, SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="max_tokens"):
        engine.submit([1], SamplingParams(max_tokens=0))
