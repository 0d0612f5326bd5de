"""Checkpoints and generator exports, and their crash-safe files: what payloads hold (docs/design.md section 3);
launchers decide only where they go."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from distgan.config import Config, from_dict, stored_dict, to_dict
from distgan.engine.distributed import Dist
from distgan.io.run_folder import RunFolder, write_durably
from distgan.engine.state import TrainState
from distgan.errors import (StorageError, StorageUnreachable, UnreadableFile, UnsafeFile, UserError, first_line,
                            first_sentence)
from distgan.io.retry import DEFAULT_TIMEOUT_S, with_retries
from distgan.io.trusted_load import load_trusted
from distgan.models import Generator, build_models

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT, EXPORT_FORMAT, VERSION = "distgan-checkpoint", "distgan-generator", 1
PATTERN = re.compile(r"^ckpt-(\d+)\.pt$")
EXPORT_PATTERN = re.compile(r"^generator-(\d+)\.pt$")
TMP_SUFFIX = ".tmp"
BEST_FILE = "best.pt"
CHECKPOINT_FILE = "checkpoint.pt"  # in Ray Train's checkpoint_<step>/ folders (launch/ray_worker.py)


# --- the payloads -------------------------------------------------------------------------------------------------
def build_payload(state: TrainState, cfg: Config, ranks: list[dict[str, Any]],
                  metrics: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """A full checkpoint; ranks: every rank's rank_state()."""
    return {"format": CHECKPOINT_FORMAT, "version": VERSION, "step": state.step, "config": stored_dict(cfg),
            "state": state.state_dict(), "ranks": ranks, "metrics": dict(metrics or {})}


def check_payload(payload: Any) -> None:
    """Raises ValueError when payload is not a complete checkpoint of this format."""
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError("not a distgan checkpoint")
    if payload.get("version") != VERSION:
        raise ValueError(f"checkpoint format version {payload.get('version')}, this distgan reads {VERSION}")
    missing = {"step", "config", "state", "ranks"} - set(payload)
    if missing:
        raise ValueError(f"checkpoint lacks {sorted(missing)}")


# what the weights' shapes depend on: a checkpoint whose model differs in one of these cannot be loaded
ARCHITECTURE_KEYS = ("z_dim", "width", "image_size", "channels")


def check_same_model(payload: dict[str, Any], cfg: Config) -> None:
    """A UserError naming the model keys that differ from the checkpoint's, not load_state_dict's traceback."""
    saved, now = payload["config"]["model"], to_dict(cfg)["model"]
    differ = [key for key in ARCHITECTURE_KEYS if saved.get(key) != now[key]]
    if (saved.get("critic_dropout", 0) > 0) != (now["critic_dropout"] > 0):  # a Dropout shifts the layer numbers
        differ.append("critic_dropout")
    if differ:
        said = ", ".join(f"model.{key}={now[key]} (the run's: {saved.get(key)})" for key in differ)
        raise UserError(f"run {cfg.run.name} resumes from step {payload['step']}, whose model differs: {said}; its "
                        f"weights cannot carry over: use another run.name, or the run's model settings")


def restore(state: TrainState, payload: dict[str, Any], dist: Dist, with_rank_state: bool = True) -> bool:
    """Load a checkpoint into state, and each rank's own state if the world size matches (returned)."""
    state.load_state_dict(payload["state"])
    ranks = payload["ranks"]
    if not with_rank_state or len(ranks) != dist.world_size:
        return False
    state.load_rank_state(ranks[dist.rank])
    return True


def generator_export(state: TrainState, cfg: Config, metrics: Optional[dict[str, float]] = None) -> dict[str, Any]:
    weights = {k: v.detach().cpu().clone() for k, v in state.G_ema.state_dict().items()}
    config = stored_dict(cfg)  # ${oc.env:...} values stay expressions: exports are shared
    return {"format": EXPORT_FORMAT, "version": VERSION, "step": state.step, "model": config["model"],
            "config": config, "G_ema": weights, "metrics": dict(metrics or {})}


# --- crash-safe files ---------------------------------------------------------------------------------------------
def write_atomic(path: Path, payload: Any) -> None:
    """torch.save, crash-safe: the final name holds the old file or the whole new one."""
    write_durably(path, lambda f: torch.save(payload, f), tmp_suffix=TMP_SUFFIX)


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete (and return) temporaries of writers killed mid-write."""
    stale = [p for p in directory.glob(f".*{TMP_SUFFIX}") if p.is_file()] if directory.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def read_file(location: str | Path) -> Any:
    """load_trusted of a local path or an fsspec URL: never unpickles code."""
    location = str(location)
    if "://" in location and not location.startswith("file://"):
        import fsspec

        with fsspec.open(location, "rb") as f:
            return load_trusted(f.read(), location)
    return load_trusted(location.removeprefix("file://"), location)


def decode_payload(data: bytes, name: str) -> dict[str, Any]:
    """A full checkpoint from its bytes: load_trusted, then check_payload."""
    payload = load_trusted(data, name)
    check_payload(payload)
    return payload


def read_newest(candidates: list[tuple[int, str, Callable[[], bytes]]]) -> tuple[Optional[int], Optional[dict]]:
    """(step, payload) of the newest candidate that reads back whole, skipping corrupt ones; an unreachable store
    or unsafe file ends the search instead."""
    for step, name, fetch in candidates:
        try:
            return step, decode_payload(fetch(), name)
        except (StorageUnreachable, UnsafeFile):
            raise
        except Exception as exc:
            log.warning("checkpoint %s cannot be read (%s): trying the one before", name, first_line(exc))
    return None, None


def numbered(directory: Path, pattern: re.Pattern) -> list[tuple[int, Path]]:
    """(step, path) of directory's files matching pattern, oldest first."""
    if not directory.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := pattern.match(p.name)))


# --- the local store (run.mode=local, and any shared path) --------------------------------------------------------
class FolderCheckpoints:
    """ckpt-<step>.pt files in one folder, written by rank 0; the newest `keep` kept, and best.pt."""

    def __init__(self, directory: str | Path, keep: int, dist: Optional[Dist] = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S):
        """timeout_s: how long a read waits out I/O errors (run.storage_timeout_s)."""
        self.directory, self.keep, self.dist, self.timeout_s = Path(directory), keep, dist or Dist(), timeout_s
        if self.dist.is_main:
            for p in remove_stale_temporaries(self.directory):
                log.warning("removed %s, left by a checkpoint write that did not finish", p.name)

    def path(self, step: int) -> Path:
        return self.directory / f"ckpt-{step:08d}.pt"

    def steps(self) -> list[int]:
        return [step for step, _ in numbered(self.directory, PATTERN)]

    def load_latest(self) -> Optional[dict[str, Any]]:
        found = numbered(self.directory, PATTERN)
        candidates = [(step, str(path), lambda path=path: with_retries(path.read_bytes, f"reading {path}",
                                                                       self.timeout_s))
                      for step, path in reversed(found)]
        _, payload = read_newest(candidates)
        if payload is not None:
            return payload
        if found:
            raise StorageError(f"none of the {len(found)} checkpoints in {self.directory} can be read")
        return None

    def save(self, step: int, payload: dict[str, Any], metrics: dict[str, float]) -> None:
        if not self.dist.is_main:
            return
        write_atomic(self.path(step), payload)
        prune(numbered(self.directory, PATTERN), self.keep)

    def save_best(self, step: int, payload: dict[str, Any]) -> None:
        """best.pt: the best-evaluated checkpoint, kept besides the newest `keep`."""
        if self.dist.is_main:
            write_atomic(self.directory / BEST_FILE, payload)


def refuse_another_modes_run(run_dir: str, mode: str, layouts: dict[str, str]) -> None:
    """A UserError for a run folder another run.mode wrote: this one would restart it from step 0."""
    folder = RunFolder(str(run_dir))
    if folder.glob(layouts[mode]):
        return
    for other, layout in layouts.items():
        theirs = folder.glob(layout) if other != mode else []
        if not theirs:
            continue
        newest = max(theirs)[len(folder.root.rstrip("/")) + 1:]  # glob gives paths under the folder's own
        raise UserError(f"{folder.location} was trained with run.mode={other} ({newest}), whose checkpoints "
                        f"run.mode={mode} does not resume: rerun it with run.mode={other}, or give another run.name")


def prune(found: list[tuple[int, Path]], keep: int) -> None:
    """Delete all but the newest `keep` of found (oldest first)."""
    for _, path in found[:-keep] if keep else found:
        path.unlink(missing_ok=True)


# --- generator exports --------------------------------------------------------------------------------------------
def write_export(directory: Path, export: dict[str, Any], keep: int, best: bool = False) -> Path:
    """generators/generator-<step>.pt (newest `keep` kept) and, with best=True, also generator-best.pt."""
    path = directory / f"generator-{export['step']:08d}.pt"
    write_atomic(path, export)
    if best:
        write_atomic(directory / "generator-best.pt", export)
    prune(numbered(directory, EXPORT_PATTERN), keep)
    return path


def load_generator(location: str | Path, ema: bool = True) -> tuple[Generator, dict[str, Any]]:
    """A generator (eval mode, CPU) and its file's facts, from an export or a checkpoint (ema=False: raw G)."""
    try:
        data = read_file(location)
    except FileNotFoundError:
        raise UserError(f"{location} does not exist") from None
    except UnsafeFile:
        raise
    except Exception as exc:
        raise UnreadableFile(f"{location} is not a distgan checkpoint or generator export: "
                             f"{first_sentence(exc)}") from None
    kind = data.get("format") if isinstance(data, dict) else None
    if kind not in (EXPORT_FORMAT, CHECKPOINT_FORMAT):
        raise UserError(f"{location} is not a distgan checkpoint or generator export")
    if kind == EXPORT_FORMAT and not ema:
        raise UserError(f"{location} is a generator export (EMA weights only): give a full checkpoint for the "
                        f"raw generator")
    try:  # a file someone else wrote: anything missing, mistyped or oversized is one line, never a traceback
        if kind == EXPORT_FORMAT:
            model, weights = data["model"], data["G_ema"]
            info = {"step": int(data["step"]), "metrics": dict(data["metrics"]),
                    "config": data.get("config") or {"model": model}}
        else:
            model, weights = data["config"]["model"], data["state"]["G_ema" if ema else "G"]
            info = {"step": int(data["step"]), "metrics": {}, "config": data["config"]}
        model_cfg = from_dict({"model": model}).model
        G = generator_within_bounds(model_cfg)
        G.load_state_dict(weights)  # SyncBatchNorm2d and BatchNorm2d share one state layout
    except UserError:
        raise
    except Exception as exc:
        why = f"it lacks {exc}" if isinstance(exc, KeyError) else first_line(exc)
        raise UnreadableFile(f"{location} is not a usable generator: {why}") from None
    info["model"] = model_cfg
    return G.eval(), info


MAX_GENERATOR_BYTES = 8 << 30  # a generator larger than this in a file is refused before it is built


def generator_within_bounds(model_cfg) -> Generator:
    """The generator of model_cfg, counted on the meta device first: a file can name any width."""
    with torch.device("meta"):
        size = sum(p.numel() for p in Generator(model_cfg.z_dim, model_cfg.width, model_cfg.image_size,
                                                model_cfg.channels).parameters()) * 4
    if size > MAX_GENERATOR_BYTES:
        raise ValueError(f"its model needs {size / 2**30:.0f} GiB, more than {MAX_GENERATOR_BYTES >> 30} GiB")
    return Generator(model_cfg.z_dim, model_cfg.width, model_cfg.image_size, model_cfg.channels)


def find_generators(location: str | Path) -> list[str]:
    """[a file] as it is; for a run folder, its generator exports, newest first."""
    import fsspec

    location = str(location)
    fs, path = fsspec.core.url_to_fs(location)
    if fs.isfile(path):
        return [location]
    if not fs.isdir(path):
        raise UserError(f"{location} does not exist")
    folder = path.rstrip("/") + "/generators"
    names = [p.rsplit("/", 1)[-1] for p in fs.glob(folder + "/generator-*.pt")]
    steps = sorted((int(m.group(1)) for n in names if (m := EXPORT_PATTERN.match(n))), reverse=True)
    if not steps:
        raise UserError(f"no generator export in {location} (a run folder has them in generators/ after its first "
                        f"checkpoint; or give a checkpoint file)")
    return [location.rstrip("/") + f"/generators/generator-{step:08d}.pt" for step in steps]


def load_newest_generator(location: str | Path, ema: bool = True) -> tuple[Generator, dict[str, Any], str]:
    """(generator, facts, file) of a file, or of a run folder's newest readable export."""
    candidates = find_generators(location)
    for i, candidate in enumerate(candidates):
        try:
            return (*load_generator(candidate, ema), candidate)
        except UnreadableFile as exc:
            if i + 1 == len(candidates):
                raise
            log.warning("%s: trying the export before it", exc)
    raise AssertionError("unreachable: find_generators returns at least one file")
