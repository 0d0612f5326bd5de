"""The local cluster's token file (launch/cluster_token.py) without starting Ray: made private, replaced when it
cannot be trusted, and never used over a user's own RAY_AUTH_* settings."""

import os
import stat

import pytest

from distgan.launch import cluster_token


@pytest.fixture
def home(tmp_path, monkeypatch):
    for name in cluster_token.AUTH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(cluster_token, "reread_ray_settings", lambda: None)
    return tmp_path


def test_a_new_token_file_is_private(home):
    line = cluster_token.secure_local_cluster()
    path = cluster_token.token_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_text()) == 64
    assert line == f"local Ray cluster: token authentication on (token in {path}, readable by you only)"
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(path) and os.environ["RAY_AUTH_MODE"] == "token"
    token = path.read_text()
    cluster_token.secure_local_cluster()
    assert path.read_text() == token, "a good token file is kept"


@pytest.mark.parametrize("make", ["empty", "readable by others", "a link to another file"])
def test_a_token_file_that_cannot_be_trusted_gets_a_new_token(home, make):
    path = cluster_token.token_path()
    path.parent.mkdir(parents=True)
    other = home / "other-file"
    other.write_text("x" * 64)
    other.chmod(0o644)
    if make == "empty":
        path.touch(mode=0o600)
    elif make == "readable by others":
        path.write_text("leaked" * 11)
        path.chmod(0o644)
    else:
        path.symlink_to(other)
    line = cluster_token.secure_local_cluster()
    assert "a new token" in line
    assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text()) == 64 and "leaked" not in path.read_text()
    assert other.read_text() == "x" * 64 and stat.S_IMODE(other.stat().st_mode) == 0o644, "the link's target untouched"


@pytest.mark.parametrize("env", [{"RAY_AUTH_MODE": "token"}, {"RAY_AUTH_TOKEN_PATH": "/somewhere/token"}])
def test_a_users_own_token_settings_are_kept(home, monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    line = cluster_token.secure_local_cluster()
    assert "your RAY_AUTH_* settings" in line
    assert os.environ.get("RAY_AUTH_TOKEN_PATH") == env.get("RAY_AUTH_TOKEN_PATH")
    assert not cluster_token.token_path().exists()
