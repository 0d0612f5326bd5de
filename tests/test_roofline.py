"""benchmarks/roofline.py: its fake-tensor trace is the step that really runs, op for op, with the FLOPs distgan
counts; the bytes and the bounds are computed as its docstring says."""

import json
import sys

import torch

from distgan.engine.distributed import Dist
from distgan.engine.flops import count_step_flops
from distgan.engine.state import TrainState
from distgan.engine.step import train_step
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import roofline  # noqa: E402


def test_the_trace_is_the_real_step(tiny_config, tmp_path):
    cfg = tiny_config("model.critic_dropout=0.3", "speed.precision=auto")
    speed = roofline.cuda_fast_path(cfg)
    assert (speed.bf16, speed.channels_last, speed.fused_adam, speed.gemm_first_conv) == (True, True, True, True)
    traced = roofline.trace_step(cfg, speed)
    computed = roofline.trace_step(cfg, speed, fake=False)
    assert [(op.name, op.flops) for op in traced] == [(op.name, op.flops) for op in computed]
    # bytes alike, up to the size of batch norm's saved statistics (the meta kernels' shapes for them differ)
    assert all(abs(a.bytes - b.bytes) <= 0.01 * b.bytes for a, b in zip(traced, computed))
    names = {op.name for op in traced}
    assert {"convolution", "convolution_backward", "mm", "native_dropout", "_fused_adam_"} <= names
    assert not names & {"empty_like", "detach", "view", "_unsafe_view", "permute", "_record_function_enter_new"}
    assert not names & {"randn", "rand"}  # latents and alphas: drawn by the host, from a CPU generator
    phases = {op.phase for op in traced}
    assert phases == {"critic: fakes, real+fake forward, losses", "penalty: critic forward at x_hat",
                      "penalty: input gradient (create_graph)", "critic: one backward, with the penalty's double "
                      "backward", "optimizer steps", "generator update, metrics, EMA"}
    assert {op.name for op in traced if op.phase == "optimizer steps"} == {"_fused_adam_", "_foreach_add_"}

    # the FLOPs are those distgan counts for the step it trains (on the CPU's own settings: FLOPs do not depend
    # on precision or layout)
    state = TrainState.create(cfg, torch.device("cpu"), Dist())
    real = torch.rand(16, 3, 16, 16) * 2 - 1
    train_step(state, lambda: real, cfg.train, Dist())
    counted = count_step_flops(state, lambda: train_step(state, lambda: real, cfg.train, Dist()))
    assert sum(op.flops for op in traced) == counted > 0

    out = tmp_path / "roofline.json"
    assert roofline.main(["--config", "configs/demo.yaml", "model.width=8", "model.image_size=16",
                          "train.batch_size=16", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["precision"] == "bf16" and result["kernels"] > 100
    assert 0 < result["eager_mfu_bound"] < result["fused_mfu_bound"] <= 1
    assert sum(row["kernels"] for row in result["by_phase"].values()) == result["kernels"]


def test_memory_span_counts_each_stored_byte_once():
    x = torch.zeros(4, 3, 8, 8)
    assert roofline.memory_span(x) == x.numel() * 4
    assert roofline.memory_span(x.permute(0, 2, 3, 1)) == x.numel() * 4
    assert roofline.memory_span(torch.zeros(4, 1, 1, 1).expand(4, 3, 8, 8)) == 4 * 4  # broadcast alphas
    windows = torch.zeros(10, dtype=torch.bfloat16).unfold(0, 4, 1)  # 7 overlapping windows of 4
    assert roofline.memory_span(windows) == 10 * 2
    assert roofline.memory_span(torch.zeros(0, 3)) == 0


def test_bounds():
    ops = [roofline.Op("convolution", 2 * 10**12, 10**9), roofline.Op("mul", 0, 3 * 10**9),
           roofline.Op("convolution_backward", 10**12, 4 * 10**9)]
    result = roofline.roofline(ops, peak_flops=1e15, bandwidth=1e12)
    # each op at the slower of its compute and its memory time: 2 ms, 3 ms, 4 ms
    assert abs(result["eager_seconds"] - 9e-3) < 1e-12
    assert abs(result["fused_seconds"] - 6e-3) < 1e-12
    assert abs(result["compute_seconds"] - 3e-3) < 1e-12
    assert abs(result["eager_mfu_bound"] - 3 / 9) < 1e-9 and abs(result["fused_mfu_bound"] - 3 / 6) < 1e-9
    assert list(result["by_op"]) == ["convolution_backward", "mul", "convolution"]
    assert result["kernels"] == 3 and result["bytes"] == 8 * 10**9


def test_bytes_are_what_a_kernel_must_touch():
    recorder = roofline.OpRecorder()
    x, y = torch.zeros(100), torch.zeros(100)
    a, b = torch.zeros(10), torch.zeros(10)
    grad_out, inp, w = torch.zeros(2, 4, 6, 6), torch.zeros(2, 3, 8, 8), torch.zeros(4, 3, 3, 3)
    with recorder:
        torch.zeros_like(x)  # its input gives only the shape: a write of 400 bytes
        y.copy_(x)  # the destination is overwritten, not read
        torch._foreach_add_([a, b], 1.0)  # returns nothing, writes both in place
        torch.ops.aten.convolution_backward(grad_out, inp, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                            [True, False, False])  # no weight gradient: the input is not read
    sizes = {op.name: op.bytes for op in recorder.ops}
    assert sizes == {"zeros_like": 400, "copy_": 800, "_foreach_add_": 160,
                     "convolution_backward": 4 * (2 * 4 * 6 * 6 + 4 * 3 * 3 * 3 + 2 * 3 * 8 * 8)}
