"""Token authentication for the private local Ray cluster, its token file private to its user
(docs/workarounds.md)."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def token_path() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "distgan" / "ray-auth-token"


def ensure_token_file(path: Path) -> str:
    """A random token in path, a regular file of this user's that only they can read: "kept", "created", or
    "replaced" (one that was empty, readable by others, a link or not theirs gets a new token, written atomically)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        found = None
    if (found is not None and stat.S_ISREG(found.st_mode) and found.st_uid == os.getuid()
            and not found.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and found.st_size >= 32):
        return "kept"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # replaces a link itself, never its target
    return "created" if found is None else "replaced"


def secure_local_cluster() -> str:
    """Set the auth environment the local cluster inherits (a user's RAY_AUTH_* kept); returns a line to print."""
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    if mode == "disabled":
        return "local Ray cluster: token authentication OFF (RAY_AUTH_MODE=disabled in the environment)"
    if mode == "token" or any(os.environ.get(name) for name in AUTH_VARIABLES[1:]):
        os.environ["RAY_AUTH_MODE"] = "token"
        reread_ray_settings()
        return "local Ray cluster: token authentication on (your RAY_AUTH_* settings name the token)"
    path = token_path()
    how = ensure_token_file(path)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(path))
    reread_ray_settings()
    note = ", a new token: the old file was empty, readable by others or not yours" if how == "replaced" else ""
    return f"local Ray cluster: token authentication on (token in {path}, readable by you only{note})"


def reread_ray_settings() -> None:
    """Re-read RAY_AUTH_MODE, which Ray reads once at import (docs/workarounds.md)."""
    from ray._raylet import Config

    Config.initialize("")
