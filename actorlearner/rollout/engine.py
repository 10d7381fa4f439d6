"""Generation engines: a batched, KV-cached Hugging Face engine and an asyncio batching front.

:class:`HFEngine` samples one turn for a batch of token-id prompts in one left-padded, KV-cached
loop over a ``transformers`` causal LM: plain multinomial sampling at the given temperature (no
top-k/top-p), greedy at temperature 0, per-sequence stop ids, and the behaviour logprob of every
sampled id. Finished sequences are dropped from the batch as it shrinks, so a long tail of
unfinished turns costs little. Identical prompts in a batch (a group's first turn) are run once,
and the KV cache of each finished turn is kept (:class:`PrefixStore`) so that the episode's next
turn runs only its new ids (the tool result and the turn header), not the whole context again.

:class:`AsyncBatchingEngine` lets many asyncio episodes share one engine: each ``await
generate(...)`` enqueues a request; one background task takes all pending requests, runs them as
one batch in a worker thread (the event loop stays free for tool calls) and applies staged
weights between batches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer

from actorlearner.core.heap import release_free_heap
from actorlearner.core.protocols import Engine, Generation, SamplingParams
from actorlearner.models.loading import cache_keyword, load_model, weight_tensors

logger = logging.getLogger(__name__)

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

    def preload(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Starts the buffers with ``[batch, heads, length, dim]`` keys and values already in place."""
        self.lazy_initialization(keys, values)
        self.length = keys.shape[-2]
        self._k[:, :, : self.length] = keys
        self._v[:, :, : self.length] = values
        self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]

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


LayerKV = list[tuple[torch.Tensor, torch.Tensor]]
"""One sequence's keys and values, ``([heads, length, dim], [heads, length, dim])`` per layer."""


def _nbytes(layers: LayerKV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)


@dataclass
class _Running:
    """A batched generation between decoding steps.

    Attributes:
        logits: Next-id logits of each running row.
        cache: The KV cache of the running rows.
        mask: 1 on each row's real positions, with room for every step.
        position: Position of each row's last fed id.
        width: Columns the prefill filled (stored prefix and prompt).
    """

    logits: torch.Tensor
    cache: Cache
    mask: torch.Tensor
    position: torch.Tensor
    width: int

    def select(self, keep: torch.Tensor) -> None:
        """Keeps only the running rows ``keep``."""
        self.logits, self.mask, self.position = self.logits[keep], self.mask[keep], self.position[keep]
        self.cache.batch_select_indices(keep)


def _preallocated(cache: Cache) -> list[_PreallocatedLayer]:
    """The cache's layers, which prefix reuse needs preallocated (the engine checks at start)."""
    layers = [layer for layer in cache.layers if isinstance(layer, _PreallocatedLayer)]
    assert len(layers) == len(cache.layers), "prefix reuse needs a preallocated cache"
    return layers


def _preload(cache: Cache, stored: Sequence[LayerKV | None], length: int) -> None:
    """Puts each row's stored keys and values right-aligned in the cache's first ``length`` columns."""
    first = next(layers for layers in stored if layers is not None)
    for index, layer in enumerate(_preallocated(cache)):
        k0, v0 = first[index]
        keys = k0.new_zeros((len(stored), k0.shape[0], length, k0.shape[2]))
        values = v0.new_zeros((len(stored), v0.shape[0], length, v0.shape[2]))
        for row, layers in enumerate(stored):
            if layers is not None:
                k, v = layers[index]
                keys[row, :, length - k.shape[1] :] = k
                values[row, :, length - v.shape[1] :] = v
        layer.preload(keys, values)


class PrefixStore:
    """The KV caches of recently finished turns, found again by the ids they were computed for.

    An episode's next prompt is its last prompt, the ids the model sampled and the tool result, so
    the longest stored sequence that begins it covers all but the new ids. An entry is used once
    (an episode continues once), the least recently stored go first, and new weights clear the
    store: keys and values computed with old weights would mix two policies in one turn.

    Args:
        capacity_mb: Memory the kept keys and values may take, in MiB (0 keeps none).
    """

    def __init__(self, capacity_mb: float) -> None:
        self.capacity = int(capacity_mb * 2**20)
        self.nbytes = 0
        self._entries: OrderedDict[tuple[int, ...], tuple[LayerKV, int]] = OrderedDict()
        self._lengths: Counter[int] = Counter()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, ids: tuple[int, ...], layers: LayerKV) -> None:
        """Stores the keys and values of ``ids`` (evicting the oldest entry when full).

        The same ids stored again (group-mates that sampled the same turn) serve one more take.
        """
        if ids in self._entries:
            kept, uses = self._entries.pop(ids)
            self._entries[ids] = (kept, uses + 1)
            return
        size = _nbytes(layers)
        if not ids or size > self.capacity:
            return
        while self.nbytes + size > self.capacity:
            old, (old_layers, _) = self._entries.popitem(last=False)
            self._forget(len(old), old_layers)
        self._entries[ids] = (layers, 1)
        self._lengths[len(ids)] += 1
        self.nbytes += size

    def take(self, prompt: Sequence[int]) -> tuple[int, LayerKV | None]:
        """Takes the longest stored sequence that begins ``prompt`` and is shorter (one use of it).

        Returns:
            ``(length, layers)``, or ``(0, None)`` when nothing stored begins the prompt.
        """
        for length in sorted((n for n in self._lengths if n < len(prompt)), reverse=True):
            key = tuple(prompt[:length])
            entry = self._entries.get(key)
            if entry is not None:
                layers, uses = entry
                if uses > 1:
                    self._entries[key] = (layers, uses - 1)
                else:
                    del self._entries[key]
                    self._forget(length, layers)
                return length, layers
        return 0, None

    def clear(self) -> None:
        """Forgets every entry."""
        self._entries.clear()
        self._lengths.clear()
        self.nbytes = 0

    def _forget(self, length: int, layers: LayerKV) -> None:
        self.nbytes -= _nbytes(layers)
        self._lengths[length] -= 1
        if self._lengths[length] <= 0:
            del self._lengths[length]


class HFEngine:
    """Batched, KV-cached sampling with a ``transformers`` causal LM (implements ``Engine``).

    Args:
        model_path: A model directory written by ``save_pretrained`` (e.g. the tiny model).
        device: Device to run on.
        dtype: Parameter dtype.
        seed: Seed of the engine's sampling generator; the same calls give the same samples.
        prune_fraction: Finished sequences are dropped from the running batch once at most this
            fraction of its rows is still unfinished (dropping costs a copy of the KV cache).
        prefix_cache_mb: Memory for the KV caches of finished turns, kept for their episodes'
            next turns (:class:`PrefixStore`; 0: every turn runs its whole context). Models with
            other than plain full attention keep none.
        trim_heap_s: After loading weights, hand the memory past batches left free in the C heaps
            back to the system if this many seconds have passed since the last time
            (:func:`~actorlearner.core.heap.release_free_heap`; 0: never), so that memory a
            past peak of work left free does not stay with the runner (docs/faults.md, "Memory
            over long runs").

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
        prefix_cache_mb: float = 256.0,
        trim_heap_s: float = 30.0,
    ) -> None:
        self.device = torch.device(device)
        self.trim_heap_s = float(trim_heap_s)
        self._trimmed_at = time.monotonic()
        self.model = load_model(model_path, self.device, dtype)
        self.version = 0
        self.prune_fraction = prune_fraction
        probe = _make_cache(self.model, 1)
        reusable = all(isinstance(layer, _PreallocatedLayer) for layer in probe.layers)
        self.prefixes = PrefixStore(prefix_cache_mb if reusable else 0)
        self.counters: Counter[str] = Counter()
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._cache_kw = cache_keyword(self.model)
        pad = self.model.config.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else 0

    def get_state(self) -> dict[str, Any]:
        """The sampling generator's state (a checkpoint's; the weights are the learner's)."""
        return {"generator": self.generator.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`get_state` returned."""
        self.generator.set_state(state["generator"])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's weights (the tensors themselves, not copies)."""
        return self.model.state_dict()

    def load_weights(self, weights: Mapping[str, torch.Tensor | np.ndarray], version: int) -> None:
        """Loads a full state dict (strict; a tied ``lm_head.weight`` may be left out).

        The given values become the model's parameters (``load_state_dict(assign=True)``), so the
        old parameters are never written in place: numpy arrays of the model's dtype on a CPU model
        (what the learner publishes) without a copy (on Ray, read-only views of the object store,
        which the runners of a node then share; generation only reads them); anything else as a
        converted copy, so a caller's tensors never alias the model. Then, at most every
        ``trim_heap_s``, the C heaps' free memory goes back to the system.

        Args:
            weights: Parameter name to tensor or array.
            version: Weights version recorded on later generations.

        Raises:
            RuntimeError: On missing or unexpected keys, or shape mismatches.
        """
        self.prefixes.clear()  # keys and values of the old weights (cleared first: a failed load is partial)
        current = self.model.state_dict()
        arrays = dict(weights.items())
        tensors = weight_tensors(arrays)  # views, all at once
        state = {k: self._owned(arrays[k], t, current.get(k)) for k, t in tensors.items()}
        missing, unexpected = self.model.load_state_dict(state, strict=False, assign=True)
        if self.model.config.tie_word_embeddings:
            self.model.tie_weights()  # an assigned embedding: the output head points at it again
        tied = set(getattr(self.model, "_tied_weights_keys", None) or ())
        missing = [k for k in missing if not (k in tied and self.model.config.tie_word_embeddings)]
        if missing or unexpected:
            raise RuntimeError(f"load_weights: missing keys {missing}, unexpected keys {unexpected}")
        self.version = int(version)
        self._maybe_trim_heap()

    def _maybe_trim_heap(self) -> None:
        now = time.monotonic()
        if self.trim_heap_s > 0 and now - self._trimmed_at >= self.trim_heap_s:
            self._trimmed_at = now
            release_free_heap()

    def _owned(self, value: object, tensor: torch.Tensor, like: torch.Tensor | None) -> torch.Tensor:
        """``tensor`` (a view of ``value``) as a parameter: itself when it fits, else a converted copy."""
        if like is None:
            return tensor  # an unexpected key: load_state_dict reports it
        fits = isinstance(value, np.ndarray) and tensor.dtype == like.dtype and like.device.type == "cpu"
        return tensor if fits else tensor.to(device=like.device, dtype=like.dtype, copy=True)

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

    def _prefill(self, prompts: Sequence[Sequence[int]], steps: int) -> _Running:
        """Runs the prompts' new ids on top of any stored prefix: the state decoding starts from.

        Identical prompts (a group's first turn) are run once and their cache rows repeated. Each
        distinct prompt takes its longest stored prefix from :attr:`prefixes`; the cache holds the
        stored keys right-aligned before the new ids, which are left-padded, and the attention
        mask covers the gap, so rows with different stored lengths share one pass.
        """
        distinct: dict[tuple[int, ...], int] = {}
        inverse = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
        unique = list(distinct)
        stored = [self.prefixes.take(p) for p in unique]
        cached = max(n for n, _ in stored)
        new = [len(p) - n for p, (n, _) in zip(unique, stored, strict=True)]
        width = cached + max(new)
        ids = torch.full((len(unique), max(new)), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(unique), width + steps), dtype=torch.long)
        for i, (p, (n, _)) in enumerate(zip(unique, stored, strict=True)):
            ids[i, ids.shape[1] - new[i] :] = torch.as_tensor(p[n:], dtype=torch.long)
            mask[i, cached - n : cached] = 1
            mask[i, width - new[i] : width] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        position = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
        cache = _make_cache(self.model, width + steps)
        if cached:
            _preload(cache, [layers for _, layers in stored], cached)
        out = self.model(
            input_ids=ids,
            attention_mask=mask[:, :width],
            position_ids=position[:, cached:],
            **{self._cache_kw: cache},
            use_cache=True,
            logits_to_keep=1,
        )
        self.counters["prefill_tokens"] += sum(new)
        self.counters["reused_tokens"] += sum(n for n, _ in stored)
        logits = out.logits[:, -1]
        if len(unique) < len(prompts):
            rows = torch.tensor(inverse, device=self.device)
            cache.batch_select_indices(rows)
            logits, mask, position = logits[rows], mask[rows], position[rows]
        return _Running(logits, cache, mask, position[:, -1], width)

    def _store(
        self,
        run: _Running,
        rows: torch.Tensor,
        keep: torch.Tensor,
        prompts: Sequence[Sequence[int]],
        tokens: torch.Tensor,
        lengths: torch.Tensor,
    ) -> None:
        """Keeps the keys and values of the running rows ``keep`` for their episodes' next turns.

        A row's entry covers its prompt and the ids it was fed: all it sampled but the last.
        """
        if self.prefixes.capacity <= 0:
            return
        layers = _preallocated(run.cache)
        for r in keep.tolist():
            i = int(rows[r])
            fed = int(lengths[i]) - 1
            cols = torch.cat(
                [
                    run.mask[r, : run.width].nonzero().squeeze(1),
                    torch.arange(run.width, run.width + fed, device=self.device),
                ]
            )
            kv = [(layer._k[r][:, cols], layer._v[r][:, cols]) for layer in layers]
            self.prefixes.put((*prompts[i], *tokens[i, :fed].tolist()), kv)

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
        run = self._prefill(prompts, params.max_new_tokens)
        tokens, logprobs, lengths = self._decode(run, prompts, params)
        return self._collect(tokens, logprobs, lengths, params)

    def _decode(
        self, run: _Running, prompts: Sequence[Sequence[int]], params: SamplingParams
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Samples up to ``max_new_tokens`` ids per row; returns the ids, their log-probs, the lengths."""
        batch, steps = len(prompts), params.max_new_tokens
        stop = torch.tensor(sorted(set(params.stop_token_ids)), dtype=torch.long, device=self.device)
        tokens = torch.full((batch, steps), self.pad_token_id, dtype=torch.long, device=self.device)
        logprobs = torch.zeros((batch, steps), dtype=torch.float32, device=self.device)
        lengths = torch.full((batch,), steps, dtype=torch.long, device=self.device)
        rows = torch.arange(batch, device=self.device)  # running row -> original index
        alive = torch.ones(batch, dtype=torch.bool, device=self.device)
        for t in range(steps):
            new, logp = self._sample(run.logits, params.temperature)
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
                self._store(run, rows, (~alive).nonzero().squeeze(1), prompts, tokens, lengths)
                keep = alive.nonzero().squeeze(1)
                rows, new, alive = rows[keep], new[keep], alive[keep]
                run.select(keep)
            self._feed(run, new, t)
        self._store(run, rows, torch.arange(rows.numel(), device=self.device), prompts, tokens, lengths)
        return tokens, logprobs, lengths

    def _feed(self, run: _Running, new: torch.Tensor, t: int) -> None:
        """Runs the ids sampled at step ``t``; ``run.logits`` become the next step's."""
        run.mask[:, run.width + t] = 1
        run.position = run.position + 1
        out = self.model(
            input_ids=new[:, None],
            attention_mask=run.mask[:, : run.width + t + 1],
            position_ids=run.position[:, None],
            **{self._cache_kw: run.cache},
            use_cache=True,
        )
        run.logits = out.logits[:, -1]

    def pop_counters(self) -> dict[str, float]:
        """Counts since the last call: prompt ids run and ids whose keys came from stored caches.

        Returns:
            ``prefill_tokens`` and ``reused_tokens``.
        """
        counters = {k: float(self.counters[k]) for k in ("prefill_tokens", "reused_tokens")}
        self.counters.clear()
        return counters

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
    are loaded between batches, never during one, and at once when no request is pending (so the
    next batch does not wait for them). Idle, the task waits on an event.

    Batching window: once a request arrives, the task keeps collecting while more requests keep
    arriving (a gap of ``quiet_s`` ends it) for at most ``max_wait_s``, so that episodes returning
    from their tool calls at slightly different times share one batch instead of many small ones
    (each decode step costs about the same for 10 rows or 256 on CPU).

    Lockstep (``lockstep=True``, ``debugging.deterministic``): batches do not depend on timing.
    Callers :meth:`join` the episodes they launch and each :meth:`leave` s when it ends; a batch
    waits until every joined episode has its request pending and runs its rows sorted by ids. The
    rows, their order and so the draws of the sampling generator are then the same in every run
    (identical rows are interchangeable: equal contexts, equal distributions).

    Args:
        engine: The wrapped engine (e.g. :class:`HFEngine`).
        max_batch_size: Largest batch per ``engine.generate`` call (None = unbounded).
        max_wait_s: Longest time a request waits for others to join its batch (0 disables).
        quiet_s: A gap this long without a new request closes the batch early.
        lockstep: Form batches by :meth:`join`/:meth:`leave` instead of a time window.
    """

    def __init__(
        self,
        engine: Engine,
        max_batch_size: int | None = None,
        max_wait_s: float = 0.05,
        quiet_s: float = 0.003,
        lockstep: bool = False,
    ) -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.quiet_s = quiet_s
        self.lockstep = lockstep
        self._joined = 0
        # Its own thread: generation never queues behind env steps (tool calls) in the default pool.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._pending: list[tuple[list[int], SamplingParams, bool, asyncio.Future[Generation]]] = []
        self._staged: tuple[Mapping[str, Any], int] | None = None
        self.loaded_at: float | None = None  # time.perf_counter() when staged weights last loaded
        self._load_error: Exception | None = None
        self._loading: int | None = None  # the version being loaded in the engine's thread
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._reset_stats()

    @property
    def version(self) -> int:
        """Version of the weights the next batch will use (staged weights included)."""
        if self._staged is not None:
            return self._staged[1]
        return self._loading if self._loading is not None else self.engine.version

    def join(self, episodes: int) -> None:
        """Lockstep: the next batches wait for ``episodes`` more episodes until each :meth:`leave` s."""
        self._joined += episodes

    def leave(self) -> None:
        """Lockstep: an episode that joined has ended (or failed); batches stop waiting for it."""
        self._joined -= 1
        if self.lockstep and self._wakeup is not None:
            self._wakeup.set()

    def stage_weights(self, weights: Mapping[str, Any], version: int) -> None:
        """Stages weights to load before the next batch (a later call replaces an unapplied one).

        Called in a running event loop, the batching task wakes and loads them at once if no
        request is pending; otherwise they load before the next batch.
        """
        self._staged = (weights, version)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): the next batch loads them
        if not self._closed:
            self._ensure_task(loop)
            assert self._wakeup is not None
            self._wakeup.set()

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
            if not self._pending and self._staged is not None:
                await self._load_idle()
                continue
            if self.lockstep:
                # A cancelled episode has left: its request must not count for it.
                self._pending = [r for r in self._pending if not r[3].done()]
                if not self._pending or len(self._pending) < self._joined:
                    continue  # a joined episode is still in an env step: its request decides
                self._pending.sort(key=lambda request: request[0])
            else:
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
            await self._load_staged()
        if self._load_error is not None:  # weights that failed to load while idle fail this batch
            error, self._load_error = self._load_error, None
            raise error
        groups: dict[tuple[SamplingParams, bool], list[tuple[list[int], asyncio.Future[Generation]]]] = {}
        for ids, params, count, future in requests:
            if not future.done():
                groups.setdefault((params, count), []).append((ids, future))
        for (params, count), items in groups.items():
            size = self.max_batch_size or len(items)
            for start in range(0, len(items), size):
                await self._run_batch(items[start : start + size], params, count)

    async def _load_idle(self) -> None:
        """Loads the staged weights now; a failure is kept for the next batch to raise."""
        try:
            await self._load_staged()
        except Exception as exc:
            logger.warning("AsyncBatchingEngine: staged weights did not load", exc_info=exc)
            self._load_error = exc

    async def _load_staged(self) -> None:
        """Loads the staged weights in the engine's thread (a failure propagates to the caller)."""
        assert self._staged is not None
        weights, version = self._staged
        self._staged, self._loading = None, version
        self._load_error = None  # these weights replace any that failed to load before
        try:
            await self._in_thread(self.engine.load_weights, weights, version)
        finally:
            self._loading = None
        self.loaded_at = time.perf_counter()

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
        pop_counters = getattr(self.engine, "pop_counters", None)
        engine_counters = pop_counters() if pop_counters is not None else {}  # HFEngine's prefill
        if count:
            self._seconds += time.perf_counter() - start
            self._batches += 1
            self._requests += len(items)
            self._tokens += sum(len(g.token_ids) for g in gens)
            self._engine_counters.update(engine_counters)
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
        self._engine_counters: Counter[str] = Counter()
        self._tokens = 0
        self._seconds = 0.0
        self._batches = 0
        self._requests = 0

    def pop_stats(self) -> dict[str, float]:
        """Counters since the last call, then resets them.

        Returns:
            ``tokens`` generated, ``seconds`` spent in ``engine.generate``, ``batches`` run,
            ``requests`` served, ``mean_batch_size`` (requests per batch) and ``tokens_per_s``;
            and what the engine's ``pop_counters`` adds (HFEngine: ``prefill_tokens`` run,
            ``reused_tokens`` taken from stored caches).
        """
        stats = {
            "tokens": float(self._tokens),
            "seconds": self._seconds,
            "batches": float(self._batches),
            "requests": float(self._requests),
            "mean_batch_size": self._requests / self._batches if self._batches else 0.0,
            "tokens_per_s": self._tokens / self._seconds if self._seconds > 0 else 0.0,
        }
        stats.update(self._engine_counters)
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
