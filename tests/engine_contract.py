"""Checks every engine must pass (the hf engine's tests and the vllm suite share them)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from actorlearner.core.protocols import Engine, Generation, SamplingParams


def random_prompts(n: int, seed: int = 0, lo: int = 3, hi: int = 25) -> list[list[int]]:
    """``n`` prompts of ``lo``..``hi`` random ids in 4..299."""
    rng = np.random.default_rng(seed)
    return [rng.integers(4, 300, size=int(rng.integers(lo, hi))).tolist() for _ in range(n)]


def check_generate_shapes(engine: Engine, n: int = 6, new: int = 7) -> list[Generation]:
    """Sampled turns without stop ids run to ``max_new_tokens``, with a logprob per id and the version."""
    gens = engine.generate(random_prompts(n), SamplingParams(temperature=1.0, max_new_tokens=new))
    assert len(gens) == n
    for g in gens:
        assert len(g.token_ids) == len(g.logprobs) == new
        assert g.finish_reason == "length" and g.version == engine.version
        assert all(lp <= 0.0 for lp in g.logprobs)
    return gens


def check_stops_at_stop_ids(engine: Engine, tolerance: float) -> Sequence[Generation]:
    """A stop id ends a greedy turn and is kept as its last id; the ids before it are unchanged."""
    prompts = random_prompts(8, seed=1)
    free = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=6))
    stop = free[0].token_ids[2]
    stopped = engine.generate(
        prompts, SamplingParams(temperature=0.0, max_new_tokens=6, stop_token_ids=(stop,))
    )
    for f, s in zip(free, stopped, strict=True):
        if stop in f.token_ids:
            cut = f.token_ids.index(stop) + 1
            assert s.token_ids == f.token_ids[:cut] and s.finish_reason == "stop"
            assert s.logprobs == pytest.approx(f.logprobs[:cut], abs=tolerance)
        else:
            assert s.token_ids == f.token_ids and s.finish_reason == "length"
    assert len(stopped[0].token_ids) <= 3
    return stopped
