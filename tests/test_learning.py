"""Learning: a short CPU run on the demo faces brings samples measurably closer to the data.

Statistic: sliced Wasserstein distance (distgan.evaluation.swd) between 512 generated images and 512 real demo
images, on 256 random projections. The untrained generator gives the baseline; two independent real halves give
the floor. A trained generator must close at least half of the gap between baseline and floor: a generator that
learned nothing, or only moved at random, cannot do that by accident.
The same run evaluates itself during training (eval.*, with the small TinyFeatures network standing in for
Inception): the FID it logs to TensorBoard falls from the untrained generator (step 0) to the end of the run.
"""

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distgan.data.sources import resolve_shards
from distgan.data.stream import RealBatches, ShardStream
from distgan.engine.distributed import Dist
from distgan.engine.state import TrainState
from distgan.evaluation.swd import sliced_wasserstein
from distgan.launch.local import train_local
from distgan.sample import generate


def real_images(cfg, n):
    """n distinct real images (one pass, one batch)."""
    stream = ShardStream(resolve_shards(cfg), n, cfg.model.image_size, seed=1, shuffle_buffer=n)
    return RealBatches(stream, 0, torch.device("cpu"))()


def test_short_run_learns_the_demo_faces(tiny_config, tiny_features, tmp_path):
    cfg = tiny_config("data.demo_images=1024", "model.width=16", "model.z_dim=32", "train.batch_size=32",
                      "train.steps=600", "train.ema_decay=0.9", "log.every=50", "log.sample_every=1000",
                      "log.checkpoint_every=1000", "eval.every=600", "eval.metrics=[fid]", "eval.num_samples=512",
                      f"eval.weights={tiny_features}", "eval.num_real=512")
    real_a, real_b = real_images(cfg, 1024).split(512)
    untrained = TrainState.create(cfg, torch.device("cpu"), Dist()).G_ema
    trained = train_local(cfg, tmp_path / "run").G_ema

    floor = sliced_wasserstein(real_a, real_b)
    before = sliced_wasserstein(generate(untrained, 512, seed=3), real_a)
    after = sliced_wasserstein(generate(trained, 512, seed=3), real_a)
    print(f"SWD real/real {floor:.4f}  untrained {before:.4f}  trained {after:.4f}")
    assert floor < before
    assert after - floor < 0.5 * (before - floor), (floor, before, after)

    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    fid = [(e.step, e.value) for e in acc.Scalars("eval/fid")]
    print(f"eval/fid logged during training: {fid}")
    assert [s for s, _ in fid] == [0, 600]
    assert fid[1][1] < 0.5 * fid[0][1], "FID falls from the untrained generator to the end of the run"
    assert (tmp_path / "run" / "generators" / "generator-best.pt").exists()
    assert (tmp_path / "run" / "checkpoints" / "best.pt").exists()
