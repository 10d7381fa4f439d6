"""HFEngine (batched KV-cached sampling) and AsyncBatchingEngine (asyncio batching front)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from actorlearner.core.protocols import Generation, SamplingParams
from actorlearner.core.registry import RegistryError
from actorlearner.models.tiny import build_tiny_model
from actorlearner.rollout.engine import AsyncBatchingEngine, HFEngine, PrefixStore
from actorlearner.rollout.engines import make_engine
from tests.engine_contract import check_generate_shapes, check_stops_at_stop_ids, random_prompts

CORPUS = ["What is 37 * 52? Use the calculator tool.", "<tool_call></tool_call><answer></answer>"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(CORPUS, tmp_path_factory.mktemp("engine") / "m", num_layers=2)


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> HFEngine:
    return HFEngine(model_dir, seed=0)


_prompts = random_prompts


def _recomputed_logprobs(engine: HFEngine, prompts: list[list[int]], gens: list[Generation], temp: float):
    """Log-probs of the generated ids from one full, right-padded forward pass."""
    seqs = [p + g.token_ids for p, g in zip(prompts, gens, strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    with torch.no_grad():
        logits = engine.model(input_ids=ids, attention_mask=mask).logits.float()
    logp = torch.log_softmax(logits / (temp if temp > 0 else 1.0), dim=-1)
    out = []
    for i, (p, g) in enumerate(zip(prompts, gens, strict=True)):
        pos = torch.arange(len(p) - 1, len(p) - 1 + len(g.token_ids))
        out.append(logp[i, pos, torch.tensor(g.token_ids, dtype=torch.long)].tolist())
    return out


def test_generate_shapes_and_lengths(engine: HFEngine) -> None:
    check_generate_shapes(engine)
    assert engine.generate([], SamplingParams()) == []


def test_stops_at_stop_ids(engine: HFEngine) -> None:
    prompts = random_prompts(8, seed=1)
    check_stops_at_stop_ids(engine, tolerance=1e-5)
    every = tuple(range(engine.model.config.vocab_size))
    for g in engine.generate(prompts, SamplingParams(1.0, 5, every)):
        assert len(g.token_ids) == 1 and g.finish_reason == "stop"


def test_greedy_is_deterministic_and_batch_independent(engine: HFEngine) -> None:
    prompts = _prompts(7, seed=2, lo=2, hi=30)
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    batched = engine.generate(prompts, params)
    assert [g.token_ids for g in engine.generate(prompts, params)] == [g.token_ids for g in batched]
    for p, g in zip(prompts, batched, strict=True):
        (alone,) = engine.generate([p], params)
        assert alone.token_ids == g.token_ids
        assert alone.logprobs == pytest.approx(g.logprobs, abs=1e-4)
    recomputed = _recomputed_logprobs(engine, prompts, batched, 0.0)
    for g, lp in zip(batched, recomputed, strict=True):
        assert g.logprobs == pytest.approx(lp, abs=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_match_full_forward(engine: HFEngine, temperature: float) -> None:
    prompts = _prompts(9, seed=3, lo=2, hi=30)
    gens = engine.generate(prompts, SamplingParams(temperature=temperature, max_new_tokens=15))
    for g, lp in zip(gens, _recomputed_logprobs(engine, prompts, gens, temperature), strict=True):
        assert g.logprobs == pytest.approx(lp, abs=1e-4)


def test_pruning_finished_rows(model_dir: Path) -> None:
    """Dropping finished rows from the running batch (and its KV cache) keeps every row exact."""
    prompts = _prompts(24, seed=4)
    always = HFEngine(model_dir, prune_fraction=1.0)  # prune whenever a row finishes
    stops = tuple(range(100, 130))
    params = SamplingParams(temperature=1.0, max_new_tokens=12, stop_token_ids=stops)
    gens = always.generate(prompts, params)
    assert len({len(g.token_ids) for g in gens}) > 3  # rows finished at many different steps
    for g, lp in zip(gens, _recomputed_logprobs(always, prompts, gens, 1.0), strict=True):
        assert g.logprobs == pytest.approx(lp, abs=1e-4)
        assert not set(g.token_ids[:-1]) & set(stops)
        assert (g.finish_reason == "stop") == (g.token_ids[-1] in stops)
    never = HFEngine(model_dir, prune_fraction=0.0)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12, stop_token_ids=stops)
    a, b = never.generate(prompts, greedy), always.generate(prompts, greedy)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


def test_seeded_sampling_is_reproducible(model_dir: Path) -> None:
    prompts, params = _prompts(5, seed=5), SamplingParams(temperature=1.0, max_new_tokens=10)
    a, b, c = HFEngine(model_dir, seed=7), HFEngine(model_dir, seed=7), HFEngine(model_dir, seed=8)
    ga, gb, gc = a.generate(prompts, params), b.generate(prompts, params), c.generate(prompts, params)
    assert [g.token_ids for g in ga] == [g.token_ids for g in gb]
    assert [g.token_ids for g in ga] != [g.token_ids for g in gc]


def test_make_engine_builds_the_registered_hf_engine(model_dir: Path) -> None:
    prompts, params = _prompts(4, seed=6), SamplingParams(temperature=1.0, max_new_tokens=8)
    built = make_engine("hf", model_dir, seed=7, prune_fraction=0.5)
    assert type(built) is HFEngine and built.prune_fraction == 0.5
    direct = HFEngine(model_dir, seed=7, prune_fraction=0.5)
    assert [g.token_ids for g in built.generate(prompts, params)] == [
        g.token_ids for g in direct.generate(prompts, params)
    ]
    assert type(make_engine(HFEngine, model_dir)) is HFEngine
    assert type(make_engine("actorlearner.rollout.engine:HFEngine", model_dir)) is HFEngine
    with pytest.raises(RegistryError, match=r"^unknown engine 'sglang'; known: .*\bhf\b"):
        make_engine("sglang", model_dir)
    with pytest.raises(RegistryError, match=r"^engine 'hf': bad options \{'top_k': 5\}"):
        make_engine("hf", model_dir, top_k=5)


def test_load_weights(model_dir: Path) -> None:
    engine = HFEngine(model_dir)
    prompts, params = _prompts(4, seed=6), SamplingParams(temperature=0.0, max_new_tokens=8)
    before = [g.token_ids for g in engine.generate(prompts, params)]
    gen = torch.Generator().manual_seed(0)
    weights = {
        k: (v + 0.5 * torch.randn(v.shape, generator=gen)).numpy() for k, v in engine.state_dict().items()
    }
    engine.load_weights(weights, version=3)
    assert engine.version == 3
    after = engine.generate(prompts, params)
    assert [g.token_ids for g in after] != before
    assert all(g.version == 3 for g in after)
    np.testing.assert_allclose(engine.state_dict()["model.norm.weight"].numpy(), weights["model.norm.weight"])
    tied = {k: v for k, v in weights.items() if k != "lm_head.weight"}
    engine.load_weights(tied, version=4)  # the tied head may be left out
    with pytest.raises(RuntimeError, match="unexpected"):
        engine.load_weights({**weights, "extra.weight": np.zeros(1)}, version=5)
    with pytest.raises(RuntimeError, match="missing"):
        engine.load_weights({k: v for k, v in weights.items() if k != "model.norm.weight"}, version=5)
    assert engine.version == 4


def test_load_weights_trims_the_heap_at_most_every_trim_heap_s(model_dir: Path) -> None:
    never, often = HFEngine(model_dir, trim_heap_s=0), HFEngine(model_dir, trim_heap_s=1e-9)
    rare = HFEngine(model_dir, trim_heap_s=3600)
    marks = {e: e._trimmed_at for e in (never, often, rare)}
    for e in marks:
        e.load_weights({k: v.numpy() for k, v in e.state_dict().items()}, version=1)
    assert never._trimmed_at == marks[never] and rare._trimmed_at == marks[rare]
    assert often._trimmed_at > marks[often]


def test_published_numpy_weights_become_the_parameters_without_a_copy(model_dir: Path) -> None:
    shared, copied = HFEngine(model_dir), HFEngine(model_dir)
    gen = torch.Generator().manual_seed(1)
    tensors = {k: v + 0.5 * torch.randn(v.shape, generator=gen) for k, v in shared.state_dict().items()}
    if shared.model.config.tie_word_embeddings:  # one tensor under two names, as in the state dict
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    arrays = {k: v.numpy().copy() for k, v in tensors.items() if k != "lm_head.weight"}  # as published
    for array in arrays.values():
        array.flags.writeable = False  # as Ray's object store maps them
    shared.load_weights(arrays, version=1)
    copied.load_weights(tensors, version=1)
    for name, array in arrays.items():  # the parameters are the arrays themselves
        assert np.shares_memory(shared.model.get_parameter(name).detach().numpy(), array), name
    if shared.model.config.tie_word_embeddings:  # the head follows the assigned embedding
        assert shared.model.get_output_embeddings().weight is shared.model.get_input_embeddings().weight
    prompts, params = _prompts(4, seed=7), SamplingParams(temperature=0.0, max_new_tokens=8)
    assert [g.token_ids for g in shared.generate(prompts, params)] == [
        g.token_ids for g in copied.generate(prompts, params)
    ]
    tensors["model.norm.weight"].fill_(3.0)  # tensors are copied in: the caller's dict is not the model
    assert not torch.equal(copied.state_dict()["model.norm.weight"], tensors["model.norm.weight"])
    # A later load replaces the shared arrays; it never writes into them (on Ray: others' memory).
    kept = {k: v.copy() for k, v in arrays.items()}
    shared.load_weights(tensors, version=2)
    for name, array in arrays.items():
        np.testing.assert_array_equal(array, kept[name], err_msg=name)
    assert shared.state_dict()["model.norm.weight"].eq(3.0).all()


class FakeEngine:
    """Records batches; the first id of a prompt is echoed back as the turn."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.version, self.delay, self.fail = 0, delay, fail
        self.batches: list[tuple[int, SamplingParams]] = []
        self.loaded: list[int] = []
        self.threads: set[int] = set()
        self.orders: list[list[int]] = []

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]:
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        if self.fail:
            raise ValueError("boom")
        self.batches.append((len(prompts), params))
        self.orders.append([p[0] for p in prompts])
        return [Generation([p[0], 1], [-0.5, -0.5], "length", self.version) for p in prompts]

    def load_weights(self, weights: Mapping[str, Any], version: int) -> None:
        self.loaded.append(version)
        self.version = version


def test_async_engine_batches_concurrent_requests() -> None:
    fake = FakeEngine(delay=0.05)

    async def main() -> list[Generation]:
        front = AsyncBatchingEngine(fake)
        gens = await asyncio.gather(*(front.generate([i, 9], SamplingParams()) for i in range(32)))
        stats = front.pop_stats()
        assert stats["requests"] == 32 and stats["tokens"] == 64
        assert stats["batches"] == len(fake.batches) and stats["mean_batch_size"] == 32 / len(fake.batches)
        assert stats["seconds"] > 0 and stats["tokens_per_s"] > 0
        assert front.pop_stats()["batches"] == 0  # reset
        front.close()
        return gens

    gens = asyncio.run(main())
    assert [g.token_ids[0] for g in gens] == list(range(32))
    assert len(fake.batches) < 32 and fake.batches[0][0] > 1
    assert threading.get_ident() not in fake.threads  # generation ran in a worker thread


def test_lockstep_batches_wait_for_every_joined_episode_and_sort_their_rows() -> None:
    """debugging.deterministic: batches do not depend on when episodes come back from env steps."""
    fake = FakeEngine()
    jitter = random.Random()  # seeded by the OS: a different arrival order in every run

    async def episode(front: AsyncBatchingEngine, first: int, turns: int, last_step_s: float) -> None:
        try:
            for turn in range(turns):
                await asyncio.sleep(jitter.uniform(0.0, 0.03))  # an env step of random length
                await front.generate([first, turn], SamplingParams())
            await asyncio.sleep(last_step_s)  # the final env step, after which the episode ends
        finally:
            front.leave()

    async def main() -> None:
        front = AsyncBatchingEngine(fake, lockstep=True)
        front.join(6)
        # Episode 0 plays one turn, then a final step longer than every other episode's wait: the
        # second batch may run only once it has left (the last event is its leave, not a request).
        plays = [
            episode(front, i, 1 if i % 3 == 0 else 2, 0.1 if i == 0 else 0.0) for i in reversed(range(6))
        ]
        await asyncio.wait_for(asyncio.gather(*plays), timeout=10)
        front.close()

    asyncio.run(main())
    assert fake.orders == [[0, 1, 2, 3, 4, 5], [1, 2, 4, 5]]  # episodes 0 and 3 left after one turn


def test_lockstep_does_not_count_the_request_of_a_cancelled_episode() -> None:
    """A cancelled episode leaves; its stale request must not stand in for a live one's."""
    fake = FakeEngine()

    async def main() -> None:
        front = AsyncBatchingEngine(fake, lockstep=True)
        front.join(3)
        doomed = asyncio.ensure_future(front.generate([0], SamplingParams()))
        await asyncio.sleep(0.01)
        doomed.cancel()
        front.leave()

        async def late(first: int, delay: float) -> None:
            try:
                await asyncio.sleep(delay)
                await front.generate([first], SamplingParams())
            finally:
                front.leave()

        await asyncio.wait_for(asyncio.gather(late(1, 0.0), late(2, 0.1)), timeout=10)
        front.close()

    asyncio.run(main())
    assert fake.orders == [[1, 2]]


def test_async_engine_groups_by_params_and_splits_batches() -> None:
    fake = FakeEngine()

    async def main() -> None:
        front = AsyncBatchingEngine(fake, max_batch_size=4)
        greedy, sampled = SamplingParams(temperature=0.0), SamplingParams(temperature=1.0)
        reqs = [front.generate([i], greedy if i % 2 else sampled) for i in range(12)]
        await asyncio.gather(*reqs)
        front.close()

    asyncio.run(main())
    assert sorted(n for n, _ in fake.batches) == [2, 2, 4, 4]
    assert {p.temperature for _, p in fake.batches} == {0.0, 1.0}


def test_async_engine_applies_staged_weights_before_next_batch() -> None:
    fake = FakeEngine()

    async def main() -> None:
        front = AsyncBatchingEngine(fake)
        assert (await front.generate([1], SamplingParams())).version == 0
        front.stage_weights({}, version=1)
        front.stage_weights({}, version=2)  # replaces the unapplied version 1
        assert front.version == 2
        assert (await front.generate([1], SamplingParams())).version == 2
        front.close()

    asyncio.run(main())
    assert fake.loaded == [2]


def test_async_engine_loads_staged_weights_at_once_when_idle() -> None:
    fake = FakeEngine()

    async def main() -> None:
        front = AsyncBatchingEngine(fake)
        front.stage_weights({}, version=3)  # no request yet: the batching task starts and loads
        await asyncio.sleep(0.05)
        assert fake.loaded == [3] and front.version == 3
        assert front.loaded_at is not None and front.loaded_at <= time.perf_counter()
        assert (await front.generate([1], SamplingParams())).version == 3
        assert fake.loaded == [3]  # not loaded again before the batch
        front.close()

    asyncio.run(main())
    front = AsyncBatchingEngine(fake)
    front.stage_weights({}, version=4)  # no event loop: staged for the next batch
    assert fake.loaded == [3] and front.version == 4 and front.loaded_at is None
    front.close()


def test_async_engine_weights_failing_while_idle_fail_the_next_batch(engine: HFEngine) -> None:
    async def main() -> None:
        front = AsyncBatchingEngine(engine)
        params = SamplingParams(temperature=0.0, max_new_tokens=2)
        front.stage_weights({"nope": np.zeros(1)}, version=9)
        await asyncio.sleep(0.05)  # loaded (and failed) while idle
        with pytest.raises(RuntimeError, match="unexpected"):
            await front.generate([5, 6], params)
        assert (await front.generate([5, 6], params)).version == engine.version != 9
        front.close()

    asyncio.run(main())


class SlowLoadEngine(FakeEngine):
    """Loads take ``load_s``; weights named ``bad`` fail to load."""

    def __init__(self, load_s: float = 0.0) -> None:
        super().__init__()
        self.load_s = load_s

    def load_weights(self, weights: Mapping[str, Any], version: int) -> None:
        time.sleep(self.load_s)
        if "bad" in weights:
            raise ValueError(f"bad v{version}")
        super().load_weights(weights, version)


def test_async_engine_version_counts_a_load_in_progress() -> None:
    fake = SlowLoadEngine(load_s=0.2)

    async def main() -> None:
        front = AsyncBatchingEngine(fake)
        front.stage_weights({}, version=5)
        await asyncio.sleep(0.05)  # loading in the engine's thread now
        assert fake.version == 0 and front.version == 5
        await asyncio.sleep(0.3)
        assert fake.loaded == [5] and front.version == 5
        front.close()

    asyncio.run(main())


def test_async_engine_newer_weights_clear_an_idle_load_failure() -> None:
    fake = SlowLoadEngine()

    async def main() -> None:
        front = AsyncBatchingEngine(fake)
        front.stage_weights({"bad": np.zeros(1)}, version=1)
        await asyncio.sleep(0.05)  # failed while idle
        front.stage_weights({}, version=2)
        await asyncio.sleep(0.05)  # loaded while idle
        assert (await front.generate([1], SamplingParams())).version == 2
        front.stage_weights({"bad": np.zeros(1)}, version=3)
        await asyncio.sleep(0.05)
        front.stage_weights({}, version=4)  # staged with a request: loads before the batch
        assert (await front.generate([1], SamplingParams())).version == 4
        front.close()

    asyncio.run(main())


def test_async_engine_keeps_loop_free_and_reports_errors() -> None:
    async def main() -> None:
        front = AsyncBatchingEngine(FakeEngine(delay=0.2))
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await front.generate([1], SamplingParams())
        task.cancel()
        assert ticks >= 5
        front.close()
        with pytest.raises(RuntimeError, match="closed"):
            await front.generate([1], SamplingParams())

        broken = FakeEngine(fail=True)
        failing = AsyncBatchingEngine(broken)
        with pytest.raises(ValueError, match="boom"):
            await failing.generate([1], SamplingParams())
        broken.fail = False  # the engine recovers, so does the front
        assert (await failing.generate([1], SamplingParams())).token_ids == [1, 1]
        failing.close()

    asyncio.run(main())


def test_async_engine_close_fails_in_flight_requests() -> None:
    async def main() -> None:
        front = AsyncBatchingEngine(FakeEngine(delay=0.2))
        request = asyncio.ensure_future(front.generate([1], SamplingParams()))
        await asyncio.sleep(0.05)  # the batch is now running in the worker thread
        front.close()
        with pytest.raises(RuntimeError, match="closed"):
            await asyncio.wait_for(request, timeout=1.0)

    asyncio.run(main())


def test_async_engine_bad_staged_weights_fail_one_batch(engine: HFEngine) -> None:
    async def main() -> None:
        front = AsyncBatchingEngine(engine)
        params = SamplingParams(temperature=0.0, max_new_tokens=2)
        front.stage_weights({"nope": np.zeros(1)}, version=9)
        with pytest.raises(RuntimeError, match="unexpected"):
            await front.generate([5, 6], params)
        assert (await front.generate([5, 6], params)).version == engine.version != 9
        front.close()

    asyncio.run(main())


def test_async_engine_idle_and_new_loops(engine: HFEngine) -> None:
    front = AsyncBatchingEngine(engine)
    params = SamplingParams(temperature=0.0, max_new_tokens=4)

    async def one() -> Generation:
        gen = await front.generate([5, 6, 7], params)
        await asyncio.sleep(0.05)  # the idle batching task must not spin or block shutdown
        return gen

    first = asyncio.run(one())
    second = asyncio.run(one())  # a new event loop gets a new batching task
    assert first.token_ids == second.token_ids == engine.generate([[5, 6, 7]], params)[0].token_ids
    front.close()


def test_async_engine_with_hf_engine(engine: HFEngine) -> None:
    prompts = _prompts(24, seed=7)
    params = SamplingParams(temperature=0.0, max_new_tokens=6)

    async def main() -> list[Generation]:
        front = AsyncBatchingEngine(engine)
        gens = await asyncio.gather(*(front.generate(p, params) for p in prompts))
        assert front.pop_stats()["batches"] < len(prompts)
        front.close()
        return list(gens)

    gens = asyncio.run(main())
    assert [g.token_ids for g in gens] == [g.token_ids for g in engine.generate(prompts, params)]


def test_generation_uses_the_current_cache_argument_without_deprecation_warnings(engine: HFEngine) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # `past_key_values` is deprecated in transformers 5.24
        out = engine.generate([[5, 6, 7], [8, 9]], SamplingParams(1.0, 4, ()))
    assert len(out) == 2 and all(g.token_ids for g in out)


def _continue(prompts: list[list[int]], gens: list[Generation], seed: int) -> list[list[int]]:
    """Next-turn prompts: each prompt, the ids it sampled and a tool result of 1-5 ids."""
    rng = np.random.default_rng(seed)
    tails = [rng.integers(4, 300, size=int(rng.integers(1, 6))).tolist() for _ in prompts]
    return [p + g.token_ids + t for p, g, t in zip(prompts, gens, tails, strict=True)]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_later_turn_runs_only_its_new_ids_and_matches_a_full_forward(
    model_dir: Path, temperature: float
) -> None:
    full, reuse = HFEngine(model_dir, seed=3, prefix_cache_mb=0), HFEngine(model_dir, seed=3)
    params = SamplingParams(temperature=temperature, max_new_tokens=6)
    first = _prompts(5, seed=4)
    first[3] = list(first[1])  # a group's identical first turns are run once
    turns = [(engine, engine.generate(first, params)) for engine in (full, reuse)]
    assert reuse.pop_counters()["prefill_tokens"] == sum(len(p) for i, p in enumerate(first) if i != 3)
    second = _continue(first, turns[1][1], seed=5) + _prompts(1, seed=6)  # and one fresh prompt
    gens = reuse.generate(second, params)
    counters = reuse.pop_counters()
    fed = [len(p) + len(g.token_ids) - 1 for p, g in zip(first, turns[1][1], strict=True)]
    assert counters["reused_tokens"] == sum(fed)  # every episode's stored cache was used
    assert counters["prefill_tokens"] == sum(len(s) for s in second) - sum(fed)
    expected = _recomputed_logprobs(full, second, gens, temperature)
    for got, want in zip(gens, expected, strict=True):
        np.testing.assert_allclose(got.logprobs, want, atol=1e-4)
    if temperature == 0.0:
        baseline = full.generate(second, params)
        assert [g.token_ids for g in gens] == [g.token_ids for g in baseline]
        assert full.pop_counters()["reused_tokens"] == 0


def test_new_weights_clear_the_stored_caches(model_dir: Path) -> None:
    engine = HFEngine(model_dir, seed=0)
    prompts = _prompts(3, seed=7)
    gens = engine.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=5))
    assert len(engine.prefixes) == 3
    engine.load_weights(engine.state_dict(), version=1)
    assert len(engine.prefixes) == 0
    engine.generate(_continue(prompts, gens, seed=8), SamplingParams(temperature=1.0, max_new_tokens=5))
    assert engine.pop_counters()["reused_tokens"] == 0


def test_prefix_store_takes_the_longest_shorter_entry_once_and_evicts_the_oldest() -> None:
    kv = [(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1))]
    store = PrefixStore(capacity_mb=3 * 8 / 2**20)  # three entries of 8 bytes
    for ids in ((1, 2), (1, 2, 3), (1, 2, 3, 4), (9,)):  # the fourth evicts (1, 2)
        store.put(ids, kv)
    assert len(store) == 3
    assert store.take([1, 2, 3, 4])[0] == 3  # an entry must leave at least one id to run
    assert store.take([1, 2, 3, 4, 5])[0] == 4
    assert store.take([1, 2, 3, 4, 5])[0] == 0  # each entry serves one continuation
    assert store.take([1, 2, 7])[0] == 0  # (1, 2) was evicted
    store.put((5, 6), kv)
    store.put((5, 6), kv)  # two group-mates sampled the same turn: two continuations
    assert store.take([5, 6, 7])[0] == 2 and store.take([5, 6, 8])[0] == 2
    assert store.take([5, 6, 9])[0] == 0
    off = PrefixStore(capacity_mb=0)
    off.put((1, 2), kv)
    assert len(off) == 0


def test_rows_that_stop_early_and_are_pruned_keep_a_cache_their_next_turn_can_use(model_dir: Path) -> None:
    full, reuse = HFEngine(model_dir, seed=3, prefix_cache_mb=0), HFEngine(model_dir, seed=3)
    params = SamplingParams(temperature=1.0, max_new_tokens=8, stop_token_ids=tuple(range(4, 110)))
    first = _prompts(8, seed=12)
    gens = reuse.generate(first, params)
    assert len({len(g.token_ids) for g in gens}) > 2, "rows should stop at different lengths"
    second = _continue(first, gens, seed=13)
    reuse.pop_counters()
    later = reuse.generate(second, params)
    fed = [len(p) + len(g.token_ids) - 1 for p, g in zip(first, gens, strict=True)]
    assert reuse.pop_counters()["reused_tokens"] == sum(fed)
    for got, want in zip(later, _recomputed_logprobs(full, second, later, 1.0), strict=True):
        np.testing.assert_allclose(got.logprobs, want, atol=1e-4)


def test_a_failed_weights_load_still_drops_the_stored_caches(model_dir: Path) -> None:
    engine = HFEngine(model_dir, seed=0)
    engine.generate(_prompts(3, seed=14), SamplingParams(temperature=1.0, max_new_tokens=4))
    assert len(engine.prefixes) == 3
    with pytest.raises(RuntimeError, match="unexpected"):
        engine.load_weights({**engine.state_dict(), "extra.weight": torch.zeros(1)}, version=1)
    assert len(engine.prefixes) == 0  # the matching tensors were loaded before the error
