"""A short run leaves checkpoints, sample grids and TensorBoard events; the sample CLI reads the checkpoint."""

from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY_MODEL, run_module
from distgan.launch.local import train_local

SCALARS = {
    "loss/critic", "loss/generator", "loss/gradient_penalty", "wasserstein", "grad_norm/critic",
    "grad_norm/generator", "lr/critic", "lr/generator", "perf/images_per_s", "data/bad_samples",
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, demo_cache):
    from distgan.config import load_config

    root = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, [
        *TINY_MODEL, f"data.cache_dir={demo_cache}",
        "data.demo_images=512", "train.batch_size=16", "train.steps=4", "train.n_critic=2", "train.device=cpu",
        "log.every=2", "log.sample_every=2", "log.checkpoint_every=2", "log.num_samples=9", "log.progress=false",
    ])
    train_local(cfg, root / "run")
    return root / "run"


def test_tensorboard_events_read_back(finished_run: Path):
    acc = EventAccumulator(str(finished_run / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    assert SCALARS <= set(tags["scalars"]), SCALARS - set(tags["scalars"])
    assert [e.step for e in acc.Scalars("loss/critic")] == [2, 4]
    assert all(e.value > 0 for e in acc.Scalars("perf/images_per_s"))
    assert acc.Scalars("lr/generator")[0].value == pytest.approx(2e-4)
    images = acc.Images("samples/fixed_latents")
    assert [e.step for e in images] == [2, 4]
    assert images[0].width > 16 * 3 and images[0].height > 16 * 3  # a 3x3 grid of 16 px samples
    assert "config/text_summary" in tags["tensors"]


def test_a_restarted_attempt_replaces_what_the_failed_one_logged_past_its_start(tmp_path):
    """An attempt that died after logging steps 0 (eval.at_start) to 30 is followed by one from scratch (it died
    before its first checkpoint), then by one resumed at step 20: TensorBoard shows each step once, with the latest
    attempt's value, and each attempt's config at the step it started at."""
    from distgan.engine.logger import RunLogger

    def attempt(start: int, steps: list[int], value: float) -> None:
        logger = RunLogger(str(tmp_path), 100, start, progress=False)
        logger.config(f"attempt {value}")
        for step in steps:
            logger.scalars(step, {"loss/critic": value, "dist/world_size": value})
        logger.close()

    attempt(0, [0, 10, 20, 30], 1.0)
    attempt(0, [0, 10, 20], 2.0)
    attempt(20, [30, 40], 3.0)
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0}).Reload()
    for tag in ("loss/critic", "dist/world_size"):  # every tag: TensorBoard's own fallback purges only one
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == [(0, 2.0), (10, 2.0), (20, 2.0), (30, 3.0),
                                                                 (40, 3.0)], tag
    # the text plugin's view: the TensorBoard server's accumulator (the legacy one above purges no tensors)
    served = plugin_event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0}).Reload()
    configs = [(e.step, e.tensor_proto.string_val[0].decode()) for e in served.Tensors("config/text_summary")]
    assert configs == [(0, "```\nattempt 2.0\n```"), (20, "```\nattempt 3.0\n```")]


def test_run_directory_layout(finished_run: Path):
    assert sorted(p.name for p in (finished_run / "checkpoints").iterdir()) == ["ckpt-00000002.pt", "ckpt-00000004.pt"]
    grids = sorted(p.name for p in (finished_run / "samples").iterdir())
    assert grids == ["step-00000002.png", "step-00000004.png"]
    assert Image.open(finished_run / "samples" / grids[-1]).size[0] > 48


def test_sample_cli_writes_grid_and_images(finished_run: Path, tmp_path):
    out = tmp_path / "samples"
    result = run_module("distgan.sample", str(finished_run), "--out", str(out), "--num", "5", "--grid", "16",
                        "--interpolate", "3", "--strips", "2")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["000000.png", "000001.png", "000002.png", "000003.png", "000004.png", "grid.png",
                     "interpolation.png"]
    assert Image.open(out / "000000.png").size == (16, 16)
    assert Image.open(out / "grid.png").size == (4 * 18 + 2, 4 * 18 + 2)  # 4x4 grid, 2 px padding
    assert Image.open(out / "interpolation.png").size == (3 * 18 + 2, 2 * 18 + 2)  # K=3 per strip, 2 strips


@pytest.mark.parametrize("flags, message", [
    (["--interpolate", "0"], "--interpolate takes K >= 2"),
    (["--interpolate", "1"], "--interpolate takes K >= 2"),
    (["--interpolate", "3", "--strips", "0"], "--interpolate takes K >= 2 images per strip, --strips >= 1"),
    (["--strips", "3"], "--strips goes with --interpolate K"),  # not silently ignored
])
def test_sample_flags_that_would_be_ignored_are_refused(finished_run: Path, tmp_path, flags, message):
    import distgan.sample
    from distgan.errors import UserError

    with pytest.raises(UserError, match=f"^{message}"):
        distgan.sample.main([str(finished_run), "--out", str(tmp_path / "o"), *flags])
    assert not (tmp_path / "o").exists()


def test_sample_cli_bad_checkpoint(tmp_path):
    bogus = tmp_path / "ckpt-00000001.pt"
    bogus.write_text("not a checkpoint")
    for target in (tmp_path / "missing", bogus):
        result = run_module("distgan.sample", str(target), "--out", str(tmp_path / "o"))
        assert result.returncode == 2
        assert "Traceback" not in result.stderr and result.stderr.strip().startswith("error:")
    from distgan.engine.checkpoint import load_generator
    from distgan.errors import UserError

    picture = tmp_path / "000000.png"  # a sample handed over for a generator: one clear sentence
    Image.new("RGB", (8, 8)).save(picture)
    with pytest.raises(UserError, match=f"^{picture} is not a distgan checkpoint or generator export: not a file "
                                        r"torch.save wrote \(not a zip archive\)$"):
        load_generator(picture)


def test_images_per_s_counts_training_time_only(tiny_config, tmp_path, monkeypatch):
    """perf/images_per_s leaves out what the loop does besides training: a checkpoint that takes 1000 s (a slow
    bucket) at step 4 must not show as a slow interval at step 6, and a sample grid neither."""
    import time
    from types import SimpleNamespace

    from distgan.engine import loop
    from distgan.engine.checkpoint import FolderCheckpoints

    real_save, skipped = FolderCheckpoints.save, [0.0]

    def slow_save(self, *args):
        skipped[0] += 1000.0  # the loop's clock jumps 1000 s: no waiting, and far above any stall of a busy machine
        real_save(self, *args)

    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: time.perf_counter() + skipped[0]))
    monkeypatch.setattr(FolderCheckpoints, "save", slow_save)
    cfg = tiny_config("train.steps=8", "log.every=2", "log.checkpoint_every=4", "log.sample_every=4")
    train_local(cfg, tmp_path / "run")
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    rate = {e.step: e.value for e in acc.Scalars("perf/images_per_s")}
    # counted in, the checkpoint would make step 6's rate ~10,000x lower than its neighbours'
    assert rate[6] > 0.01 * min(rate[4], rate[8]), rate
