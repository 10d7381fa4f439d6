"""Config sections of the run itself: where results go (``reporting``), seeds and Ray (``debugging``).

Defined here, below :mod:`actorlearner.config`, so that :mod:`actorlearner.preflight` and the
runtime can be typed against them without importing the config builder.
"""

from __future__ import annotations

from pydantic import Field

from actorlearner.core.config import Section


class ReportingConfig(Section):
    """Where results go."""

    run_dir: str = Field("runs", description="Parent folder of run directories.")
    name: str | None = Field(None, description="Run name; default: env name and a timestamp.")
    progress: bool = Field(True, description="Show a progress bar.")
    tensorboard: bool = Field(True, description="Write TensorBoard event files.")
    log_samples: int = Field(
        1,
        ge=0,
        description="Groups per learner draw, and dropped groups between draws, written whole to "
        "RUN_DIR/samples.jsonl for `actorlearner view` (0: none).",
    )
    checkpoint_interval: int = Field(
        10,
        ge=0,
        description="Save RUN_DIR/checkpoint_NNNNNN every N iterations (0: only at the end and on a signal).",
    )
    keep_checkpoints: int = Field(
        3, ge=0, description="Keep the newest K periodic checkpoints, delete older ones (0: keep all)."
    )
    resume: bool = Field(
        False,
        description="Continue the existing run directory reporting.name (set by `train --resume RUN_DIR`); "
        "else a name whose directory holds a run gets a suffix (-2, -3...).",
    )


class DebuggingConfig(Section):
    """Seeds and Ray set-up."""

    seed: int = Field(0, ge=0, description="Seeds tasks, sampling and model init.")
    ray_address: str | None = Field(None, description="Connect to this Ray cluster; default: start local.")
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray runtime.")
    ray_object_store_mb: int | None = Field(
        None,
        ge=64,
        description="Object store of the local Ray runtime, in MiB (default: Ray's, about 30% of memory); "
        "not with ray_address.",
    )
    ray_preallocate_object_store: bool = Field(
        False,
        description="Touch every page of the local object store when Ray starts, so that each weights "
        "version is written without page faults (docs/cluster.md#weight-sync-p7); start-up takes "
        "about 2 s more per GiB and the memory stays in use: set ray_object_store_mb with it. Not "
        "with ray_address.",
    )
    deterministic: bool = Field(
        False,
        description="Reproducible runs: two runs with one seed give the same metrics and weights, and a "
        "resumed run continues exactly. Needs env_runners.num_env_runners=0 (local mode); plays the "
        "synchronous schedule with generation in lockstep (docs/faults.md#deterministic-runs).",
    )
