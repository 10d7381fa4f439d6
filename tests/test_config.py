import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from actorlearner import AlgorithmConfig, ConfigError, register_priority
from actorlearner.core.registry import PRIORITIES

CONFIGS = Path(__file__).parents[1] / "configs"


def test_builder_chains_and_validates():
    cfg = AlgorithmConfig().training(lr=1e-4).env_runners(group_size=4).replay(filters=[])
    assert cfg.training.lr == 1e-4
    assert cfg.env_runners.group_size == 4
    assert cfg.replay.filters == []


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda c: c.training(lrr=1), r"^training\.lrr: unknown key; allowed: .*\blr\b"),
        (lambda c: c.training(lr=-1), r"^training\.lr: Input should be greater than 0"),
        (
            lambda c: c.training(advantage="ppo"),
            r"^training\.advantage: unknown advantage estimator 'ppo'; known: drgrpo, grpo$",
        ),
        (
            lambda c: c.replay(priority_fn="nope"),
            r"^replay\.priority_fn: .*unknown priority function 'nope'; known: .*uniform",
        ),
        (lambda c: c.replay(filters=["nope"]), r"^replay\.filters: .*known: .*zero_variance"),
        (
            lambda c: c.environment("NoSuchEnv-v9"),
            r"^environment\.env: .*not a registered gymnasium id.*actorlearner/Calculator-v0",
        ),
        (lambda c: c.update_from_overrides(["bogus.x=1"]), r"^bogus: unknown section; allowed: environment"),
    ],
)
def test_bad_config_fails_with_one_line_naming_the_key(call, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        call(AlgorithmConfig())
    assert "\n" not in str(info.value)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  lr: 3.0e-4\nreplay:\n  filters: [zero_variance]\n")
    cfg = AlgorithmConfig.from_yaml(path, ["training.lr=1e-5", "env_runners.group_size=3"])
    assert cfg.training.lr == 1e-5
    assert cfg.env_runners.group_size == 3


@pytest.mark.parametrize(
    "name", sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name != "calculator_vllm.yaml")
)
def test_shipped_configs_load_and_validate(name):
    AlgorithmConfig.from_yaml(CONFIGS / name).validate()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_the_vllm_config_names_the_missing_package_in_the_base_install():
    """It validates in .venv-vllm (tests_vllm); here, without vllm, it fails with one line."""
    with pytest.raises(ConfigError, match=r"^env_runners\.engine: engine 'vllm' needs the vllm package"):
        AlgorithmConfig.from_yaml("configs/calculator_vllm.yaml").validate()


def test_callable_and_registered_priority():
    @register_priority("test_config_prio")
    def prio(group, history):
        return 1.0

    try:
        assert (
            AlgorithmConfig().replay(priority_fn="test_config_prio").replay.priority_fn == "test_config_prio"
        )
        assert AlgorithmConfig().replay(priority_fn=prio).replay.priority_fn is prio
        with pytest.raises(ValueError, match="already registered"):
            register_priority("test_config_prio")(prio)
    finally:
        PRIORITIES.unregister("test_config_prio")


def test_cli_reports_bad_key_in_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "actorlearner.cli", "train", "configs/calculator.yaml", "training.lr=-3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "actorlearner: config error: training.lr: Input should be greater than 0 (got -3)"
    ]


def test_cross_field_checks_fail_fast_at_build(tmp_path):
    from tests.conftest import small_config

    with pytest.raises(
        ConfigError, match=r"^env_runners\.max_ready_groups: must be >= training\.train_batch_groups"
    ):
        small_config(tmp_path).env_runners(max_ready_groups=1).training(train_batch_groups=2).build()
    with pytest.raises(ConfigError, match=r"^env_runners\.max_tokens: .* leaves no room for a turn"):
        small_config(tmp_path).env_runners(max_tokens=20, max_new_tokens=8).build()


class ContextCappedEngine:
    """An engine class with a context cap (as vllm's ``max_model_len``); only its signature is used."""

    def __init__(self, model_path, seed: int = 0, max_model_len: int | None = None) -> None: ...


def test_an_engine_context_cap_below_max_tokens_fails_at_build(tmp_path):
    from tests.conftest import small_config

    config = small_config(tmp_path).env_runners(
        engine="tests.test_config:ContextCappedEngine", engine_options={"max_model_len": 64}, max_tokens=96
    )
    with pytest.raises(
        ConfigError, match=r"^env_runners\.engine_options\.max_model_len: must be >= .*\(96\).*got 64$"
    ):
        config.build()


def test_env_given_as_import_path(tmp_path):
    cfg = AlgorithmConfig().environment("envs.calculator:Calculator")
    assert cfg.environment.env == "envs.calculator:Calculator"
    with pytest.raises(ConfigError, match="cannot import env class"):
        AlgorithmConfig().environment("no_such_module:Env")


def test_assigning_a_bad_value_is_a_one_line_config_error():
    cfg = AlgorithmConfig()
    cfg.training.lr = 1e-5
    assert cfg.training.lr == 1e-5
    with pytest.raises(ConfigError, match=r"^training\.lr: Input should be greater than 0 \(got -1\)$"):
        cfg.training.lr = -1


@pytest.mark.ray
def test_unpicklable_priority_function_is_named_at_build(ray_session, tmp_path):
    import threading

    from tests.conftest import small_config

    lock = threading.Lock()

    def locked_priority(group, history):
        with lock:
            return 1.0

    config = small_config(tmp_path, num_env_runners=1).replay(priority_fn=locked_priority)
    with pytest.raises(ConfigError, match=r"^replay\.priority_fn: .*locked_priority cannot be pickled"):
        config.build()


def test_config_reference_covers_every_section_and_is_written_between_the_markers(tmp_path):
    from actorlearner.config import SECTIONS, config_reference, write_config_reference

    reference = config_reference()
    for name, cls in SECTIONS.items():
        assert f"**`{name}`**" in reference
        assert all(f"| `{key}` |" in reference for key in cls.model_fields)
    page = tmp_path / "configuration.md"
    start = "# Configuration\n<!-- config-reference:start (generated) -->\n"
    end = "<!-- config-reference:end -->\n"
    page.write_text(start + "old\n" + end)
    write_config_reference(page)
    assert page.read_text() == start + reference + end
    page.write_text("no markers\n")
    with pytest.raises(ValueError, match="no <!-- config-reference:start -->"):
        write_config_reference(page)
