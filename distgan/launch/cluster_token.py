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


def ensure_token_file(path: Path) -> bool:
    """A random token in path, owner-only; returns whether its mode had to be narrowed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        loose = path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)
        if loose:
            path.chmod(0o600)
        return bool(loose)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return False


def secure_local_cluster() -> str:
    """Set the auth environment the local cluster inherits (a user's RAY_AUTH_* kept); returns a line to print."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return "local Ray cluster: token authentication OFF (RAY_AUTH_MODE=disabled in the environment)"
    if any(os.environ.get(name) for name in AUTH_VARIABLES[1:]):
        os.environ["RAY_AUTH_MODE"] = "token"
        reread_ray_settings()
        return "local Ray cluster: token authentication on (the token named by RAY_AUTH_TOKEN[_PATH])"
    path = token_path()
    fixed = ensure_token_file(path)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(path))
    reread_ray_settings()
    note = ", its permissions just narrowed" if fixed else ""
    return f"local Ray cluster: token authentication on (token in {path}, readable by you only{note})"


def reread_ray_settings() -> None:
    """Re-read RAY_AUTH_MODE, which Ray reads once at import (docs/workarounds.md)."""
    from ray._raylet import Config

    Config.initialize("")
