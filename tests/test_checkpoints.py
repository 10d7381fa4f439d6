"""Checkpoints you can bet on: atomic writes, a verified manifest, keep-last-K, resume, signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from actorlearner.core.errors import CheckpointError, ConfigError
from actorlearner.runtime.checkpoint import verify_checkpoint
from tests.conftest import small_config, smoke_overrides

BIN = Path(sys.executable).parent / "actorlearner"
ENV = {**os.environ, "CI": "true", "RAY_AUTH_MODE": "disabled", "CUDA_VISIBLE_DEVICES": ""}


def _overrides(run_dir: Path, name: str, *extra: str) -> list[str]:
    """A smoke budget for ``actorlearner train`` (tiny model, in-process), without TensorBoard."""
    return smoke_overrides(run_dir, name, "reporting.tensorboard=false", "evaluation.num_episodes=2", *extra)


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *argv], capture_output=True, text=True, timeout=600, env=ENV)


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_manifest_catches_a_flipped_byte_and_a_missing_buffer_before_restoring(tmp_path: Path) -> None:
    algo = small_config(tmp_path).build()
    try:
        algo.train()
        good = Path(algo.save(str(tmp_path / "good")))
        verify_checkpoint(good)
        listed = set(json.loads((good / "manifest.json").read_text())["files"])
        assert {"buffer.pkl", "model/config.json", "algorithm.json"} <= listed
        flipped = tmp_path / "flipped"
        shutil.copytree(good, flipped)
        weights = flipped / "model" / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
        no_buffer = tmp_path / "no_buffer"
        shutil.copytree(good, no_buffer)
        (no_buffer / "buffer.pkl").unlink()
        algo.train()
        for damaged, name in ((flipped, "model.safetensors"), (no_buffer, "buffer.pkl")):
            with pytest.raises(CheckpointError, match=name) as err:
                algo.restore(str(damaged))
            assert "\n" not in str(err.value) and isinstance(err.value, ConfigError)
            assert algo.iteration == 2  # nothing was applied
        algo.restore(str(good))
        assert algo.iteration == 1
    finally:
        algo.stop()
    ev = _cli("eval", str(no_buffer), f"reporting.run_dir={tmp_path}")
    assert ev.returncode == 2 and "buffer.pkl" in ev.stderr and len(ev.stderr.strip().splitlines()) == 1


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    algo = small_config(tmp_path).build()
    try:
        algo.train()
        ckpt = Path(algo.save(str(tmp_path / "ckpts" / "ckpt")))
        before = (ckpt / "manifest.json").read_text()
        algo.train()
        real = Path.write_bytes

        def crash(self: Path, data: Any) -> int:
            if self.name == "buffer.pkl":
                real(self, data[: len(data) // 2])
                raise OSError("disk full")
            return real(self, data)

        monkeypatch.setattr(Path, "write_bytes", crash)
        with pytest.raises(OSError, match="disk full"):
            algo.save(str(ckpt))
        monkeypatch.undo()
    finally:
        algo.stop()
    assert [p.name for p in ckpt.parent.iterdir()] == ["ckpt"]  # no partial or temp directory
    assert (ckpt / "manifest.json").read_text() == before
    verify_checkpoint(ckpt)
    assert json.loads((ckpt / "algorithm.json").read_text())["iteration"] == 1


def test_periodic_checkpoints_keep_the_last_k(tmp_path: Path) -> None:
    config = small_config(tmp_path).reporting(name="k", checkpoint_interval=1, keep_checkpoints=2)
    algo = config.build()
    try:
        for _ in range(4):
            algo.train()
        assert algo.checkpoint().endswith("checkpoint_000004")  # already written: not duplicated
        assert algo.latest_checkpoint().endswith("checkpoint_000004")
        algo.save(str(algo.run_dir))  # into a directory that is no checkpoint: merged, nothing deleted
    finally:
        algo.stop()
    names = sorted(p.name for p in algo.run_dir.iterdir() if p.name.startswith(("checkpoint", ".")))
    assert names == ["checkpoint_000003", "checkpoint_000004"]
    verify_checkpoint(algo.run_dir)
    assert len(_records(algo.run_dir / "metrics.jsonl")) == 4 and (algo.run_dir / "config.json").is_file()
    again = config.build()  # the same name again, without resume: a fresh directory
    again.stop()
    assert again.run_dir.name == "k-2"


def test_resume_continues_the_iteration_counter_and_the_metrics(tmp_path: Path) -> None:
    first = _cli("train", "configs/calculator.yaml", *_overrides(tmp_path, "r", "training.num_iterations=2"))
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "r"
    assert (run / "checkpoint_000002" / "manifest.json").is_file()
    resumed = _cli("train", "--resume", str(run), "training.num_iterations=4", "reporting.keep_checkpoints=1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed: " in resumed.stdout
    records = _records(run / "metrics.jsonl")
    assert [r["step"] for r in records if r["phase"] == "rl"] == [1, 2, 3, 4]
    assert sum(r["phase"] == "sft" for r in records) == 3  # one run: SFT did not run again
    assert json.loads((run / "summary.json").read_text())["iterations"] == 4
    assert sorted(p.name for p in run.glob("checkpoint*")) == ["checkpoint_000004"]


def _sigterm_after_first(argv: list[str], metrics: Path, phase: str, timeout: float) -> tuple[int, str]:
    """Runs ``actorlearner ARGV``, sends SIGTERM once ``metrics`` has a ``phase`` record (deadline
    300 s), and waits up to ``timeout`` for it to exit; returns its exit code and stderr."""
    proc = subprocess.Popen(
        [str(BIN), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    try:
        deadline = time.monotonic() + 300
        while not (metrics.is_file() and any(r["phase"] == phase for r in _records(metrics))):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, f"no {phase} record within the deadline"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, stderr


def test_sigterm_finishes_the_iteration_writes_a_checkpoint_and_exits_143(tmp_path: Path) -> None:
    argv = [
        "train",
        "configs/calculator.yaml",
        *_overrides(tmp_path, "s", "training.num_iterations=500", "reporting.checkpoint_interval=0"),
        "--no-initial-eval",
    ]
    returncode, stderr = _sigterm_after_first(argv, tmp_path / "s" / "metrics.jsonl", "rl", timeout=300)
    assert returncode == 143, stderr[-3000:]
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["signal"] == signal.SIGTERM and 1 <= summary["iterations"] < 500
    verify_checkpoint(Path(summary["checkpoint"]))
    assert Path(summary["checkpoint"]).name == f"checkpoint_{summary['iterations']:06d}"


def test_sigterm_during_sft_stops_after_the_chunk_without_a_checkpoint_and_exits_143(tmp_path: Path) -> None:
    argv = [
        "train",
        "configs/calculator.yaml",
        *_overrides(tmp_path, "t", "sft.steps=5000", "reporting.checkpoint_interval=0"),
        "--no-initial-eval",
    ]
    metrics = tmp_path / "t" / "metrics.jsonl"
    returncode, stderr = _sigterm_after_first(argv, metrics, "sft", timeout=120)
    assert returncode == 143, stderr[-3000:]
    assert "SIGTERM: stopped before RL; no checkpoint written" in stderr
    assert "Traceback" not in stderr
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["signal"] == signal.SIGTERM and summary["checkpoint"] is None
    assert summary["iterations"] == 0
    assert not list((tmp_path / "t").glob("checkpoint*"))
    assert sum(r["phase"] == "sft" for r in _records(metrics)) < 5000
