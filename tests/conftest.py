import os
import sys
from pathlib import Path

import pytest

from distgan.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> str:
    """One demo-data cache for the whole session (tests never touch the user's ~/.cache)."""
    return str(tmp_path_factory.mktemp("demo-cache"))


@pytest.fixture
def tiny_config(demo_cache, tmp_path):
    """A config factory: tiny models at 16 px on the demo faces, in a fresh run root."""

    def make(*overrides: str):
        base = [
            "model.z_dim=16", "model.width=8", "model.image_size=16", "model.critic_dropout=0.0",
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
