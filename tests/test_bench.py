"""python -m distgan.bench: a few steps of the local and plain modes; the JSON has every field docs/benchmarks.md
reads (no time is asserted: timings belong to benchmarks, not tests)."""

import json

from conftest import run_module
from distgan.data.stream import loader_workers


def test_bench_smoke(tmp_path, demo_cache):
    out = tmp_path / "bench.json"
    result = run_module("distgan.bench", "--steps", "2", "--warmup", "1", "--repeats", "1", "--modes",
                        "local,plain,eval", "model.width=8", "model.z_dim=16", "model.image_size=16",
                        "data.demo_images=512", f"data.cache_dir={demo_cache}", "train.batch_size=16",
                        "eval.metrics=[swd]", "eval.num_samples=64", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    local, plain = data["local"], data["plain"]
    for key in ("steps_per_s", "images_per_s", "flops_per_step", "tflops_per_s", "peak_memory_mb",
                "loader_images_per_s", "loader_workers", "rounds"):
        assert key in local, key
    assert local["steps_per_s"] > 0 and plain["steps_per_s"] > 0
    assert local["images_per_s"] == local["steps_per_s"] * 16 * 3  # batch x n_critic (demo config: 3)
    assert local["flops_per_step"] > 1e6 and local["mfu"] is None  # a CPU: no known peak
    assert set(local["split"]) == {"data", "critic", "allreduce", "generator"}
    assert abs(sum(local["split"].values()) - 1) < 1e-6
    assert data["eval"]["num_samples"] == 64
    assert "local / plain:" in result.stdout and "loader alone" in result.stdout


def test_loader_workers_follow_the_cores():
    assert loader_workers(-1, 2) == 0  # a 2-core machine decodes in the training process
    assert loader_workers(-1, 7) == 5  # a GPU worker with 7 CPUs
    assert loader_workers(-1, 64) == 8
    assert loader_workers(3, 2) == 3  # data.num_workers overrides
