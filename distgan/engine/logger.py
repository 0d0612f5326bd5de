"""TensorBoard scalars, sample grids and config text; a progress bar or periodic lines on the console."""

from __future__ import annotations

import sys
import time
from typing import Optional

import torch
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm


def print_line(line: str) -> None:
    """A progress line on stdout; not print(), which Ray Train workers echo twice on the driver."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class RunLogger:
    """Rank 0 only. Scalars go under the names the step returns (loss/critic, wasserstein, ...)."""

    def __init__(self, log_dir: str, total_steps: int, start_step: int, progress: bool,
                 labels: tuple[tuple[str, str], ...] = (("d", "loss/critic"), ("g", "loss/generator"))):
        # purge_step: TensorBoard drops what an earlier attempt logged past the resumed step (all, from scratch)
        self.start_step, self.labels = start_step, labels
        self.writer = SummaryWriter(log_dir=log_dir, purge_step=start_step + 1 if start_step else 0)
        interactive = progress and sys.stderr.isatty()
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True) if interactive else None
        self.last_line = time.time()

    def restart_at(self, step: int) -> None:
        """After a rollback, TensorBoard drops what was logged past step (marker in this file: docs/workarounds.md)."""
        marker = step + 1
        writer = self.writer.file_writer
        writer.add_event(Event(step=marker, file_version="brain.Event:2"))
        writer.add_event(Event(step=marker, session_log=SessionLog(status=SessionLog.START)))
        writer.flush()

    def config(self, yaml_text: str) -> None:
        """The config as text at this attempt's first step: a resume may change it."""
        self.writer.add_text("config", "```\n" + yaml_text + "\n```", self.start_step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def images(self, step: int, images: torch.Tensor, tag: str = "samples/fixed_latents") -> None:
        self.writer.add_image(tag, grid(images), step)
        self.writer.flush()

    def progress(self, step: int, total: int, values: dict[str, float]) -> None:
        text = " ".join(f"{label}={values[key]:.3f}" for label, key in self.labels) + (
            f" img/s={values['perf/images_per_s']:.0f}"
            f" workers={values['dist/world_size']:.0f}x{values['dist/batch_per_rank']:.0f}")
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix_str(text)
        else:
            print_line(f"step {step}/{total} {text}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.writer.close()


def grid(images: torch.Tensor, nrow: Optional[int] = None) -> torch.Tensor:
    """Images in [-1, 1] -> one grid image in [0, 1]."""
    # imported here: torchvision pulls in torch._dynamo (~2.5 s), which only the image-drawing rank should pay
    from torchvision.utils import make_grid

    nrow = nrow or max(1, int(images.shape[0] ** 0.5))
    return make_grid(images.detach().float().cpu().clamp(-1, 1).add(1).div(2), nrow=nrow, padding=2)
