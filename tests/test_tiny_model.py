"""The embedded tiny model: tokenizer round trips, chat template, build, cache and env corpus."""

from __future__ import annotations

import json
import random
import string
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch
from transformers import AutoTokenizer, Qwen2ForCausalLM

from actorlearner.models import tiny as tiny_model
from actorlearner.models.loading import load_model_and_tokenizer
from actorlearner.models.tiny import (
    QWEN2_PRETOKENIZE_REGEX,
    build_tiny_model,
    build_tokenizer,
    corpus_words,
    ensure_tiny_model,
    env_corpus,
)

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "37 * 52"}}</tool_call>'
CORPUS = ["What is 37 * 52? Use the calculator tool.", "this is it", CALL, "<answer>1924</answer>"]
TOOLS = [
    {
        "type": "function",
        "function": {"name": "calculator", "description": "Evaluates arithmetic.", "parameters": {}},
    },
    {"name": "search", "description": "Finds things.", "parameters": {}},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(CORPUS, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tok(model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(model_dir)


def _ids(tok: Any, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False))


def test_regex_is_qwen2s() -> None:
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    assert QWEN2_PRETOKENIZE_REGEX == PRETOKENIZE_REGEX


def test_autotokenizer_loads_the_same_tokenizer(tok: Any) -> None:
    built = build_tokenizer(corpus_words(CORPUS))
    assert len(tok) == len(built)
    rng = random.Random(1)
    for _ in range(300):
        text = "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 60))) + CALL
        assert _ids(tok, text) == _ids(built, text)


def test_round_trip_printable_ascii(tok: Any) -> None:
    rng = random.Random(0)
    pieces = [
        *string.printable,
        " calculator ",
        "  ",
        "\n\n",
        "<answer>",
        "</tool_call>",
        "<|im_end|>",
        '": "',
    ]
    for _ in range(1000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 50)))
        assert tok.decode(_ids(tok, text)) == text
    assert tok.decode(_ids(tok, "naïve café 37°")) == "naïve café 37°"  # bytes, not <unk>


def test_one_token_per_digit_operator_tag_and_word(tok: Any) -> None:
    for text in [*string.digits, *"+-*/=()?.", " ", "\n", *tiny_model.TAG_TOKENS, *tiny_model.JSON_TOKENS]:
        assert len(_ids(tok, text)) == 1, text
    for word in ["What", "is", "this", "calculator", "expression", "Tools", "assistant"]:
        assert len(_ids(tok, word)) == 1, word
    assert len(_ids(tok, "1234")) == 4
    assert tok.convert_ids_to_tokens(_ids(tok, "this is")) == ["this", "Ġ", "is"]


def test_tool_call_is_short_and_exact(tok: Any) -> None:
    ids = _ids(tok, CALL)
    assert 14 <= len(ids) <= 20
    assert tok.decode(ids) == CALL
    assert tok.decode(ids, skip_special_tokens=True) == CALL  # tags are not special
    assert len(tok) < 400


def test_special_tokens(tok: Any) -> None:
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|pad|>"
    assert tok.pad_token_id != tok.eos_token_id
    ids = _ids(tok, "<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"


def test_chat_template(tok: Any) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 37 * 52?"},
        {"role": "assistant", "content": CALL},
        {"role": "tool", "name": "calculator", "content": "1924"},
    ]
    text = tok.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.\nTools: calculator, search<|im_end|>\n"
        "<|im_start|>user\nWhat is 37 * 52?<|im_end|>\n"
        f"<|im_start|>assistant\n{CALL}<|im_end|>\n"
        "<|im_start|>tool\n<tool_response>1924</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    plain = tok.apply_chat_template(messages[1:2], tokenize=False)
    assert plain == "<|im_start|>user\nWhat is 37 * 52?<|im_end|>\n"


def test_chat_template_renders_openai_tool_calls(tok: Any) -> None:
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "37 * 52"}}}
    messages = [{"role": "assistant", "content": "", "tool_calls": [call]}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == f"<|im_start|>assistant\n{CALL}<|im_end|>\n"


def test_model(model_dir: Path) -> None:
    model, tok = load_model_and_tokenizer(model_dir)
    assert isinstance(model, Qwen2ForCausalLM)
    assert not model.training
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.dtype == torch.float32
    assert 0.8e6 < model.num_parameters() < 1.3e6
    assert model.config.vocab_size == len(tok)
    assert model.config.eos_token_id == tok.eos_token_id
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = build_tiny_model(CORPUS, model_dir.parent / "again")
    assert torch.equal(torch.rand(3), expected)  # the global RNG is left alone
    same = load_model_and_tokenizer(again)[0]
    for (name, a), b in zip(model.state_dict().items(), same.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_ensure_tiny_model_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTORLEARNER_CACHE", str(tmp_path / "cache"))
    arch: dict[str, Any] = {"hidden_size": 32, "num_layers": 1, "intermediate_size": 64}
    first = ensure_tiny_model(CORPUS, **arch)
    assert first.parent == tmp_path / "cache" / "models" and first.name.startswith("tiny-")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(list(reversed(CORPUS)), **arch) == first  # same words, same model
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert ensure_tiny_model([*CORPUS, "zebra"], **arch) != first
    assert ensure_tiny_model(CORPUS, **{**arch, "seed": 1}) != first
    assert ensure_tiny_model(CORPUS, **{**arch, "seed": 0, "num_heads": 4}) == first  # defaults
    with pytest.raises(TypeError, match="unknown"):
        ensure_tiny_model(CORPUS, hidden=3)
    assert ensure_tiny_model(CORPUS, cache_dir=tmp_path / "own", **arch).parent == tmp_path / "own"


def test_ensure_tiny_model_concurrent(tmp_path: Path) -> None:
    arch: dict[str, Any] = {"hidden_size": 32, "num_layers": 1, "intermediate_size": 64}
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: ensure_tiny_model(CORPUS, cache_dir=tmp_path, **arch), range(4)))
    assert len(set(paths)) == 1
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [paths[0].name]
    load_model_and_tokenizer(paths[0])


class EchoEnv(gym.Env):
    """A stand-in tool env following the runner's protocol."""

    def __init__(self) -> None:
        self.turn = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self.value, self.turn = int(self.np_random.integers(10, 99)), 0
        tools = [
            {
                "type": "function",
                "function": {
                    "name": "echo",
                    "description": "Repeats words.",
                    "parameters": {"properties": {"text": {"type": "string", "description": "Anything."}}},
                },
            }
        ]
        return [{"role": "user", "content": f"Echo {self.value} please"}], {"tools": tools}

    def step(self, action: str) -> Any:
        self.turn += 1
        if "<answer>" in action:
            return [], 1.0, True, False, {}
        return [{"role": "tool", "content": f"echoed {self.value}"}], 0.0, False, self.turn >= 5, {}


class DemoEchoEnv(EchoEnv):
    """The stand-in env with a scripted demonstration."""

    def demonstration(self, messages: list[dict[str, Any]]) -> str:
        if messages[-1]["role"] == "tool":
            return f"<answer>{self.value}</answer> done"
        args = json.dumps({"text": str(self.value)})
        return f'<tool_call>{{"name": "echo", "arguments": {args}}}</tool_call> calling'


def test_env_corpus_plays_demonstrations() -> None:
    texts = env_corpus(DemoEchoEnv, num_episodes=4)
    words = corpus_words(texts)
    for word in [
        "Echo",
        "please",
        "echo",
        "Repeats",
        "words",
        "text",
        "Anything",
        "calling",
        "done",
        "echoed",
    ]:
        assert word in words, word
    assert "tool_call" not in words and "call" not in words  # tags are tokens of their own
    assert sum("<answer>" in t for t in texts) == 4


def test_env_corpus_without_demonstration() -> None:
    words = corpus_words(env_corpus(EchoEnv, num_episodes=2))
    assert {"Echo", "please", "Repeats", "text"} <= set(words)
    assert "calling" not in words and "echoed" not in words


def test_env_corpus_calculator(tmp_path: Path) -> None:
    calculator = pytest.importorskip("envs.calculator")
    texts = env_corpus(calculator.Calculator, num_episodes=16)
    model_dir = build_tiny_model(texts, tmp_path / "calc")
    _, tok = load_model_and_tokenizer(model_dir)
    env = calculator.Calculator()
    messages, info = env.reset(seed=3)
    turn = env.demonstration(messages)
    for text in [turn, *(m["content"] for m in messages)]:
        assert tok.decode(_ids(tok, text)) == text
    assert len(_ids(tok, turn)) <= 20
    prompt = str(
        tok.apply_chat_template(messages, tools=info["tools"], tokenize=False, add_generation_prompt=True)
    )
    assert "Tools: calculator<|im_end|>" in prompt
    assert tok.decode(_ids(tok, prompt)) == prompt
    assert len(_ids(tok, prompt)) <= 40
