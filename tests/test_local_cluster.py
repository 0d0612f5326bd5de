"""The private local Ray cluster a run starts without ray.address (`make demo`): token authentication on, with a
token file only its user can read, said in one line; the dashboard on 127.0.0.1 and closed without the token."""

import json
import os
import stat
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.ray

PROBE = """
import json, urllib.error, urllib.request
import psutil, ray
from ray._private.worker import get_dashboard_url
from distgan.config import load_config
from distgan.launch.ray_train import connect

started = connect(load_config(None, ["ray.num_workers=1"]))
url = get_dashboard_url()
port = int(url.rsplit(":", 1)[1])
me = psutil.Process()
where = {}
for proc in [me, *me.children(recursive=True)]:
    try:
        for c in proc.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN:
                where.setdefault(c.laddr.port, set()).add(c.laddr.ip)
    except psutil.Error:
        pass

def status(headers):
    try:
        return urllib.request.urlopen(urllib.request.Request(f"http://{url}/api/version", headers=headers),
                                      timeout=30).status
    except urllib.error.HTTPError as exc:
        return exc.code

token = open(__import__("os").environ["RAY_AUTH_TOKEN_PATH"]).read().strip()
print("PROBE", json.dumps({"started": started, "dashboard": sorted(where.get(port, [])),
                           "all_interfaces": sorted(p for p, ips in where.items() if ips & {"0.0.0.0", "::"}),
                           "without": status({}), "wrong": status({"Authorization": "Bearer wrong"}),
                           "with": status({"Authorization": f"Bearer {token}"})}))
ray.shutdown()
"""


def test_the_local_cluster_needs_a_token_kept_in_a_private_file(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), RAY_USAGE_STATS_ENABLED="0")
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout.split("PROBE ", 1)[1])
    token = tmp_path / "config" / "distgan" / "ray-auth-token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64
    lines = [line for line in result.stdout.splitlines() if "token authentication" in line]
    assert lines == [f"local Ray cluster: token authentication on (token in {token}, readable by you only)"], lines
    assert "Token authentication is enabled for this Ray cluster" not in result.stderr  # Ray's own warning
    assert facts["started"] and facts["dashboard"] == ["127.0.0.1"]
    assert facts["all_interfaces"], "Ray's gRPC ports bind every interface (docs/cluster.md says so)"
    assert (facts["without"], facts["wrong"], facts["with"]) == (401, 403, 200), facts  # missing, wrong, right
