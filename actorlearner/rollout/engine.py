"""Generation engines: a batched, KV-cached Hugging Face engine and an asyncio batching front.

:class:`HFEngine` samples one turn for a batch of token-id prompts in one left-padded, KV-cached
loop over a ``transformers`` causal LM: plain multinomial sampling at the given temperature (no
top-k/top-p), greedy at temperature 0, per-sequence stop ids, and the behaviour logprob of every
sampled id. Finished sequences are dropped from the batch as it shrinks, so a long tail of
unfinished turns costs little.

:class:`AsyncBatchingEngine` lets many asyncio episodes share one engine: each ``await
generate(...)`` enqueues a request; one background task takes all pending requests, runs them as
one batch in a worker thread (the event loop stays free for tool calls) and applies staged
weights between batches.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer

from actorlearner.core.protocols import Engine, Generation, SamplingParams
from actorlearner.models.loading import load_model

T = TypeVar("T")


class _PreallocatedLayer(DynamicLayer):
    """A KV-cache layer that writes into buffers sized for the whole generation (no per-step cat)."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        b, h, _, _ = key_states.shape
        self._k = key_states.new_zeros((b, h, self.capacity, key_states.shape[-1]))
        self._v = value_states.new_zeros((b, h, self.capacity, value_states.shape[-1]))
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        self._k[:, :, self.length : self.length + n] = key_states
        self._v[:, :, self.length : self.length + n] = value_states
        self.length += n
        self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]


def _make_cache(model: PreTrainedModel, capacity: int) -> Cache:
    """A preallocated cache when every layer is plain full attention, else transformers' DynamicCache."""
    cache = DynamicCache(config=model.config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        return Cache(layers=[_PreallocatedLayer(capacity) for _ in cache.layers])
    return cache


class HFEngine:
    """Batched, KV-cached sampling with a ``transformers`` causal LM (implements ``Engine``).

    Args:
        model_path: A model directory written by ``save_pretrained`` (e.g. the tiny model).
        device: Device to run on.
        dtype: Parameter dtype.
        seed: Seed of the engine's sampling generator; the same calls give the same samples.
        prune_fraction: Finished sequences are dropped from the running batch once at most this
            fraction of its rows is still unfinished (dropping costs a copy of the KV cache).

    Attributes:
        model: The ``transformers`` model, in eval mode.
        version: Weights version recorded on every :class:`Generation`.
    """

    def __init__(
        self,
        model_path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        prune_fraction: float = 0.75,
    ) -> None:
        self.device = torch.device(device)
        self.model = load_model(model_path, self.device, dtype)
        self.version = 0
        self.prune_fraction = prune_fraction
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        # transformers >= 5.24 names the KV cache argument ``cache`` (``past_key_values`` warns and
        # goes in 5.40); a model whose forward predates it still takes ``past_key_values``.
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        pad = self.model.config.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's weights (the tensors themselves, not copies)."""
        return self.model.state_dict()

    def load_weights(self, weights: Mapping[str, torch.Tensor | np.ndarray], version: int) -> None:
        """Loads a full state dict (strict; a tied ``lm_head.weight`` may be left out).

        Args:
            weights: Parameter name to tensor or array.
            version: Weights version recorded on later generations.

        Raises:
            RuntimeError: On missing or unexpected keys, or shape mismatches.
        """
        state = {k: torch.as_tensor(v) for k, v in weights.items()}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        tied = set(getattr(self.model, "_tied_weights_keys", None) or ())
        missing = [k for k in missing if not (k in tied and self.model.config.tie_word_embeddings)]
        if missing or unexpected:
            raise RuntimeError(f"load_weights: missing keys {missing}, unexpected keys {unexpected}")
        self.version = int(version)

    def _left_pad(self, prompts: Sequence[Sequence[int]], capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and a mask buffer with room for ``capacity`` positions."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), capacity), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
            mask[i, width - len(p) : width] = 1
        return ids.to(self.device), mask.to(self.device)

    def _sample(self, logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampled ids and their log-probabilities under ``softmax(logits / temperature)``."""
        logits = logits.float()
        if temperature > 0:
            logp = torch.log_softmax(logits / temperature, dim=-1)
            ids = torch.multinomial(logp.exp(), 1, generator=self.generator).squeeze(1)
        else:
            logp = torch.log_softmax(logits, dim=-1)
            ids = logp.argmax(dim=-1)
        return ids, logp.gather(1, ids[:, None]).squeeze(1)

    def _prefill(
        self, prompts: Sequence[Sequence[int]], capacity: int
    ) -> tuple[torch.Tensor, Cache, torch.Tensor, torch.Tensor]:
        """Runs the left-padded prompts: last logits, the KV cache, the mask buffer, last positions."""
        width = max(len(p) for p in prompts)
        ids, mask = self._left_pad(prompts, capacity)
        position = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
        cache = _make_cache(self.model, capacity)
        out = self.model(
            input_ids=ids,
            attention_mask=mask[:, :width],
            position_ids=position,
            **{self._cache_kw: cache},
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1], cache, mask, position[:, -1]

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]:
        """Samples one turn per prompt as one batched, KV-cached generation.

        Args:
            prompts: Token ids of each prompt (non-empty).
            params: Temperature (0 = greedy), token cap and stop ids.

        Returns:
            One :class:`Generation` per prompt, in order.
        """
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("generate: every prompt needs at least one id")
        if params.max_new_tokens <= 0:
            return [Generation([], [], "length", self.version) for _ in prompts]
        batch, steps = len(prompts), params.max_new_tokens
        width = max(len(p) for p in prompts)
        logits, cache, mask, position = self._prefill(prompts, width + steps)
        stop = torch.tensor(sorted(set(params.stop_token_ids)), dtype=torch.long, device=self.device)
        tokens = torch.full((batch, steps), self.pad_token_id, dtype=torch.long, device=self.device)
        logprobs = torch.zeros((batch, steps), dtype=torch.float32, device=self.device)
        lengths = torch.full((batch,), steps, dtype=torch.long, device=self.device)
        rows = torch.arange(batch, device=self.device)  # running row -> original index
        alive = torch.ones(batch, dtype=torch.bool, device=self.device)
        for t in range(steps):
            new, logp = self._sample(logits, params.temperature)
            tokens[rows, t] = new
            logprobs[rows, t] = logp
            done = alive & torch.isin(new, stop)
            lengths[rows[done]] = t + 1
            alive &= ~done
            num_alive = int(alive.sum())
            if num_alive == 0 or t + 1 == steps:
                break
            if num_alive <= self.prune_fraction * rows.numel():
                # Finished rows otherwise keep running (their outputs ignored) until the next prune.
                keep = alive.nonzero().squeeze(1)
                rows, new, alive, mask, position = (
                    rows[keep],
                    new[keep],
                    alive[keep],
                    mask[keep],
                    position[keep],
                )
                cache.batch_select_indices(keep)
            mask[:, width + t] = 1
            position = position + 1
            out = self.model(
                input_ids=new[:, None],
                attention_mask=mask[:, : width + t + 1],
                position_ids=position[:, None],
                **{self._cache_kw: cache},
                use_cache=True,
            )
            logits = out.logits[:, -1]
        return self._collect(tokens, logprobs, lengths, params)

    def _collect(
        self, tokens: torch.Tensor, logprobs: torch.Tensor, lengths: torch.Tensor, params: SamplingParams
    ) -> list[Generation]:
        stop = set(params.stop_token_ids)
        results = []
        for toks, lps, n in zip(tokens.tolist(), logprobs.tolist(), lengths.tolist(), strict=True):
            toks, lps = toks[:n], lps[:n]
            reason = "stop" if toks and toks[-1] in stop else "length"
            results.append(Generation(toks, lps, reason, self.version))
        return results


class AsyncBatchingEngine:
    """Batches the ``generate`` calls of many concurrent asyncio episodes onto one engine.

    Each call enqueues a request and awaits its future. A background task (started on first use,
    in the running loop) repeatedly takes all pending requests, groups them by identical sampling
    params, and runs each group as one ``engine.generate`` call in a worker thread. Staged weights
    are loaded between batches, never during one. Idle, the task waits on an event.

    Batching window: once a request arrives, the task keeps collecting while more requests keep
    arriving (a gap of ``quiet_s`` ends it) for at most ``max_wait_s``, so that episodes returning
    from their tool calls at slightly different times share one batch instead of many small ones
    (each decode step costs about the same for 10 rows or 256 on CPU).

    Args:
        engine: The wrapped engine (e.g. :class:`HFEngine`).
        max_batch_size: Largest batch per ``engine.generate`` call (None = unbounded).
        max_wait_s: Longest time a request waits for others to join its batch (0 disables).
        quiet_s: A gap this long without a new request closes the batch early.
    """

    def __init__(
        self,
        engine: Engine,
        max_batch_size: int | None = None,
        max_wait_s: float = 0.05,
        quiet_s: float = 0.003,
    ) -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.quiet_s = quiet_s
        # Its own thread: generation never queues behind env steps (tool calls) in the default pool.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._pending: list[tuple[list[int], SamplingParams, bool, asyncio.Future[Generation]]] = []
        self._staged: tuple[Mapping[str, Any], int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._reset_stats()

    @property
    def version(self) -> int:
        """Version of the weights the next batch will use (staged weights included)."""
        return self._staged[1] if self._staged is not None else self.engine.version

    def stage_weights(self, weights: Mapping[str, Any], version: int) -> None:
        """Stages weights to load before the next batch (a later call replaces an unapplied one)."""
        self._staged = (weights, version)

    async def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams, count: bool = True
    ) -> Generation:
        """Samples one turn for one prompt, batched with the other pending requests.

        Args:
            prompt_ids: The episode's ids so far.
            params: Sampling params; requests with equal params share a batch.
            count: Whether the request counts in :meth:`pop_stats` (evaluation turns do not, so
                that ``rollout/*`` throughput describes training rollouts only).

        Returns:
            The sampled turn.
        """
        if self._closed:
            raise RuntimeError("AsyncBatchingEngine is closed")
        loop = asyncio.get_running_loop()
        self._ensure_task(loop)
        future: asyncio.Future[Generation] = loop.create_future()
        self._pending.append((list(prompt_ids), params, count, future))
        assert self._wakeup is not None
        self._wakeup.set()
        return await future

    def _ensure_task(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is not None and not self._task.done() and self._loop is loop:
            return
        # First use, or a new event loop: requests of a dead loop can never be served.
        self._fail_pending(RuntimeError("the event loop of the request is gone"))
        self._loop, self._wakeup = loop, asyncio.Event()
        self._task = loop.create_task(self._run(), name="AsyncBatchingEngine")

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await asyncio.sleep(0)  # let requests scheduled in the same tick join the batch
            await self._collect()
            requests, self._pending = self._pending, []
            try:
                await self._serve(requests)
            except asyncio.CancelledError:
                self._fail(requests, RuntimeError("AsyncBatchingEngine closed"))
                raise
            except Exception as exc:  # e.g. staged weights that do not load: fail this batch, go on
                self._fail(requests, exc)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _collect(self) -> None:
        """Waits while requests keep arriving, up to ``max_wait_s``."""
        if self.max_wait_s <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        seen = -1
        while len(self._pending) != seen and loop.time() < deadline:
            seen = len(self._pending)
            await asyncio.sleep(self.quiet_s)
        self._wakeup.clear()  # type: ignore[union-attr]

    async def _serve(
        self, requests: list[tuple[list[int], SamplingParams, bool, asyncio.Future[Generation]]]
    ) -> None:
        if self._staged is not None:
            weights, version = self._staged
            self._staged = None
            await self._in_thread(self.engine.load_weights, weights, version)
        groups: dict[tuple[SamplingParams, bool], list[tuple[list[int], asyncio.Future[Generation]]]] = {}
        for ids, params, count, future in requests:
            if not future.done():
                groups.setdefault((params, count), []).append((ids, future))
        for (params, count), items in groups.items():
            size = self.max_batch_size or len(items)
            for start in range(0, len(items), size):
                await self._run_batch(items[start : start + size], params, count)

    async def _run_batch(
        self, items: list[tuple[list[int], asyncio.Future[Generation]]], params: SamplingParams, count: bool
    ) -> None:
        start = time.perf_counter()
        try:
            gens = await self._in_thread(self.engine.generate, [ids for ids, _ in items], params)
        except Exception as exc:
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        if count:
            self._seconds += time.perf_counter() - start
            self._batches += 1
            self._requests += len(items)
            self._tokens += sum(len(g.token_ids) for g in gens)
        for (_, future), gen in zip(items, gens, strict=True):
            if not future.done():
                future.set_result(gen)

    @staticmethod
    def _fail(
        requests: list[tuple[list[int], SamplingParams, bool, asyncio.Future[Generation]]], exc: BaseException
    ) -> None:
        for *_, future in requests:
            if not future.done() and not future.get_loop().is_closed():
                future.set_exception(exc)

    def _fail_pending(self, exc: BaseException) -> None:
        requests, self._pending = self._pending, []
        self._fail(requests, exc)

    def _reset_stats(self) -> None:
        self._tokens = 0
        self._seconds = 0.0
        self._batches = 0
        self._requests = 0

    def pop_stats(self) -> dict[str, float]:
        """Counters since the last call, then resets them.

        Returns:
            ``tokens`` generated, ``seconds`` spent in ``engine.generate``, ``batches`` run,
            ``requests`` served, ``mean_batch_size`` (requests per batch) and ``tokens_per_s``.
        """
        stats = {
            "tokens": float(self._tokens),
            "seconds": self._seconds,
            "batches": float(self._batches),
            "requests": float(self._requests),
            "mean_batch_size": self._requests / self._batches if self._batches else 0.0,
            "tokens_per_s": self._tokens / self._seconds if self._seconds > 0 else 0.0,
        }
        self._reset_stats()
        return stats

    def close(self) -> None:
        """Stops the background task and fails pending requests; later ``generate`` calls raise."""
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
        self._fail_pending(RuntimeError("AsyncBatchingEngine closed"))
        self._executor.shutdown(wait=False, cancel_futures=True)
