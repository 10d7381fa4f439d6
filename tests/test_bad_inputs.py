"""Every bad input gets one line naming the key or file, exit code 2, no traceback, before Ray starts.

The table runs the real CLI in a subprocess; each case fails in the config or in
``AlgorithmConfig.validate()``, before Ray, a model or torch's training code (a few seconds each).
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from actorlearner import AlgorithmConfig, ConfigError
from actorlearner.config import SECTIONS
from actorlearner.core.config import number_kind
from actorlearner.core.metrics import MetricsLogger, read_metrics
from actorlearner.preflight import check_run_dir
from actorlearner.runtime.placement import check_ray_address

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/calculator.yaml"
PREFIX = "actorlearner: config error: "
# In-process runners: should a case ever get past the checks, it starts no Ray cluster.
NO_RAY = "env_runners.num_env_runners=0"


def _free_port() -> int:
    """A local port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def _no_config_json(tmp: Path) -> str:
    (tmp / "not_a_model").mkdir()
    return str(tmp / "not_a_model")


# (id, argv after `actorlearner`, built from a temp dir; substrings the one line must contain)
CASES = [
    # 1. malformed YAML in the config file: the file and the line
    (
        "yaml-file",
        lambda t: ["train", _write(t, "bad.yaml", "training:\n  lr: 1e-4\na: [1, 2\n")],
        ["bad.yaml: not valid YAML: line 4, column 1", "started at line 3, column 4"],
    ),
    (
        "yaml-file-tab",
        lambda t: ["train", _write(t, "tab.yaml", "training:\n\tlr: 1\n")],
        ["tab.yaml: not valid YAML"],
    ),
    (
        "yaml-file-not-a-mapping",
        lambda t: ["train", _write(t, "list.yaml", "- 1\n")],
        ["list.yaml: must be a mapping"],
    ),
    # 2. malformed YAML in an override value: the override's key
    (
        "yaml-override-list",
        lambda t: ["train", CONFIG, NO_RAY, "training.lr=[1"],
        ["training.lr: '[1' is not valid YAML"],
    ),
    (
        "yaml-override-mapping",
        lambda t: ["train", CONFIG, NO_RAY, "environment.env_config={bogus:"],
        ["environment.env_config: '{bogus:' is not valid YAML"],
    ),
    # 3. a missing config file, a directory as the config file
    ("missing-file", lambda t: ["train", str(t / "nope.yaml")], ["nope.yaml: cannot read", "No such file"]),
    ("directory-as-file", lambda t: ["train", str(t)], [": cannot read the config file", "Is a directory"]),
    # 4. env_config keys and values, checked against the env
    (
        "env-config-unknown-key",
        lambda t: ["train", CONFIG, NO_RAY, "environment.env_config={bogus: 1}"],
        ["environment.env_config: actorlearner/Calculator-v0 takes no 'bogus'; allowed: ", "max_operand"],
    ),
    (
        "env-config-bad-value",
        lambda t: ["train", CONFIG, NO_RAY, "environment.env_config={max_operand: 0}"],
        ["environment.env_config: actorlearner/Calculator-v0: max_operand"],
    ),
    (
        "eval-env-config-unknown-key",
        lambda t: ["train", CONFIG, NO_RAY, "environment.eval_env_config={splitt: test}"],
        ["environment.eval_env_config: actorlearner/Calculator-v0 takes no 'splitt'; allowed: "],
    ),
    (
        "eval-env-config-bad-value",
        lambda t: ["train", CONFIG, NO_RAY, "environment.eval_env_config={split: nope}"],
        ["environment.eval_env_config: ", "split must be one of"],
    ),
    # 5. model.model: a path that is not there, or holds no model
    (
        "model-missing-dir",
        lambda t: ["train", CONFIG, NO_RAY, "model.model=/nonexistent/dir"],
        ["model.model: /nonexistent/dir: the directory does not exist; allowed: 'tiny'"],
    ),
    (
        "model-file",
        lambda t: ["train", CONFIG, NO_RAY, f"model.model={_write(t, 'weights.bin', 'x')}"],
        ["model.model: ", "is a file, not a model directory"],
    ),
    (
        "model-dir-without-config",
        lambda t: ["train", CONFIG, NO_RAY, f"model.model={_no_config_json(t)}"],
        ["model.model: ", "has no config.json"],
    ),
    # 6. learners.device=cuda without CUDA (CUDA_VISIBLE_DEVICES is emptied for every case)
    (
        "device-cuda",
        lambda t: ["train", CONFIG, NO_RAY, "learners.device=cuda"],
        ["learners.device: 'cuda' but torch.cuda.is_available() is False", "allowed here: auto, cpu"],
    ),
    # 7. reporting.run_dir not creatable or writable
    (
        "run-dir-proc",
        lambda t: ["train", CONFIG, NO_RAY, "reporting.run_dir=/proc/x"],
        ["reporting.run_dir: cannot create or write /proc/x"],
    ),
    (
        "run-dir-is-a-file",
        lambda t: ["train", CONFIG, NO_RAY, f"reporting.run_dir={_write(t, 'afile', '')}"],
        ["reporting.run_dir: cannot create or write"],
    ),
    # 8. booleans are no numbers
    (
        "int-true",
        lambda t: ["train", CONFIG, NO_RAY, "training.num_iterations=true"],
        ["training.num_iterations: must be an integer, got the boolean true"],
    ),
    (
        "int-false-replay",
        lambda t: ["train", CONFIG, NO_RAY, "replay.capacity=false"],
        ["replay.capacity: must be an integer, got the boolean false"],
    ),
    (
        "float-true",
        lambda t: ["train", CONFIG, NO_RAY, "training.lr=true"],
        ["training.lr: must be a number, got the boolean true"],
    ),
    # 11. an unreachable Ray address: a deadline, then one line
    (
        "ray-address-refused",
        lambda t: ["train", CONFIG, f"debugging.ray_address=127.0.0.1:{_free_port()}"],
        ["debugging.ray_address: no Ray cluster answers at 127.0.0.1:", "allowed: null"],
    ),
    (
        "object-store-of-a-cluster",
        lambda t: ["train", CONFIG, "debugging.ray_address=auto", "debugging.ray_object_store_mb=512"],
        ["debugging.ray_object_store_mb: sets up a local Ray runtime; a cluster at debugging.ray_address"],
    ),
    (
        "ray-address-malformed",
        lambda t: ["train", CONFIG, "debugging.ray_address=nowhere"],
        ["debugging.ray_address: 'nowhere' is not an address"],
    ),
    # already one line before this change
    ("unknown-key", lambda t: ["train", CONFIG, "training.lrr=1"], ["training.lrr: unknown key; allowed: "]),
    ("unknown-section", lambda t: ["train", CONFIG, "trainin.lr=1"], ["trainin: unknown section; allowed: "]),
    (
        "override-form",
        lambda t: ["train", CONFIG, "training.lr"],
        ["training.lr: overrides look like section.key=value"],
    ),
    (
        "bad-value",
        lambda t: ["train", CONFIG, "training.lr=-3"],
        ["training.lr: Input should be greater than 0"],
    ),
    (
        "cross-field",
        lambda t: ["train", CONFIG, NO_RAY, "env_runners.max_new_tokens=300"],
        ["env_runners.max_new_tokens: must be < env_runners.max_tokens"],
    ),
    ("eval-no-checkpoint", lambda t: ["eval", str(t)], ["checkpoint: ", "has no algorithm.json"]),
    (
        "eval-bad-checkpoint",
        lambda t: ["eval", str(Path(_write(t, "algorithm.json", "{not json")).parent)],
        ["checkpoint: ", "algorithm.json is not a checkpoint's state"],
    ),
    ("report-no-run", lambda t: ["report", str(t)], ["report: ", "has no metrics.jsonl"]),
]


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_code_2(argv, expected, tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "RAY_AUTH_MODE": "disabled"}
    env["ACTORLEARNER_CACHE"] = str(tmp_path / "cache")  # a case that got further would build here
    proc = subprocess.run(
        [sys.executable, "-m", "actorlearner.cli", *argv(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines[0].startswith(PREFIX)
    for part in expected:
        assert part in lines[0]
    assert proc.stdout == ""


# ---- 8. booleans are no numbers, in every section ------------------------------------------------


def _number_fields() -> list[tuple[str, str, str]]:
    return [
        (section, key, kind)
        for section, cls in SECTIONS.items()
        for key, field in cls.model_fields.items()
        if (kind := number_kind(field.annotation)) is not None
    ]


def test_there_are_number_fields_in_most_sections() -> None:
    sections = {section for section, _, _ in _number_fields()}
    assert {"training", "sft", "replay", "env_runners", "learners", "model", "reporting"} <= sections


@pytest.mark.parametrize(("section", "key", "kind"), _number_fields(), ids=lambda v: str(v))
@pytest.mark.parametrize("value", [True, False])
def test_every_number_field_rejects_booleans(section: str, key: str, kind: str, value: bool) -> None:
    config = AlgorithmConfig()
    before = getattr(config.sections[section], key)
    expected = f"^{section}\\.{key}: must be {kind}, got the boolean {str(value).lower()}$"
    with pytest.raises(ConfigError, match=expected):
        config.update(section, **{key: value})
    with pytest.raises(ConfigError, match=expected):
        setattr(config.sections[section], key, value)
    assert getattr(config.sections[section], key) == before


def test_numbers_from_yaml_still_work(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  num_iterations: 7\n  lr: 1\nreplay:\n  capacity: 64\n")
    config = AlgorithmConfig.from_yaml(
        path, ["sft.steps=5", "env_runners.num_tasks=null", "training.synchronous=true"]
    )
    assert config.training.num_iterations == 7 and type(config.training.num_iterations) is int
    assert config.training.lr == 1.0 and config.replay.capacity == 64 and config.sft.steps == 5
    assert config.env_runners.num_tasks is None and config.training.synchronous is True  # bools stay bools


def test_number_kind() -> None:
    assert number_kind(int) == "an integer" and number_kind(int | None) == "an integer"
    assert number_kind(float) == "a number" and number_kind(float | None) == "a number"
    assert number_kind(bool) is None and number_kind(str) is None and number_kind(tuple[float, float]) is None


# ---- 9. a misspelled builder section -------------------------------------------------------------


def test_misspelled_section_lists_the_sections() -> None:
    config = AlgorithmConfig()
    with pytest.raises(
        AttributeError,
        match=r"no section or attribute 'trainin'; did you mean 'training'\? sections: environment, ",
    ):
        config.trainin(lr=1e-4)
    assert not hasattr(config, "nope")
    config.training(lr=1e-3)
    for twin in (pickle.loads(pickle.dumps(config)), copy.deepcopy(config), config.copy()):
        assert twin.training.lr == 1e-3  # copying looks up dunders: they are not taken for sections


# ---- 5, 7, 11 in Python --------------------------------------------------------------------------


def test_model_path_is_checked_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^model\.model: .*/missing: the directory does not exist"):
        AlgorithmConfig().model(model=str(tmp_path / "missing"))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert AlgorithmConfig().model(model=str(tmp_path / "m")).model.model == str(tmp_path / "m")
    assert AlgorithmConfig().model(model="tiny").model.model == "tiny"
    assert AlgorithmConfig().model(model="org/name").model.model == "org/name"  # maybe a hub id


def test_validate_checks_the_env_config_before_anything_starts(tmp_path: Path) -> None:
    config = AlgorithmConfig().reporting(run_dir=str(tmp_path)).env_runners(num_env_runners=0)
    assert config.validate() is config
    with pytest.raises(
        ConfigError, match=r"^environment\.env_config: .* takes no 'bogus'; allowed: .*max_operand"
    ):
        config.environment(env_config={"bogus": 1}).validate()


def test_run_dir_check(tmp_path: Path) -> None:
    check_run_dir(str(tmp_path / "a" / "b"), "reporting.run_dir")
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^reporting\.run_dir: cannot create or write"):
        check_run_dir(str(tmp_path / "file" / "sub"), "reporting.run_dir")


def test_ray_address_check_has_a_deadline() -> None:
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"^debugging\.ray_address: no Ray cluster answers"):
        check_ray_address(f"127.0.0.1:{_free_port()}", "debugging.ray_address", timeout_s=2.0)
    assert time.monotonic() - start < 10
    check_ray_address(None, "debugging.ray_address")
    check_ray_address("auto", "debugging.ray_address")


# ---- 10. wall-clock time on every metrics record --------------------------------------------------


def test_every_metrics_record_has_wall_clock_time(tmp_path: Path) -> None:
    logger = MetricsLogger(tmp_path, tensorboard=False)
    before = time.time()
    logger.log(1, {"phase": "sft", "sft/loss": 1.5})
    logger.log(2, {"phase": "rl", "learner/loss": float("nan")})
    logger.close()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [list(r)[:2] for r in records] == [["step", "time"]] * 2
    assert all(before - 1 <= r["time"] <= time.time() + 1 for r in records)
    assert records[0]["time"] <= records[1]["time"]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[1])["learner/loss"] is None


def test_yaml_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: not valid YAML: line 3, column 1: .*line 2, column 7"):
        AlgorithmConfig.from_yaml(path)
    with pytest.raises(ConfigError, match=r"^sft\.steps: '\{a:' is not valid YAML"):
        AlgorithmConfig().update_from_overrides(["sft.steps={a:"])
    assert yaml.safe_load("[1, 2]") == [1, 2]
