#!/usr/bin/env bash
# One GPU session, one command (docs/benchmarks.md): the seed config (64 px, width 64, batch 512, n_critic 3) in
# local mode, bf16 with the CUDA graph and the fused activations, against the plain loop in bf16 and fp32, and
# without each; the batch sweep and the scaling model built from it; the lazy penalty; the CUDA checks of the
# fast path (graph and fused kernels included). The most wanted numbers come first, so a run cut short still has
# them. Results (logs and JSON) go to $OUT/gpu-session.tar.gz (default OUT: gpu-out/), updated after every
# step: a device call brings back at most 8 files, and a run cut short keeps what it finished.
# Run from the repository root on a CUDA machine (about 4.5 minutes planned; not yet run, 2026-12-07):
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
# 1. the headline: the seed config in bf16 with everything on (graph, fused activations: auto on CUDA) against the
#    plain loop in bf16 and in fp32, then the same without the graph
run bf16 100 speed.precision=bf16 --modes local,plain
run plain-fp32 60 speed.precision=fp32 --modes plain
run bf16-no-graph 60 speed.precision=bf16 speed.cuda_graph=false --modes local
run bf16-no-fused 60 speed.precision=bf16 speed.fused_activations=false --modes local
# 2. the scaling curve: per-worker batch 64 to 2048, with and without the graph (benchmarks/cost_model.py reads it)
run sweep 150 speed.precision=bf16 --steps 15 --batch-sweep 64,128,256,512,2048
python3 benchmarks/cost_model.py "$RESULTS/bench-sweep.json" > "$RESULTS/cost-model.txt" 2>&1
cat "$RESULTS/cost-model.txt"
snapshot
# 3. the lazy penalty's speed on the GPU
run bf16-gp-every-4 60 speed.precision=bf16 train.gp_every=4 --modes local
# 4. the math of the graph and the fused kernels on the GPU
echo "=== checks ($(date -u +%T))"
timeout 150 python3 benchmarks/gpu_checks.py --json "$RESULTS/checks.json" ${CHECKS_ARGS:-} 2>&1 \
    | grep -v "^\s*$" | tail -12 | tee "$RESULTS/checks.log"
snapshot
# the issue's goals, as ratios of this run's numbers
python3 - "$RESULTS" <<'PY' | tee "$RESULTS/goals.txt"
import json, sys
from pathlib import Path
r = Path(sys.argv[1])
load = lambda name: json.loads((r / f"bench-{name}.json").read_text()) if (r / f"bench-{name}.json").exists() else {}
bf16, plain32, sweep = load("bf16").get("local", {}), load("plain-fp32").get("plain", {}), load("sweep")
if bf16.get("mfu"):
    print(f"MFU bf16, batch 512, graph: {bf16['mfu'] * 100:.1f}% (goal >= 30%)")
if bf16 and plain32:
    print(f"bf16 / plain fp32 images/s: {bf16['images_per_s'] / plain32['images_per_s']:.2f}x (goal >= 3x)")
rows = {(x["batch"], x["cuda_graph"]): x["images_per_s"] for x in sweep.get("batch_sweep", [])}
for graph in (True, False):
    if (64, graph) in rows and (512, graph) in rows:
        print(f"batch 64 / batch 512 per-worker images/s, {'graph' if graph else 'eager'}: "
              f"{rows[64, graph] / rows[512, graph]:.2f} (goal >= 0.5 with the graph)")
PY
date -u
snapshot
ls -la "$RESULTS" "$OUT"
