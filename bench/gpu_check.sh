#!/usr/bin/env bash
# The GPU check (issue 21): about 5 minutes on one GPU, every figure printed with the card's name.
#
#   bash bench/gpu_check.sh            # results in $OUT (the device tool's folder) or bench/results/
#
# 1. img/s, TFLOP/s and model FLOP utilisation of the MAE training step at 125x125x3, patch 5,
#    a ViT-Base-sized encoder (vit-base: dim 768, depth 12), bf16 autocast: without and with
#    torch.compile (bench/bench_mae.py --mfu);
# 2. the loader in the same run: jets/s from HDF5, Parquet and the sparse copy at 125x125x3 and
#    x8 (bench/bench_datasets.py), beside the trainer's img/s it reports;
# 3. the scaling recipe's epoch time: one pretrain epoch of each encoder size the scaling study
#    uses (vit-nano, vit-micro) on the shipped default data, on the GPU, tracked in a throw-away
#    store.
# Without a CUDA GPU it says so in one line and exits 2: a GPU figure is never estimated on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench/gpu_check.sh: no CUDA GPU here (torch.cuda.is_available() is False); nothing measured" >&2
    exit 2
fi
out=${OUT:-bench/results}
mkdir -p "$out"
log="$out/gpu_check.txt"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db" MAE_TRACKER_CACHE="$work/cache"

{
    echo "# gpu_check $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2> /dev/null || echo '?')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    echo
    echo "## 1. MAE step, 125x125x3 patch 5, vit-base, bf16: eager, then torch.compile"
    timeout 100 "$PY" bench/bench_mae.py --device cuda --no-baseline --skip-visible-vs-all --profile 0 \
        --mfu --mfu-variants vit-base --mfu-batch 128 || echo "(eager step: exit $?)"
    timeout 150 "$PY" bench/bench_mae.py --device cuda --no-baseline --skip-visible-vs-all --profile 0 \
        --mfu --mfu-variants vit-base --mfu-batch 128 --compile || echo "(compiled step: exit $?)"
    echo
    echo "## 2. The loader, same run (CPU side of this machine: $(nproc) cores)"
    timeout 120 "$PY" bench/bench_datasets.py --n3 1500 --n8 600 --seconds 3 || echo "(loader: exit $?)"
    echo
    echo "## 3. The scaling recipe: one pretrain epoch per encoder size on the default data, on the GPU"
    for variant in vit-nano vit-micro; do
        start=$(date +%s.%N)
        timeout 120 "$PY" -m mae_tracker pretrain --variant "$variant" --epochs 1 --device cuda \
            --experiment gpu-check --no-progress > "$work/$variant.log" 2>&1 || echo "($variant: exit $?)"
        end=$(date +%s.%N)
        grep -E "pretrain epoch 0:" "$work/$variant.log" || tail -3 "$work/$variant.log"
        echo "$variant: whole command $("$PY" -c "print(round($end - $start, 1))") s (data load, epoch, evaluation, model logging)"
    done
} 2>&1 | tee "$log"
echo "written: $log"
