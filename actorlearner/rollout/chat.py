"""Token-in/token-out chat helpers: ids for a prompt, for an observation, for stopping a turn.

An episode's ids are built once and only ever appended to: ``prompt_ids`` for the first prompt,
then per turn the ids the engine sampled, then ``observation_ids`` for the env's reply (which also
closes the assistant turn and opens the next one). Nothing is re-tokenized from the whole chat
text, so the learner trains on exactly the ids the policy produced (docs/algorithms.md §1).

Compared with tokenizing the full rendered chat, the ids can differ in two documented ways only:
(1) a sampled turn keeps the model's own tokenization of its text (e.g. a word the model spelled
letter by letter stays spelled); (2) with a BPE tokenizer, merges across the boundary between a
sampled turn and the template's closing text do not happen. Both are what PPO needs: the ids are
the ones the policy sampled.

Text that comes from outside the template (message contents: the task, tool results, env replies)
is tokenized with special-token splitting on, so a tool that prints ``<|im_end|>`` yields the ids
of those characters, never the control token: the chat's control tokens come only from the
template. Each message's content is rendered as a placeholder, the template's text around the
placeholders is tokenized as usual and each content on its own (docs/algorithms.md §1). Tokens do
not merge across a content's edges, a third documented difference from tokenizing the whole chat.
A tool's content is split further: tokenizers add the format's tags (``<tool_response>``,
``</tool_call>``, ``<think>``) as *non-special* added tokens, which special-token splitting leaves
whole, so a tool that prints ``</tool_response>`` could end its own response in the model's view.
With a fast tokenizer, tool contents (the ``tool`` role, or messages marked
:data:`~actorlearner.env.info.TOOL_OUTPUT`)
are tokenized with every added token split (:func:`_tool_backend`); the task and env messages keep
the format's tags (an env may show the call format in its system prompt).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from actorlearner.env.info import TOOL_OUTPUT

logger = logging.getLogger(__name__)
_SENTINEL = "SENTINEL7f3a9c"
_HOLE = "HOLE7f3a9c{}X"
_HOLES = re.compile(r"HOLE7f3a9c(\d+)X")
_DUMMY_USER = {"role": "user", "content": "hi"}
STOP_TAGS = ("</tool_call>", "</answer>")
"""Closing tags that end an assistant turn when each is a single token."""
MEMO_SIZE = 4096
"""Renderings and tokenizations each tokenizer remembers (least recently used dropped first)."""

_T = TypeVar("_T")
_MEMOS: weakref.WeakKeyDictionary[Any, tuple[Any, OrderedDict[tuple[str, str], Any]]] = (
    weakref.WeakKeyDictionary()
)
_MEMO_LOCK = threading.Lock()


def _memo(tokenizer: Any, kind: str, key: str, compute: Callable[[], _T]) -> _T:
    """``compute()``, remembered per tokenizer under ``(kind, key)``.

    Rendering and tokenizing are pure functions of the tokenizer and the text, and the same
    texts recur: a group's G episodes share their prompt, templates' fixed parts repeat every
    turn, tool results repeat. A tokenizer whose chat template, eos token or vocabulary size
    changes starts afresh. Values are lists of ids or strings; callers copy lists before handing
    them out. Keys are ``repr`` s, which tell a tuple from a list and ``1`` from ``"1"``, as the
    template does.
    """
    template = (
        getattr(tokenizer, "chat_template", None),
        getattr(tokenizer, "eos_token", None),
        len(tokenizer),
    )
    with _MEMO_LOCK:
        seen, memo = _MEMOS.get(tokenizer, (None, None))
        if memo is None or seen != template:
            memo = OrderedDict()
            _MEMOS[tokenizer] = (template, memo)
        if (kind, key) in memo:
            memo.move_to_end((kind, key))
            return memo[kind, key]  # type: ignore[no-any-return]
    value = compute()
    with _MEMO_LOCK:
        memo[kind, key] = value
        if len(memo) > MEMO_SIZE:
            memo.popitem(last=False)
    return value


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Ids of ``text`` without special tokens added (remembered: see :data:`MEMO_SIZE`).

    Args:
        tokenizer: The policy's tokenizer.
        text: Text to tokenize.

    Returns:
        A new list of ids.
    """
    return list(_memo(tokenizer, "encode", text, lambda: _tokenize(tokenizer, text)))


_TOKENIZE_LOCK = threading.Lock()
"""Both ways of tokenizing set the backend's ``encode_special_tokens`` flag and then read it: under
this lock, a tool result tokenized plainly in one thread can never be read with the flag another
thread set for template text (which would let it become a control token). The runners tokenize on
their event loop's thread only; the lock is for callers that use threads (a race we could not
provoke in a test, so it is a precaution)."""


def _tokenize(
    tokenizer: PreTrainedTokenizerBase, text: str, plain: bool = False, tool: bool = False
) -> list[int]:
    """Ids of ``text``; with ``plain``, special-token text is split into ordinary tokens.

    With ``tool`` (a tool's output), the text of every added token is split, the format's
    non-special tags included (fast tokenizers; others split their special tokens only).
    """
    if not text:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    splitter = _tool_backend(tokenizer, backend) if tool and backend is not None else None
    if splitter is not None:
        return list(splitter.encode(text, add_special_tokens=False).ids)
    with _TOKENIZE_LOCK:
        if backend is not None and backend.truncation is None and backend.padding is None:
            # What ``tokenizer(...)`` does for a fast tokenizer without truncation or padding,
            # minus its per-call overhead (about half the time of a short text): the same ids.
            backend.encode_special_tokens = plain
            return list(backend.encode(text, add_special_tokens=False).ids)
        out = tokenizer(text, add_special_tokens=False, split_special_tokens=plain)
    return [int(i) for i in out["input_ids"]]


_TOOL_BACKENDS: weakref.WeakKeyDictionary[Any, tuple[Any, Tokenizer | None]] = weakref.WeakKeyDictionary()
_TOOL_BACKENDS_LOCK = threading.Lock()


def _tool_backend(tokenizer: PreTrainedTokenizerBase, backend: Tokenizer) -> Tokenizer | None:
    """A copy of ``backend`` whose added tokens are all special, set to split them.

    The ids are the same vocabulary's: only whether an added token's text is matched whole
    changes. Built once per tokenizer (about 1.5 s for a 150k vocabulary) and rebuilt when its
    backend or vocabulary size changes; encoding with it is reentrant (its flag never changes).
    None when the backend cannot be copied (a pre-tokenizer written in Python cannot be
    serialized): its tool text then splits special tokens only, with a warning.
    """
    signature = (id(backend), len(tokenizer))
    with _TOOL_BACKENDS_LOCK:
        seen, copy = _TOOL_BACKENDS.get(tokenizer, (None, None))
        if seen != signature:
            copy = _copy_splitting_added_tokens(backend)
            _TOOL_BACKENDS[tokenizer] = (signature, copy)
    return copy


def _copy_splitting_added_tokens(backend: Tokenizer) -> Tokenizer | None:
    try:
        data = json.loads(backend.to_str())
    except Exception as err:  # the tokenizers library raises a bare Exception
        logger.warning(
            "tool text keeps non-special added tokens whole: the tokenizer cannot be copied (%s)", err
        )
        return None
    for token in data.get("added_tokens") or []:
        token["special"] = True
    copy = Tokenizer.from_str(json.dumps(data))
    copy.no_truncation()
    copy.no_padding()
    copy.encode_special_tokens = True
    return copy


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> list[int]:
    """Ids of the first prompt: the chat template with the assistant generation prompt.

    Args:
        tokenizer: A tokenizer with a chat template.
        messages: The conversation so far (e.g. system and user messages from ``env.reset``).
        tools: Tool JSON schemas, rendered as the template chooses.

    Returns:
        A new list of the prompt ids, ending with the assistant header (remembered: a group's
        episodes share one rendering).
    """

    def compute() -> list[int]:
        holed, contents = _with_holes(messages)
        text = _memo(
            tokenizer,
            "holed prompt",
            repr((holed, tools)),
            lambda: _render(tokenizer, holed, gen=True, tools=tools),
        )
        return _fill_holes(tokenizer, text, contents)

    key = repr((messages, tools))
    return list(_memo(tokenizer, "prompt", key, compute))


def _render(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    gen: bool,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The chat template's text of ``messages`` (with the generation prompt when ``gen``).

    Renderings are remembered per message structure (contents as holes): a template that writes
    today's date (``strftime_now``) keeps the date of its first rendering while the memo holds it.
    """
    text = tokenizer.apply_chat_template(
        messages,
        tools=[dict(t) for t in tools] if tools else None,
        add_generation_prompt=gen,
        tokenize=False,
    )
    assert isinstance(text, str)
    return text


def observation_text(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, Any]], after_eos: bool
) -> str:
    """The template text that follows an assistant turn's content: see :func:`observation_ids`."""
    head = [_DUMMY_USER, {"role": "assistant", "content": _SENTINEL}]
    before = _memo(tokenizer, "render", "head", lambda: _render(tokenizer, head, gen=False))
    after = _render(tokenizer, head + [dict(m) for m in messages], gen=True)
    cut = before.rfind(_SENTINEL) + len(_SENTINEL)
    if cut < len(_SENTINEL) or not after.startswith(before[:cut]):
        raise ValueError("the chat template does not render a conversation as a prefix of its extension")
    text = after[cut:]
    eos = tokenizer.eos_token
    if after_eos and isinstance(eos, str) and eos and text.startswith(eos):
        text = text[len(eos) :]
    return text


def observation_ids(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, Any]], after_eos: bool
) -> list[int]:
    r"""Ids to append after a sampled assistant turn: the turn's closing, ``messages``, the next header.

    The text is found by rendering a fixed dummy conversation that ends in an assistant message
    whose content is a sentinel, then the same conversation plus ``messages`` with the generation
    prompt, and taking what follows the sentinel; only that text is tokenized. For ChatML it is
    ``<|im_end|>\n<|im_start|>tool\n<tool_response>...</tool_response><|im_end|>\n<|im_start|>assistant\n``.

    Args:
        tokenizer: A tokenizer whose chat template renders a conversation as a prefix of its
            extension (ChatML and most HF templates do).
        messages: The env's new messages (e.g. one ``tool`` message).
        after_eos: True when the sampled turn already ended with the eos token; the template's
            leading eos text is then dropped so it is not duplicated.

    Returns:
        The observation ids.

    Raises:
        ValueError: If the template does not render conversations prefix-consistently.
    """
    key = repr((messages, after_eos))
    return list(
        _memo(
            tokenizer,
            "observation",
            key,
            lambda: _observation_ids(tokenizer, messages, after_eos),
        )
    )


def _observation_ids(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, Any]], after_eos: bool
) -> list[int]:
    holed, contents = _with_holes(messages)
    key = repr((holed, after_eos))
    text = _memo(tokenizer, "holed observation", key, lambda: observation_text(tokenizer, holed, after_eos))
    return _fill_holes(tokenizer, text, contents)


def _with_holes(
    messages: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[tuple[str, bool]]]:
    """Copies of ``messages`` whose texts are numbered placeholders; the texts.

    A text is a string content or the ``text`` of a content part (``[{"type": "text", "text":
    ...}]``). Each comes with whether a tool wrote it: the ``tool`` role, or a message an env
    marked with :data:`~actorlearner.env.info.TOOL_OUTPUT` (the marker itself is not rendered).
    """
    holed: list[dict[str, Any]] = []
    contents: list[tuple[str, bool]] = []

    def hole(text: str, tool: bool) -> str:
        contents.append((text, tool))
        return _HOLE.format(len(contents) - 1)

    for message in messages:
        copy = {k: v for k, v in message.items() if k != TOOL_OUTPUT}
        tool = message.get("role") == "tool" or bool(message.get(TOOL_OUTPUT))
        content = copy.get("content")
        if isinstance(content, str):
            copy["content"] = hole(content, tool)
        elif isinstance(content, list):
            copy["content"] = [
                {**part, "text": hole(part["text"], tool)}
                if isinstance(part, Mapping) and isinstance(part.get("text"), str)
                else part
                for part in content
            ]
        holed.append(copy)
    return holed, contents


def _fill_holes(
    tokenizer: PreTrainedTokenizerBase, text: str, contents: Sequence[tuple[str, bool]]
) -> list[int]:
    """Ids of ``text``: template text tokenized as usual, each placeholder's content plainly.

    Contents are tokenized with special-token splitting on, so none can become a control token,
    and a tool's with every added token split (see the module's docstring). The template's
    pieces recur in every rendering and are remembered (:func:`encode_text`).
    """
    ids: list[int] = []
    start = 0
    for hole in _HOLES.finditer(text):
        content, tool = contents[int(hole.group(1))]
        ids += encode_text(tokenizer, text[start : hole.start()])
        ids += _tokenize(tokenizer, content, plain=True, tool=tool)
        start = hole.end()
    return ids + encode_text(tokenizer, text[start:])


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """Ids that end an assistant turn: eos, plus ``</tool_call>`` and ``</answer>`` when single tokens.

    Args:
        tokenizer: The policy's tokenizer.

    Returns:
        Distinct ids, eos first.
    """
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    for tag in STOP_TAGS:
        tag_ids = tokenizer.encode(tag, add_special_tokens=False)
        if len(tag_ids) == 1 and tag_ids[0] != tokenizer.unk_token_id and tag_ids[0] not in ids:
            ids.append(int(tag_ids[0]))
    return tuple(ids)


def decode_turn(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """The text of a sampled turn, special tokens (eos) dropped; tags are kept.

    Args:
        tokenizer: The policy's tokenizer.
        ids: The turn's sampled ids.

    Returns:
        The decoded text.
    """
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    assert isinstance(text, str)
    return text
