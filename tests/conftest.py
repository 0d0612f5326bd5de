import os
import sys
from pathlib import Path

import pytest

# Both pytest processes, the programs they start and the test cluster's Ray workers share the machine's cores:
# with one OpenMP thread each they take turns instead of spinning against each other (set it to override)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Triton kernels (engine/fused_act.py) run in Triton's interpreter where there is no NVIDIA GPU: their math is tested
# on the CPU. Set before any kernel is defined (they are defined on first use).
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402  (after OMP_NUM_THREADS)

from distgan.config import load_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # tests use benchmarks' helpers (fake_celeba, cost_model)
# the tiny model every CPU test trains (16 px, width 8): one place to change it
TINY_MODEL = ("model.z_dim=16", "model.width=8", "model.image_size=16")


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> str:
    """One demo-data cache for the whole session (tests never touch the user's ~/.cache)."""
    return str(tmp_path_factory.mktemp("demo-cache"))


@pytest.fixture
def tiny_config(demo_cache, tmp_path):
    """A config factory: tiny models at 16 px on the demo faces, in a fresh run root."""

    def make(*overrides: str):
        base = [
            *TINY_MODEL, "model.critic_dropout=0.0",
            "data.source=demo", f"data.cache_dir={demo_cache}", "data.demo_images=512", "data.shuffle_buffer=64",
            "train.batch_size=16", "train.steps=4", "train.n_critic=2", "train.device=cpu", "train.ema_decay=0.9",
            "log.every=1", "log.sample_every=2", "log.checkpoint_every=2", "log.num_samples=16",
            "log.progress=false", f"run.root={tmp_path / 'runs'}", "run.name=t",
        ]
        return load_config(None, base + list(overrides))

    return make


def run_module(module: str, *args: str, timeout: float = 600, env: dict | None = None):
    """python -m MODULE ARGS in a subprocess, from the repository root."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def short_temp_dir() -> Path:
    """A folder with a short path: Ray's socket paths inside it must stay under 107 bytes."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="dgt-", dir="/tmp"))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Every test of the session's Ray cluster runs in one pytest-xdist process (loadgroup), so that one cluster
    serves them all while the other process runs the rest."""
    for item in items:
        if "ray_cluster" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("ray"))
            item.add_marker(pytest.mark.ray)  # pytest -m "not ray": the tests that start no Ray cluster


@pytest.fixture(scope="session")
def ray_cluster():
    """One real 2-node Ray cluster for every test module that needs one (tests/ray_cluster.py)."""
    import shutil

    from ray_cluster import TestCluster

    temp = short_temp_dir()
    cluster = TestCluster(temp)
    yield cluster
    cluster.stop()
    shutil.rmtree(temp, ignore_errors=True)


class TinyFeatures(torch.nn.Module):
    """A stand-in for the Inception network with its contract ((N, 3, 299, 299) in [-1, 1) -> (N, D)), small
    enough for CPU tests: fixed random convolutions on a 64 px copy, pooled to their mean and mean magnitude (so
    that both colour layout and fine detail, blur and noise, move the features)."""

    def __init__(self, width: int = 16):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, width, 3, stride=1, padding=1)
        self.conv2 = torch.nn.Conv2d(width, width, 3, stride=2, padding=1)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / conv.weight[0].numel() ** 0.5)
                conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.adaptive_avg_pool2d(x, 64)
        a = self.conv1(x)
        b = torch.relu(self.conv2(torch.relu(a)))
        return torch.cat([a.mean(dim=(2, 3)), a.abs().mean(dim=(2, 3)), b.mean(dim=(2, 3)), b.abs().mean(dim=(2, 3))], 1) * 4


@pytest.fixture(scope="session")
def tiny_features(tmp_path_factory) -> str:
    """The path of TinyFeatures as a TorchScript file (what eval.weights takes)."""
    path = tmp_path_factory.mktemp("features") / "tiny.pt"
    torch.jit.script(TinyFeatures()).save(str(path))
    return str(path)
