"""torch.load that never runs code from the file: weights_only=True, with exactly distgan's own types allowed."""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np
import torch

from distgan.errors import UnsafeFile

# what distgan stores beyond tensors, dicts, lists, tuples and numbers: numpy arrays and scalars (metrics)
_multiarray = np.dtype.__module__ == "numpy" and getattr(np, "_core", np.core).multiarray  # numpy 2 renamed core
NUMPY_TYPES = [np.ndarray, np.dtype,
               *{type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.uint8,
                                             np.bool_)},
               # the names numpy 1 and numpy 2 write for the same two functions
               *[(getattr(_multiarray, f), f"{module}.multiarray.{f}") for f in ("_reconstruct", "scalar")
                 for module in ("numpy.core", "numpy._core")]]
REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # torch names the type it refused this way


def load_trusted(source: Union[str, Path, bytes, BinaryIO], name: str) -> Any:
    """torch.load on the CPU with weights_only=True; a file holding another type raises UnsafeFile naming it."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with torch.serialization.safe_globals(NUMPY_TYPES):
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = REFUSED_GLOBAL.search(str(exc))
        if refused is None:  # a damaged file or not a pickle (an opcode the restricted unpickler does not know)
            detail = str(exc).split("WeightsUnpickler error:", 1)[-1].split("Check the documentation")[0].strip()
            raise pickle.UnpicklingError(f"not a file torch.save wrote ({detail.lower()})") from None
        raise UnsafeFile(f"{name} holds {refused.group(1)}, which distgan refuses to load: unpickling it could run "
                         f"code (distgan's own files hold only tensors, numbers, strings and numpy arrays)") from None
