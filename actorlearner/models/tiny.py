"""The embedded default model: a tiny Qwen2-style causal LM with a word-level tokenizer, built locally.

Nothing is downloaded. :func:`build_tiny_model` writes a model directory with ``save_pretrained`` and
:func:`~actorlearner.models.loading.load_model_and_tokenizer` reads it back with ``AutoTokenizer`` /
``AutoModelForCausalLM``, the same path a user's own model directory takes.

The tokenizer is word level in effect (docs/calibration.md): every digit, operator, whitespace character
and tag is one token, and each letter run ("word") seen in a corpus is one token. It is stored as a
byte-level BPE whose merges only spell those words, because ``AutoTokenizer`` loads every ``qwen2``
model directory as ``Qwen2Tokenizer``, which rebuilds a byte-level BPE from ``tokenizer.json`` (a
WordLevel model would be silently mangled). ``decode(encode(s)) == s`` holds exactly for any ASCII
(indeed any NFC) string; text outside the corpus words is spelled byte by byte.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from actorlearner.models.loading import quiet_progress

QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
"""Qwen2's pre-tokenizer split (as in ``transformers.models.qwen2.tokenization_qwen2``)."""

FORMAT_VERSION = 1
"""Bumped whenever the tokenizer or model layout changes, so cached models are rebuilt."""

UNK, PAD, IM_START, IM_END = "<unk>", "<|pad|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (UNK, PAD, IM_START, IM_END)
"""Special tokens; ``<|im_end|>`` is the end of a turn and the eos token."""

TAG_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<answer>",
    "</answer>",
    "<tool_response>",
    "</tool_response>",
)
"""Tags of the tool-call format, one token each (not special: they survive ``skip_special_tokens``)."""

JSON_TOKENS = ('{"name": "', '", "arguments": {', '"}}', '": "', '", "')
"""JSON phrases of a tool call, one token each, so that a call is ~16 tokens."""

TEMPLATE_WORDS = ("Tools", "system", "user", "assistant", "tool")
"""Words the chat template writes; always in the vocabulary."""

CHAT_TEMPLATE = (
    "{%- set ns = namespace(start=0) -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages and messages[0].role == 'system' -%}"
    "{{- (messages[0].content or '') ~ '\\n' -}}{%- set ns.start = 1 -%}"
    "{%- endif -%}"
    "{{- 'Tools: ' -}}"
    "{%- for tool in tools -%}"
    "{%- set fn = tool.function if tool.function is defined else tool -%}"
    "{{- fn.name -}}{%- if not loop.last -%}{{- ', ' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages[ns.start:] -%}"
    "{%- if message.role == 'tool' -%}"
    "{{- '<|im_start|>tool\\n<tool_response>' ~ (message.content or '') ~ '</tool_response><|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' ~ message.role ~ '\\n' ~ (message.content or '') -}}"
    "{%- for call in (message.tool_calls or []) -%}"
    "{%- set fn = call.function if call.function is defined else call -%}"
    "{%- set args = fn.arguments if fn.arguments is string else (fn.arguments or {}) | tojson -%}"
    "{{- '<tool_call>{\"name\": \"' ~ fn.name ~ '\", \"arguments\": ' ~ args ~ '}</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
"""ChatML with compact tools: a system line ``Tools: name, name`` (names only, no JSON schemas); tool
results are wrapped in ``<tool_response>...</tool_response>`` in a ``tool`` turn."""

_WORD = re.compile(r"[A-Za-z]+")


def corpus_words(corpus: Iterable[str]) -> list[str]:
    """The vocabulary words of a corpus: its letter runs of two or more letters, tags left out, sorted.

    Args:
        corpus: Texts the tokenizer must cover.

    Returns:
        Sorted distinct words, the chat template's words included.
    """
    words = set(TEMPLATE_WORDS)
    for text in corpus:
        for token in (*SPECIAL_TOKENS, *TAG_TOKENS):
            text = text.replace(token, " ")
        words.update(w for w in _WORD.findall(text) if len(w) > 1)
    return sorted(words)


def _bpe(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """A byte-level BPE laid out exactly as transformers' ``Qwen2Tokenizer`` rebuilds it on load."""
    backend = Tokenizer(
        models.BPE(
            vocab=dict(vocab), merges=list(merges), unk_token=None, fuse_unk=False, byte_fallback=False
        )
    )
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def _word_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges: the 256 byte symbols, then each word built by left-to-right merges.

    Longer words get the lower merge ranks; a word that still splits (a shorter word's merge fired
    inside it) gets extra merges of its pieces at the end, which cannot change any word that is
    already one token.
    """
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for sym in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(sym, len(vocab))
    merges: list[tuple[str, str]] = []

    def chain(pieces: list[str]) -> None:
        for i in range(1, len(pieces)):
            left, merged = "".join(pieces[:i]), "".join(pieces[: i + 1])
            if merged not in vocab:
                merges.append((left, pieces[i]))
                vocab[merged] = len(vocab)

    for word in sorted(words, key=lambda w: (-len(w), w)):
        chain(list(word))
    for _ in range(len(words) + 1):
        backend = _bpe(vocab, merges)
        split = [p for p in (backend.encode(w).tokens for w in words) if len(p) > 1]
        if not split:
            break
        for pieces in split:
            chain(pieces)
    return vocab, merges


def build_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """Builds the word-level tokenizer: byte symbols plus ``words`` as whole tokens.

    It is a byte-level BPE whose only merges spell the corpus's words, with Qwen2's pre-tokenizer
    (one digit per token, whitespace apart from words) and NFC normalizer, so ``AutoTokenizer``
    (which loads any ``qwen2`` model directory as ``Qwen2Tokenizer``) rebuilds it unchanged. Every
    digit, whitespace character, operator and tag is one token, a known word is one token, anything
    else is spelled byte by byte; ``decode(encode(s)) == s`` for any NFC string.

    Args:
        words: Letter-only words to add as whole tokens.

    Returns:
        The transformers fast tokenizer, with the chat template set.
    """
    word_list = sorted({w for w in words if len(w) > 1 and _WORD.fullmatch(w)})
    backend = _bpe(*_word_vocab(word_list))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS + JSON_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        pad_token=PAD,
        eos_token=IM_END,
        additional_special_tokens=[IM_START],
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(
    corpus: Iterable[str],
    out_dir: Path,
    *,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 512,
    seed: int = 0,
) -> Path:
    """Builds a randomly initialized tiny Qwen2 model and its tokenizer into ``out_dir``.

    Args:
        corpus: Texts the tokenizer must cover (see :func:`env_corpus`).
        out_dir: Directory to write (created if missing).
        hidden_size: Model width.
        num_layers: Number of decoder layers.
        num_heads: Attention heads.
        num_kv_heads: Key/value heads (grouped-query attention).
        intermediate_size: Width of the feed-forward layers.
        seed: Seed of the weight initialization.

    Returns:
        ``out_dir``, loadable with :func:`load_model_and_tokenizer`.
    """
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(corpus_words(corpus))
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    # Plain sampling, no top-k/top-p: what the RL engine does too.
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    with quiet_progress():
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _cache_root(cache_dir: Path | str | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("ACTORLEARNER_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "actorlearner"
    return base / "models"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_tiny_model(corpus: Iterable[str], cache_dir: Path | str | None = None, **arch: Any) -> Path:
    """Returns a cached tiny model for ``corpus``, building it on first use.

    The cache key hashes the corpus's vocabulary words (the only part of the corpus the model
    depends on), the architecture keywords and :data:`FORMAT_VERSION`. The model is built in a
    temporary directory and renamed into place, under a file lock, so concurrent callers never see
    a half-written directory and build it at most once.

    Args:
        corpus: Texts the tokenizer must cover.
        cache_dir: Directory holding the models; default ``$ACTORLEARNER_CACHE/models`` or
            ``~/.cache/actorlearner/models``.
        **arch: Keyword arguments of :func:`build_tiny_model` (sizes, seed).

    Returns:
        The model directory ``<cache_dir>/tiny-<hash>``.
    """
    defaults = {
        name: p.default
        for name, p in inspect.signature(build_tiny_model).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = set(arch) - set(defaults)
    if unknown:
        raise TypeError(f"ensure_tiny_model: unknown arguments {sorted(unknown)}; known: {sorted(defaults)}")
    arch = {**defaults, **arch}
    words = corpus_words(corpus)
    key = json.dumps({"v": FORMAT_VERSION, "words": words, "arch": arch}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = _cache_root(cache_dir)
    final = root / f"tiny-{digest}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".tiny-{digest}.lock"):
        if final.is_dir():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".tiny-{digest}-", dir=root))
        try:
            build_tiny_model(words, tmp, **arch)
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _contents(messages: Iterable[Any]) -> Iterator[str]:
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            yield content


def _tool_texts(tools: Iterable[Any]) -> Iterator[str]:
    """Names and descriptions of the tools and of their parameters (what a model may read or write)."""
    for tool in tools or ():
        fn = tool.get("function", tool) if isinstance(tool, dict) else {}
        yield str(fn.get("name", ""))
        yield str(fn.get("description", ""))
        properties = (fn.get("parameters") or {}).get("properties") or {}
        for name, spec in properties.items():
            yield str(name)
            if isinstance(spec, dict):
                yield str(spec.get("description", ""))


def env_corpus(make_env: Callable[[], gym.Env], num_episodes: int = 64) -> list[str]:
    """Gathers the texts a tokenizer must cover from a tool env.

    Always collects the reset messages and the tools' names, descriptions and parameter schemas
    (``info["tools"]``). When the env has ``demonstration(messages) -> str``, demo episodes (reset
    seeds ``0..num_episodes-1``) are played through ``step`` and every turn text and observation
    message is collected too.

    Args:
        make_env: Creates the env; ``reset(seed=...) -> (messages, info)``,
            ``step(text) -> (messages, reward, terminated, truncated, info)``.
        num_episodes: Number of episodes (reset seeds) to visit.

    Returns:
        The collected texts.
    """
    env = make_env()
    texts: list[str] = []
    demo = getattr(env.unwrapped, "demonstration", None)
    try:
        for seed in range(num_episodes):
            messages, info = env.reset(seed=seed)
            conversation = list(messages)
            texts.extend(_contents(conversation))
            texts.extend(_tool_texts(info.get("tools", ())))
            done = False
            while demo is not None and not done:
                turn = demo(conversation)
                texts.append(turn)
                obs, _, terminated, truncated, _ = env.step(turn)
                obs = list(obs)
                conversation.append({"role": "assistant", "content": turn})
                # An env may return the whole conversation or only the new messages.
                if obs[: len(conversation)] == conversation:
                    obs = obs[len(conversation) :]
                conversation.extend(obs)
                texts.extend(_contents(obs))
                done = bool(terminated or truncated)
    finally:
        env.close()
    return texts
