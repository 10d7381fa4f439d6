"""Typed configuration, RLlib style: one validated section per component and a builder.

``AlgorithmConfig().environment(...).env_runners(...).training(...).replay(...).build()``. YAML files
in ``configs/`` are overrides of the defaults, and so are ``key=value`` pairs on the command line.
Unknown keys and bad values fail at once with one line naming the key and what is allowed;
:meth:`AlgorithmConfig.validate` checks the rest (:mod:`actorlearner.preflight`) before anything starts.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import Field, ValidationError, field_validator

from actorlearner.core.config import Section, one_line_error, plain
from actorlearner.core.errors import ConfigError
from actorlearner.core.protocols import Trainer
from actorlearner.core.registry import resolve_class
from actorlearner.env.config import EnvironmentConfig
from actorlearner.learn.config import LearnerConfig, SFTConfig, TrainingConfig
from actorlearner.preflight import check_config
from actorlearner.replay.config import ReplayConfig
from actorlearner.rollout.config import EnvRunnersConfig
from actorlearner.runtime.config import DebuggingConfig, ReportingConfig

__all__ = [
    "SECTIONS",
    "AlgorithmConfig",
    "ConfigError",
    "DebuggingConfig",
    "EnvRunnersConfig",
    "EnvironmentConfig",
    "EvaluationConfig",
    "LearnerConfig",
    "ModelConfig",
    "ReplayConfig",
    "ReportingConfig",
    "SFTConfig",
    "Section",
    "TrainingConfig",
    "config_reference",
]

_Section = Section  # the base's former name here


class ModelConfig(Section):
    """The policy model."""

    model: str = Field("tiny", description="'tiny' builds the embedded default; else a local directory.")
    hidden_size: int = Field(128, ge=8, description="Tiny model: hidden size.")
    num_layers: int = Field(4, ge=1, description="Tiny model: transformer layers.")
    num_heads: int = Field(4, ge=1, description="Tiny model: attention heads.")
    num_kv_heads: int = Field(2, ge=1, description="Tiny model: key/value heads.")
    intermediate_size: int = Field(512, ge=8, description="Tiny model: FFN width.")

    @field_validator("model")
    @classmethod
    def _tiny_or_a_model_directory(cls, value: str) -> str:
        problem = model_path_problem(value)
        if problem:
            raise ValueError(f"{value}: {problem}; allowed: 'tiny' or a directory written by save_pretrained")
        return value


def model_path_problem(value: str) -> str | None:
    """What is wrong with ``model.model`` (None: fine): a path that is missing or holds no model.

    A name that is no existing path and does not look like one (``org/name``) is left to
    ``from_pretrained``, which may find it on the Hugging Face hub.
    """
    if value == "tiny":
        return None
    path = Path(value).expanduser()
    if not path.exists():
        looks_like_path = value.startswith(("/", "~", ".")) or value.count("/") > 1 or "\\" in value
        return "the directory does not exist" if looks_like_path else None
    if not path.is_dir():
        return "is a file, not a model directory"
    if not (path / "config.json").is_file():
        return "the directory has no config.json"
    return None


class EvaluationConfig(Section):
    """Held-out evaluation."""

    num_episodes: int = Field(500, ge=1, description="Held-out episodes (seeds 0..n-1 of the eval split).")
    initial_episodes: int | None = Field(
        None,
        ge=1,
        description="Episodes of the evaluation of the untrained model (seeds 0..n-1; default: "
        "num_episodes). It is a baseline: an untrained model writes every turn to the token cap, so its "
        "episodes cost most.",
    )
    interval: int = Field(0, ge=0, description="Evaluate every N iterations (0: only before and after).")


SECTIONS: dict[str, type[Section]] = {
    "environment": EnvironmentConfig,
    "env_runners": EnvRunnersConfig,
    "training": TrainingConfig,
    "sft": SFTConfig,
    "replay": ReplayConfig,
    "learners": LearnerConfig,
    "model": ModelConfig,
    "evaluation": EvaluationConfig,
    "reporting": ReportingConfig,
    "debugging": DebuggingConfig,
}


class AlgorithmConfig:
    """Builder for an :class:`~actorlearner.algorithm.Algorithm`.

    Each section is an attribute (``config.training.lr``) and is also called to update it
    (``config.training(lr=1e-4)``): values are validated at once, and the config is returned for
    chaining.

    Example:
        >>> config = (AlgorithmConfig()
        ...     .environment("actorlearner/Calculator-v0", env_config={"max_operand": 99})
        ...     .env_runners(num_env_runners=1, group_size=8)
        ...     .training(lr=2e-4, train_batch_groups=32)
        ...     .replay(priority_fn="uniform", filters=["zero_variance"]))
    """

    def __init__(self, algo_class: type | str = "actorlearner.algorithm:Algorithm") -> None:
        self.algo_class = algo_class
        self.sections: dict[str, Section] = {}
        for name, cls in SECTIONS.items():
            self._attach(name, cls())

    def _attach(self, name: str, section: Section) -> None:
        section._name = name
        section._parent = self
        self.sections[name] = section

    def update(self, section: str, **values: Any) -> AlgorithmConfig:
        """Validates and applies ``values`` to ``section``.

        Raises:
            ConfigError: One line naming the key and what is allowed.
        """
        if section not in SECTIONS:
            raise ConfigError(f"{section}: unknown section; allowed: {', '.join(SECTIONS)}")
        cls = SECTIONS[section]
        merged = {**self.sections[section].model_dump(), **values}
        try:
            self._attach(section, cls.model_validate(merged))
        except ValidationError as err:
            raise ConfigError(one_line_error(section, cls, err)) from None
        return self

    @property
    def environment(self) -> EnvironmentConfig:
        """Which env: ``.environment(env, env_config={...})``."""
        return self.sections["environment"]  # type: ignore[return-value]

    @property
    def env_runners(self) -> EnvRunnersConfig:
        """Rollout actors: ``.env_runners(num_env_runners=..., group_size=...)``."""
        return self.sections["env_runners"]  # type: ignore[return-value]

    @property
    def training(self) -> TrainingConfig:
        """RL phase: ``.training(lr=..., train_batch_groups=...)``."""
        return self.sections["training"]  # type: ignore[return-value]

    @property
    def sft(self) -> SFTConfig:
        """Cold-start SFT: ``.sft(steps=..., lr=...)``."""
        return self.sections["sft"]  # type: ignore[return-value]

    @property
    def replay(self) -> ReplayConfig:
        """Priorities, filters and buffer: ``.replay(priority_fn=..., filters=[...])``."""
        return self.sections["replay"]  # type: ignore[return-value]

    @property
    def learners(self) -> LearnerConfig:
        """Learner actor: ``.learners(device=...)``."""
        return self.sections["learners"]  # type: ignore[return-value]

    @property
    def model(self) -> ModelConfig:
        """Policy model: ``.model(model="path/to/dir")``."""
        return self.sections["model"]  # type: ignore[return-value]

    @property
    def evaluation(self) -> EvaluationConfig:
        """Held-out evaluation: ``.evaluation(num_episodes=...)``."""
        return self.sections["evaluation"]  # type: ignore[return-value]

    @property
    def reporting(self) -> ReportingConfig:
        """Run directory and logging: ``.reporting(run_dir=..., progress=...)``."""
        return self.sections["reporting"]  # type: ignore[return-value]

    @property
    def debugging(self) -> DebuggingConfig:
        """Seeds and Ray: ``.debugging(seed=...)``."""
        return self.sections["debugging"]  # type: ignore[return-value]

    def update_from_dict(self, data: Mapping[str, Any]) -> AlgorithmConfig:
        """Applies ``{section: {key: value}}`` overrides.

        Raises:
            ConfigError: On an unknown section or key, or a bad value.
        """
        for section, values in data.items():
            if section not in SECTIONS:
                raise ConfigError(f"{section}: unknown section; allowed: {', '.join(SECTIONS)}")
            if not isinstance(values, Mapping):
                raise ConfigError(f"{section}: must be a mapping of keys to values")
            self.update(section, **values)
        return self

    def update_from_overrides(self, overrides: Iterable[str]) -> AlgorithmConfig:
        """Applies ``section.key=value`` strings; values are parsed as YAML (``1e-4``, ``[a, b]``).

        Raises:
            ConfigError: On a malformed override or YAML value, an unknown key or a bad value.
        """
        for item in overrides:
            path, sep, raw = item.partition("=")
            section, dot, key = path.partition(".")
            if not sep or not dot or not key:
                raise ConfigError(f"{item}: overrides look like section.key=value")
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError as err:
                raise ConfigError(
                    f"{path}: {raw!r} is not valid YAML: {_yaml_problem(err)}; allowed: a YAML value "
                    "such as 1e-4, [a, b] or {k: v} (quote the whole override in the shell)"
                ) from None
            self.update(section, **{key: value})
        return self

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Iterable[str] = ()) -> AlgorithmConfig:
        """Loads a YAML file of overrides of the defaults, then ``key=value`` overrides.

        Raises:
            ConfigError: One line naming the file (and the line of a YAML error) or the key.
        """
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or type(err).__name__
            raise ConfigError(
                f"{path}: cannot read the config file ({reason}); allowed: a YAML file such as "
                "configs/calculator.yaml"
            ) from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(
                f"{path}: not valid YAML: {_yaml_problem(err)}; allowed: a YAML mapping of sections"
            ) from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: must be a mapping of sections")
        return cls().update_from_dict(data).update_from_overrides(overrides)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain-data view (callables and classes shown by their qualified names)."""
        return {name: plain(section.model_dump()) for name, section in self.sections.items()}

    def copy(self) -> AlgorithmConfig:
        """A deep copy (sections are re-attached to the copy)."""
        new = AlgorithmConfig(self.algo_class)
        for name, section in self.sections.items():
            new._attach(name, section.model_copy(deep=True))
        return new

    def validate(self) -> AlgorithmConfig:
        """Checks what single keys cannot, before anything starts (``build()`` calls it).

        Sections must fit together; the env must take ``env_config`` (it is built once); CUDA must
        be there for ``learners.device=cuda``; ``reporting.run_dir`` must be writable (it is
        created); a ``debugging.ray_address`` must answer. It starts no Ray and builds no model
        (building the env may import torch). See :mod:`actorlearner.preflight`.

        Returns:
            This config, for chaining.

        Raises:
            ConfigError: One line naming the first key that fails.
        """
        check_config(self)
        return self

    def build(self) -> Trainer:
        """Validates the config (:meth:`validate`), then builds the algorithm (starts Ray unless local).

        The class is ``algo_class`` (RLlib's seam): by default
        :class:`~actorlearner.algorithm.Algorithm`, named by path so that this module sits below it.
        """
        self.validate()
        algo_class: Any = resolve_class(self.algo_class, object)
        return algo_class(self.copy())  # type: ignore[no-any-return]

    if not TYPE_CHECKING:  # hidden from mypy, which would accept any attribute name otherwise

        def __getattr__(self, name: str) -> Any:
            """Only for names not found: a misspelled section (``.trainin(...)``) lists the sections."""
            if name.startswith("__"):
                raise AttributeError(name)
            close = difflib.get_close_matches(name, SECTIONS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise AttributeError(
                f"AlgorithmConfig has no section or attribute {name!r}; {hint}sections: {', '.join(SECTIONS)}"
            )


def _yaml_problem(err: yaml.YAMLError) -> str:
    """Where and what went wrong in a YAML text, on one line.

    For example ``line 4, column 1: expected ',' or ']', but got '<stream end>', in a flow sequence
    started at line 3, column 4``.
    """
    problem = getattr(err, "problem", None) or str(err)
    text = f"{_at(getattr(err, 'problem_mark', None))}{problem}"
    context, mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and mark is not None:
        text += f", in {context.removeprefix('while parsing ')} started at {_at(mark).rstrip(': ')}"
    return " ".join(text.split())


def _at(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def config_reference() -> str:
    """The configuration reference (docs/configuration.md), generated from every section's fields."""
    lines: list[str] = []
    for name, cls in SECTIONS.items():
        lines += [
            f"**`{name}`**: {(cls.__doc__ or '').strip()}",
            "",
            "| key | default | meaning |",
            "|---|---|---|",
        ]
        for key, field in cls.model_fields.items():
            default = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
            lines.append(f"| `{key}` | `{plain(default)!r}` | {field.description} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_config_reference(path: str | Path = "docs/configuration.md") -> None:
    """Rewrites the text between the ``config-reference`` markers of ``path`` with :func:`config_reference`.

    Raises:
        ValueError: If ``path`` lacks the ``<!-- config-reference:start ... -->`` and
            ``<!-- config-reference:end -->`` markers.
    """
    import re

    target = Path(path)
    text = target.read_text()
    pattern = r"(<!-- config-reference:start[^>]*-->\n).*?(<!-- config-reference:end -->)"
    fresh, count = re.subn(pattern, lambda m: m.group(1) + config_reference() + m.group(2), text, flags=re.S)
    if count == 0:
        raise ValueError(
            f"{path}: no <!-- config-reference:start --> ... <!-- config-reference:end --> markers"
        )
    target.write_text(fresh)


if __name__ == "__main__":  # python -m actorlearner.config [FILE]: regenerates the configuration reference
    import sys

    write_config_reference(*sys.argv[1:2])
