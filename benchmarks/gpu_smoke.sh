#!/usr/bin/env bash
# The GPU path end to end, for a user with an NVIDIA GPU. CI never runs it (no GPU there), and
# neither did the authors: docs/cluster.md says what was and was not run.
#
# Run from the repository root:   bash benchmarks/gpu_smoke.sh
# It builds its own venv (.venv-gpu; VENV=... to change) with CUDA torch and vLLM from the package
# index, then runs four short jobs on the embedded tiny model and prints PASS/FAIL for each:
#   1. the learner on CUDA, HF engine in the runners (Ray);
#   2. a group of 2 learners over NCCL (skipped with fewer than 2 GPUs);
#   3. the vLLM engine on the GPU, in local mode (on Ray, runners get no GPU yet);
#   4. the weight-sync benchmark (P7) with the learner on CUDA.
# Exit code: 0 if every job that ran passed, 1 otherwise, 2 without a GPU.
set -uo pipefail

if ! nvidia-smi >/dev/null 2>&1; then
  echo "gpu_smoke: no NVIDIA GPU here (nvidia-smi failed); nothing to check" >&2
  exit 2
fi
VENV=${VENV:-.venv-gpu}
if [ ! -x "$VENV/bin/actorlearner" ]; then
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q -e '.[dev,vllm]' || exit 1
fi
GPUS=$("$VENV/bin/python" -c "import torch; print(torch.cuda.device_count())")
echo "gpu_smoke: torch sees $GPUS CUDA device(s)"
[ "$GPUS" -ge 1 ] || { echo "gpu_smoke: torch.cuda.device_count() is 0 (a CPU torch in $VENV?)" >&2; exit 1; }

RUNS=$(mktemp -d)
SMOKE=(
  "reporting.run_dir=$RUNS" "reporting.progress=false"
  "training.num_iterations=3" "training.time_budget_s=null" "training.train_batch_groups=4"
  "sft.steps=20" "sft.num_demos=256" "evaluation.num_episodes=16" "evaluation.initial_episodes=8"
)
failed=0
job() {  # name, then the actorlearner train arguments
  local name=$1; shift
  if "$VENV/bin/actorlearner" train "$@" >"$RUNS/$name.log" 2>&1; then
    echo "PASS $name"
  else
    echo "FAIL $name (log: $RUNS/$name.log)"; failed=1
  fi
}

job cuda-learner configs/calculator.yaml "${SMOKE[@]}" learners.device=cuda \
  env_runners.num_env_runners=1 reporting.name=cuda-learner
if [ "$GPUS" -ge 2 ]; then
  job nccl-group configs/calculator.yaml "${SMOKE[@]}" learners.device=cuda learners.num_learners=2 \
    learners.backend=nccl env_runners.num_env_runners=1 reporting.name=nccl-group
else
  echo "SKIP nccl-group (needs 2 GPUs)"
fi
job vllm-gpu configs/calculator_vllm.yaml "${SMOKE[@]}" env_runners.num_env_runners=0 \
  learners.num_learners=1 learners.device=cuda reporting.name=vllm-gpu \
  "env_runners.engine_options={max_model_len: 256, dtype: bfloat16}"
if "$VENV/bin/python" benchmarks/weight_sync.py --out "$RUNS/weight_sync.json" >"$RUNS/weight_sync.log" 2>&1; then
  echo "PASS weight-sync"; grep '^|' "$RUNS/weight_sync.log"
else
  echo "FAIL weight-sync (log: $RUNS/weight_sync.log)"; failed=1
fi
exit $failed
