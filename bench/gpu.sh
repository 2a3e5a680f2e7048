#!/usr/bin/env bash
# The GPU path in one command. On a bare H100/H200 machine: installs torch and candorlm from PyPI
# (into .venv-gpu, unless a Python with CUDA torch and candorlm is already there), prepares the
# built-in corpora (People's Daily and Python's docs, a 50k BPE vocabulary), trains the `base`
# preset (about 124M parameters, bf16 autocast, flash SDPA, fused AdamW, torch.compile, pinned
# host batches) for a fixed number of steps, and prints tokens/s, MFU against the GPU's dense bf16
# datasheet peak, and peak memory (bench/gpu_throughput.py). A few minutes, most of it the install.
#
#   bash bench/gpu.sh                              # one GPU
#   NPROC=8 bash bench/gpu.sh                      # every GPU of the node: DDP through torchrun
#   NPROC=8 STRATEGY=fsdp bash bench/gpu.sh        # the same with FSDP2
#   STEPS=50 WARMUP=10 bash bench/gpu.sh           # timed steps (default 30) after warm-up (default 8)
#   bash bench/gpu.sh --dry-run                    # the CPU: a tiny model, a few steps, no install
#
# The dry run is what tests/test_distributed.py runs, so this script cannot rot unnoticed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"  # so that `python -m candorlm` finds this checkout
DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        *) echo "usage: bash bench/gpu.sh [--dry-run]" >&2; exit 2 ;;
    esac
done
WORK="${WORK:-$ROOT/runs/gpu-bench}"
NPROC="${NPROC:-1}"
STRATEGY="${STRATEGY:-ddp}"
if [[ $DRY_RUN == 1 ]]; then STEPS="${STEPS:-3}"; WARMUP="${WARMUP:-1}"; fi
STEPS="${STEPS:-30}"
WARMUP="${WARMUP:-8}"
export CANDORLM_PROGRESS=0
mkdir -p "$WORK"

step() { printf '\n== %s\n' "$*"; }

# ---- 1. Python with torch (CUDA) and candorlm
if [[ $DRY_RUN == 1 ]]; then
    if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON";
    elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python";
    else PY=python3; fi
    step "dry run on the CPU with $PY (no install)"
    "$PY" -c "import torch, candorlm" || { echo "dry run: $PY cannot import torch and candorlm (make install)" >&2; exit 1; }
else
    # A Python whose torch sees CUDA: $PYTHON, else python3. Missing candorlm dependencies go
    # into .venv-gpu, which sees that Python's packages, so a machine's CUDA torch is reused
    # (no 2 GB download); only without any CUDA torch is torch itself installed from PyPI.
    PY="${PYTHON:-python3}"
    has_cuda_torch() { "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }
    has_candorlm() { (cd "$ROOT" && "$1" -c "import candorlm.cli, candorlm.training.trainer") 2>/dev/null; }
    if [[ -x "$ROOT/.venv-gpu/bin/python" ]] && has_cuda_torch "$ROOT/.venv-gpu/bin/python" \
            && has_candorlm "$ROOT/.venv-gpu/bin/python"; then
        PY="$ROOT/.venv-gpu/bin/python"
    elif ! has_cuda_torch "$PY" || ! has_candorlm "$PY"; then
        step "installing what is missing into $ROOT/.venv-gpu"
        if has_cuda_torch "$PY"; then
            "$PY" -m venv --system-site-packages "$ROOT/.venv-gpu"
        else
            python3 -m venv "$ROOT/.venv-gpu"
        fi
        VPY="$ROOT/.venv-gpu/bin/python"
        has_cuda_torch "$VPY" || "$VPY" -m pip install -q torch  # PyPI's Linux x86_64 wheel is the CUDA build
        "$VPY" -m pip install -q -e "$ROOT" || {
            echo "could not install candorlm's dependencies (is PyPI reachable?); install them into $PY and rerun" >&2
            exit 1
        }
        PY="$VPY"
    fi
    has_cuda_torch "$PY" || {
        echo "no CUDA GPU visible to torch $("$PY" -c 'import torch; print(torch.__version__)'); for the CPU use --dry-run" >&2
        exit 1
    }
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
fi
"$PY" -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| GPUs', torch.cuda.device_count())"

# ---- 2. The corpus (prepared once, kept in $WORK)
if [[ $DRY_RUN == 1 ]]; then
    DATA="$WORK/data-dry"
    CORPUS=(builtin:python-docs); VOCAB=512
else
    DATA="$WORK/data"
    CORPUS=(builtin:peoples-daily builtin:python-docs); VOCAB=50257
fi
if [[ ! -f "$DATA/meta.json" ]]; then
    step "preparing ${CORPUS[*]} (BPE, vocabulary $VOCAB) into $DATA"
    "$PY" -m candorlm prepare "${CORPUS[@]}" --out "$DATA" --vocab-size "$VOCAB" --overwrite
fi

# ---- 3. Train base for a fixed number of steps and report
ARGS=(--data "$DATA" --preset base --steps "$STEPS" --warmup "$WARMUP" --strategy "$STRATEGY" --out "$WORK/run")
[[ $DRY_RUN == 1 ]] && ARGS+=(--dry-run)
step "training: $NPROC process(es), strategy $STRATEGY, $WARMUP warm-up + $STEPS timed steps"
if [[ "$NPROC" -gt 1 ]]; then
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}" "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" \
        "$ROOT/bench/gpu_throughput.py" "${ARGS[@]}"
else
    "$PY" "$ROOT/bench/gpu_throughput.py" "${ARGS[@]}"
fi
