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
ZIP_MAGIC = b"PK\x03\x04"
REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # torch names the type it refused this way


def load_trusted(source: Union[str, Path, bytes, BinaryIO], name: str) -> Any:
    """torch.load on the CPU with weights_only=True; a file holding another type raises UnsafeFile naming it."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes() if not hasattr(source, "read") \
        else source.read()
    if data[:4] != ZIP_MAGIC:  # torch.save writes zip archives: anything else is damaged or another kind of file
        raise pickle.UnpicklingError("not a file torch.save wrote (not a zip archive)")
    try:
        with torch.serialization.safe_globals(NUMPY_TYPES):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # a whole archive whose pickle the restricted unpickler refuses: written to run something, not cut short
        refused = REFUSED_GLOBAL.search(str(exc))
        what = refused.group(1) if refused else "pickle instructions beyond data (" + " ".join(
            str(exc).split("WeightsUnpickler error:", 1)[-1].split("Check the documentation")[0].split()).lower() + ")"
        raise UnsafeFile(f"{name} holds {what}, which distgan refuses to load: unpickling it could run code "
                         f"(distgan's own files hold only tensors, numbers, strings and numpy arrays)") from None
