"""python -m distgan.bench: a few steps of each mode; the JSON has every field docs/benchmarks.md reads (no time is
asserted: timings belong to benchmarks, not tests)."""

import json
import re
import subprocess
import sys

from conftest import ROOT, TINY_MODEL, run_module
from ray_cluster import ENV
from distgan.data.stream import loader_workers


def test_bench_smoke(tmp_path, demo_cache):
    out = tmp_path / "bench.json"
    result = run_module("distgan.bench", "--steps", "2", "--warmup", "1", "--repeats", "1", "--modes",
                        "local,plain,eval", *TINY_MODEL,
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
    host = local["host"]  # the host counters over the timed steps (Linux /proc)
    assert host["minor_faults_per_step"] >= 0 and host["cpu_wait_ms_per_step"] >= 0
    assert host["others_cpu_ms_per_step"] >= 0 and isinstance(host["top_others"], dict)
    assert host["children_cpu_ms_per_step"] >= 0  # the loader's processes, apart from the others
    assert plain["host"]["minor_faults_per_step"] >= 0 and plain["images_per_s"] == plain["steps_per_s"] * 16 * 3
    assert (data["warmup"], data["repeats"], data["modes"]) == (1, 1, ["local", "plain", "eval"])
    assert data["config_summary"].endswith("fp32, channels_last False, gemm_first_conv False, compile False, "
                                           "cuda_graph False, fused_activations False, gp_every 1")
    assert "local / plain:" in result.stdout and "loader alone" in result.stdout and "page faults/step" in result.stdout


def test_the_plain_loop_alone_needs_no_data(tmp_path):
    """--modes plain reads no shards (its images are made in memory), so a config's missing data is no error."""
    out = tmp_path / "bench.json"
    result = run_module("distgan.bench", "--steps", "1", "--warmup", "0", "--repeats", "1", "--modes", "plain",
                        "data.source=/nonexistent/shards", "model.width=4", "model.z_dim=8", "model.image_size=16",
                        "train.batch_size=4", "train.fresh_real_per_critic_step=false", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    plain = json.loads(out.read_text())["plain"]
    assert plain["images_per_s"] == plain["steps_per_s"] * 4  # one real batch per generator step


def test_cuda_graph_probe_runs_its_eager_half_on_a_cpu(tmp_path):
    """benchmarks/cuda_graph_probe.py is for a GPU session (benchmarks/gpu_session.sh), where a broken script costs
    scarce device time: its eager half, distgan's critic update on static buffers, runs here."""
    out = tmp_path / "probe.json"
    result = subprocess.run([sys.executable, "benchmarks/cuda_graph_probe.py", "--config", "configs/demo.yaml",
                             "train.device=cpu", *TINY_MODEL,
                             "train.batch_size=8", "model.critic_dropout=0.3", "--updates", "3", "--json", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and len(data["eager_ms"]) == 2 and min(data["eager_ms"]) > 0
    assert data["graph_ms"] == [] and "ratio" not in data
    loss, penalty, wasserstein, norm = data["reference"]
    assert abs(loss - (-wasserstein + 10.0 * penalty)) < 1e-4 and penalty > 0 and norm > 0  # demo: gp_weight 10
    # the GPU's check that a replay computes the update rests on restoring the state: here an eager rerun from
    # the restored state (weights, Adam, latents' and dropout's generators) must repeat the update exactly
    assert data["replay"] == data["reference"] and data["replay_weights_difference"] == 0.0
    assert "eager only" in result.stdout


def test_profile_step_prints_the_step_time_split(tmp_path):
    """benchmarks/profile_step.py, also run by gpu_session.sh: the top ops, then the per-step line docs/benchmarks.md
    reads (wall time, host time in ops; the GPU's busy time and kernel count on a GPU)."""
    result = subprocess.run([sys.executable, "benchmarks/profile_step.py", "--config", "configs/demo.yaml",
                             "train.device=cpu", *TINY_MODEL,
                             "train.batch_size=8", "--steps", "2", "--top", "5"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "aten::convolution_backward" in result.stdout
    line = next(x for x in result.stdout.splitlines() if x.startswith("per step, under the profiler:"))
    wall, host = (float(v) for v in re.findall(r"([0-9.]+) ms", line))
    assert wall > 0 and host > 0 and "GPU" not in line


def test_loader_workers_follow_the_cores():
    assert loader_workers(-1, 2) == 0  # a 2-core machine decodes in the training process
    assert loader_workers(-1, 7) == 5  # a GPU worker with 7 CPUs
    assert loader_workers(-1, 64) == 8
    assert loader_workers(3, 2) == 3  # data.num_workers overrides


def test_bench_ray_modes_on_a_two_node_cluster(ray_cluster, tmp_path, demo_cache):
    """ray1 on the session's 2-node cluster (2 CPUs a node): its one worker gets a node's CPUs, not the cluster's
    (that would fit no node), and local_beside_ray times local mode beside the joined cluster."""
    out = tmp_path / "bench.json"
    result = ray_cluster.run(
        [sys.executable, "-m", "distgan.bench", "--steps", "2", "--warmup", "1", "--repeats", "1", "--modes",
         "ray1,local_beside_ray", *TINY_MODEL, "data.demo_images=512",
         f"data.cache_dir={demo_cache}", "train.batch_size=16", "--json", str(out)],
        env={**ENV, "RAY_ADDRESS": ray_cluster.address}, timeout=300, cwd=ROOT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    data = json.loads(out.read_text())
    ray1, beside = data["ray1"], data["local_beside_ray"]
    assert ray1["cpus_per_worker"] == 2 and ray1["threads"] >= 1  # the test cluster runs with OMP_NUM_THREADS=1
    for mode in (ray1, beside):
        assert mode["steps_per_s"] > 0 and set(mode["split"]) == {"data", "critic", "allreduce", "generator"}
        assert mode["host"]["minor_faults_per_step"] >= 0 and mode["host"]["cpu_wait_ms_per_step"] >= 0
    assert "ray1 / local_beside_ray:" in result.stdout


def test_the_plain_loop_is_distgans_model_batch_and_real_batches(tiny_config):
    """The baseline does the same work as distgan's step: the same FLOPs per generator step (same networks,
    channels included, batch and n_critic), and one real batch per critic update, or one per generator step with
    train.fresh_real_per_critic_step=false."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from plain_wgangp import plain_step

    from distgan.engine.distributed import Dist
    from distgan.engine.flops import count_flops, count_step_flops
    from distgan.engine.state import TrainState
    from distgan.engine.step import train_step

    class CountDraws(TorchDispatchMode):
        """How many real batches the plain loop draws: its only randint."""
        draws = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.draws += func._overloadpacket.__name__ == "randint"
            return func(*args, **(kwargs or {}))

    for fresh in (True, False):
        cfg = tiny_config("model.channels=1", "train.n_critic=3", "train.batch_size=8",
                          f"train.fresh_real_per_critic_step={fresh}", "model.critic_dropout=0.3")
        m, t = cfg.model, cfg.train
        state = TrainState.create(cfg, torch.device("cpu"), Dist())
        ours = count_step_flops(state, lambda: train_step(state, lambda: torch.rand(8, 1, 16, 16) * 2 - 1, t, Dist()))
        step = plain_step(m.image_size, m.width, m.z_dim, t.batch_size, t.n_critic, torch.device("cpu"),
                          dropout=m.critic_dropout, channels=m.channels, fresh_real=fresh)
        assert count_flops(step) == ours
        with CountDraws() as counter:
            step()
        assert counter.draws == (3 if fresh else 1)


def test_mfu_peaks_by_device_name():
    """perf/mfu divides by the dense peak of the GPU torch names: the NVL and PCIe parts have their own (an SXM
    H100's would understate their MFU by 1.18x and 1.31x); an unknown GPU gets none, so no MFU is logged."""
    from distgan.engine.flops import peak_of

    assert peak_of("NVIDIA H100 80GB HBM3", bf16=True, tf32=True) == 989e12
    assert peak_of("NVIDIA H100 NVL", bf16=True, tf32=True) == 835e12
    assert peak_of("NVIDIA H100 PCIe", bf16=False, tf32=True) == 378e12
    assert peak_of("NVIDIA H200 NVL", bf16=False, tf32=False) == 60e12
    assert peak_of("NVIDIA H200", bf16=True, tf32=True) == 989e12
    assert peak_of("NVIDIA A100-SXM4-80GB", bf16=False, tf32=True) == 156e12
    assert peak_of("NVIDIA L4", bf16=True, tf32=True) is None
